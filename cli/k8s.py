"""`facesearch k8s backfill` and `facesearch k8s scale`: what an operator does on a cluster,
through the Kubernetes API (the kubernetes Python client; its configuration from
``--kubeconfig``, the usual ~/.kube/config, or the service account of a pod).

- ``backfill``: an Indexed Job of N pods, pod i running ``facesearch backfill ARCHIVE
  --shard i/N`` against the gateway (as the Helm chart's backfill Job does), the archive
  from a persistent volume claim, the API key from a Secret;
- ``scale``: the replicas of a Deployment of the release (the embedder's Triton pods).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cli.exit_status import EXIT_OK

ARCHIVE_MOUNT = "/archive"


def _clients(args: argparse.Namespace):
    from kubernetes import client, config

    if args.kubeconfig is not None:
        config.load_kube_config(config_file=str(args.kubeconfig))
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    return client


def backfill_job(args: argparse.Namespace, client) -> object:
    """The Indexed Job (a kubernetes.client.V1Job)."""
    name = args.name or f"{args.release}-backfill-{int(time.time())}"
    labels = {"app.kubernetes.io/instance": args.release, "app.kubernetes.io/component": "backfill"}
    command = ["facesearch", "backfill", ARCHIVE_MOUNT, "--address", args.gateway]
    command += ["--shard", "$(JOB_COMPLETION_INDEX)/$(SHARDS)", "--journal", "/tmp/backfill.sqlite"]
    container = client.V1Container(
        name="backfill",
        image=args.image,
        command=command,
        env=[
            client.V1EnvVar(name="SHARDS", value=str(args.shards)),
            client.V1EnvVar(
                name="FACESEARCH_API_KEY",
                value_from=client.V1EnvVarSource(
                    secret_key_ref=client.V1SecretKeySelector(name=args.api_key_secret, key=args.api_key_secret_key)
                ),
            ),
        ],
        volume_mounts=[
            client.V1VolumeMount(name="archive", mount_path=ARCHIVE_MOUNT, read_only=True),
            client.V1VolumeMount(name="tmp", mount_path="/tmp"),
        ],
        security_context=client.V1SecurityContext(
            run_as_non_root=True,
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            capabilities=client.V1Capabilities(drop=["ALL"]),
        ),
    )
    pod = client.V1PodSpec(
        restart_policy="Never",
        containers=[container],
        volumes=[
            client.V1Volume(
                name="archive",
                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                    claim_name=args.archive_claim, read_only=True
                ),
            ),
            client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource()),
        ],
    )
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(name=name, namespace=args.namespace, labels=labels),
        spec=client.V1JobSpec(
            completion_mode="Indexed",
            completions=args.shards,
            parallelism=args.parallelism or args.shards,
            backoff_limit_per_index=args.retries,
            max_failed_indexes=args.shards,
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod),
        ),
    )


def backfill(args: argparse.Namespace) -> int:
    client = _clients(args)
    job = backfill_job(args, client)
    created = client.BatchV1Api().create_namespaced_job(namespace=args.namespace, body=job)
    print(f"job {created.metadata.name} in {args.namespace}: {args.shards} shard(s) of {args.archive_claim}")
    return EXIT_OK


def scale(args: argparse.Namespace) -> int:
    client = _clients(args)
    name = f"{args.release}-{args.component}"
    body = {"spec": {"replicas": args.replicas}}
    scaled = client.AppsV1Api().patch_namespaced_deployment_scale(name=name, namespace=args.namespace, body=body)
    print(f"deployment {name} in {args.namespace}: {scaled.spec.replicas} replica(s)")
    return EXIT_OK


def add_commands(commands) -> None:
    """The `k8s` verb and its two commands."""
    k8s = commands.add_parser("k8s", help="facesearch on a Kubernetes cluster: backfill Jobs, scaling")
    verbs = k8s.add_subparsers(dest="k8s_command", required=True, metavar="COMMAND")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--namespace", default="facesearch")
        parser.add_argument("--release", default="fs-facesearch", help="the Helm release's name prefix")
        parser.add_argument("--kubeconfig", type=Path, default=None, help="default: in a pod, its service account")

    job = verbs.add_parser("backfill", help="an Indexed Job of N pods, each backfilling its shard of the archive")
    common(job)
    job.add_argument("--archive-claim", required=True, help="the persistent volume claim holding the photos")
    job.add_argument("--shards", type=int, default=4, help="pods, each taking one shard")
    job.add_argument("--parallelism", type=int, default=0, help="pods at a time (default: all)")
    job.add_argument("--retries", type=int, default=3, help="retries of a failed pod, per shard")
    job.add_argument("--image", required=True, help="the facesearch image")
    job.add_argument("--gateway", default="fs-facesearch-gateway:50050", help="the gateway's address in the cluster")
    job.add_argument("--api-key-secret", default="backfill-api-key", help="Secret holding the tenant's API key")
    job.add_argument("--api-key-secret-key", default="api-key")
    job.add_argument("--name", default="", help="the Job's name (default: RELEASE-backfill-TIME)")
    job.set_defaults(handler=backfill)

    replicas = verbs.add_parser("scale", help="set the replicas of a component (the embedder: Triton pods)")
    common(replicas)
    replicas.add_argument("component", choices=["embedder", "detector", "gateway"])
    replicas.add_argument("replicas", type=int)
    replicas.set_defaults(handler=scale)
