"""The Helm chart (deploy/helm/facesearch): `helm lint --strict`, `helm template` with each
values file it ships, every manifest against the Kubernetes schemas (strict), and what the
manifests must say: GPUs where they are asked for, pods that run as non-root on a read-only
root filesystem, a network policy that exposes the gateway alone, probes, autoscaling,
disruption budgets, the API keys' Secret, TLS on the gateway, and settings the services know."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import typing

import kubernetes_validate
import pytest
import yaml

from cli.main import build_parser
from gateway.auth import ApiKeys, key_line
from gateway.settings import GatewaySettings
from services.detector.settings import DetectorSettings
from services.embedder.serving.flavours import FLAVOURS
from services.embedder.settings import EmbedderSettings
from services.search.settings import SearchSettings
from tests.deployment_tools import CHART, EVERYTHING_ON, KUBE_VERSION, VALUES_FILES, helm, only, render, value_args

WORKLOADS = {"Deployment", "StatefulSet", "Job"}
GPU = "nvidia.com/gpu"
CUSTOM_API_GROUPS = ("monitoring.coreos.com/",)
SETTINGS = {
    "GATEWAY": GatewaySettings,
    "DETECTOR": DetectorSettings,
    "EMBEDDER": EmbedderSettings,
    "SEARCH": SearchSettings,
}

EXTERNAL_QDRANT = "http://qdrant.databases.svc:6333"
# One more model served beside model.id, and the Job moving a tenant to it.
EXTRA_MODEL = "dlib-resnet"
EXTRA_EMBEDDER = f"fs-facesearch-embedder-{EXTRA_MODEL}"
MODEL_MIGRATION = [
    f"extraModels[0].id={EXTRA_MODEL}",
    "extraModels[0].weights=dlib",
    "modelMigration.enabled=true",
    f"modelMigration.to={EXTRA_MODEL}",
    "backfill.apiKeySecret.name=backfill-api-key",
    "backfill.archive.persistentVolumeClaim=photos",
]
# Each values file the chart ships, the production values with everything on, the defaults
# with a Qdrant of one's own, and each values file with an extra model and its migration.
CASES = {
    **{name: (files, []) for name, files in VALUES_FILES.items()},
    "everything-on": (VALUES_FILES["production-gpu"], EVERYTHING_ON),
    "external-qdrant": (VALUES_FILES["default"], [f"qdrant.externalUrl={EXTERNAL_QDRANT}"]),
    **{f"{name}-model-migration": (files, MODEL_MIGRATION) for name, files in VALUES_FILES.items()},
}


def manifests_of(case: str) -> list[dict]:
    files, settings = CASES[case]
    return render(files, settings)


def pod_specs(manifests: list[dict]) -> dict[str, dict]:
    """The pod spec of every workload, by the workload's name."""
    return {m["metadata"]["name"]: m["spec"]["template"]["spec"] for m in manifests if m["kind"] in WORKLOADS}


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def component(manifest: dict) -> str:
    return manifest["metadata"]["labels"]["app.kubernetes.io/component"]


def workload(manifests: list[dict], name: str) -> dict:
    return only(manifests, "StatefulSet" if name == "qdrant" else "Deployment", f"-{name}")


def env_of(container: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in container.get("env", [])}


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict(case: str) -> None:
    files, settings = CASES[case]
    helm("lint", "--strict", CHART, *value_args(files, settings))


@pytest.mark.parametrize("case", CASES)
def test_every_manifest_is_valid_for_kubernetes(case: str) -> None:
    manifests = manifests_of(case)
    assert len(manifests) > 20
    for manifest in manifests:
        if manifest["apiVersion"].startswith(CUSTOM_API_GROUPS):
            continue  # no schema bundled: test_custom_resources_are_well_formed checks them
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(f"{manifest['kind']} {manifest['metadata']['name']}: {error.message}") from None


def test_custom_resources_are_well_formed() -> None:
    manifests = manifests_of("production-gpu")
    services = [m for m in manifests if m["kind"] == "Service"]
    monitors = [m for m in manifests if m["kind"] == "ServiceMonitor"]
    assert sorted(component(m) for m in monitors) == ["detector", "embedder", "gateway", "search"]
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        spec = monitor["spec"]
        assert set(spec) == {"jobLabel", "namespaceSelector", "selector", "endpoints"}
        selected = [s for s in services if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(selected) == 1, monitor["metadata"]["name"]
        assert [port["name"] for port in selected[0]["spec"]["ports"]] == ["metrics"]
        assert spec["jobLabel"] in selected[0]["metadata"]["labels"]
        assert [endpoint["port"] for endpoint in spec["endpoints"]] == ["metrics"]
        assert re.fullmatch(r"\d+[smh]", spec["endpoints"][0]["interval"])
    embedder_metrics = only(manifests, "Service", "-embedder-metrics")["spec"]["ports"][0]
    assert embedder_metrics["port"] == 8002  # Triton's metrics port

    rule = only(manifests, "PrometheusRule", "fs-facesearch")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for entry in group["rules"]:
            assert ("record" in entry) != ("alert" in entry), entry
            assert isinstance(entry["expr"], str) and entry["expr"].strip()
            if "alert" in entry:
                assert re.fullmatch(r"\d+m", entry["for"])
                assert entry["labels"]["severity"] in {"warning", "critical"}
                assert entry["annotations"]["summary"] and entry["annotations"]["description"]


def test_gpus_are_asked_for_by_the_gpu_values_only() -> None:
    def gpu_users(manifests: list[dict]) -> dict[str, dict]:
        """Workloads with a container that asks for a GPU: {name: pod spec}."""
        return {
            name: pod
            for name, pod in pod_specs(manifests).items()
            if any(GPU in c.get("resources", {}).get(kind, {}) for c in containers(pod) for kind in ("limits",))
        }

    production = gpu_users(manifests_of("production-gpu"))
    assert sorted(production) == ["fs-facesearch-detector", "fs-facesearch-embedder"]
    for pod in production.values():
        [container] = [c for c in pod["containers"] if GPU in c["resources"]["limits"]]
        assert container["resources"]["limits"][GPU] == container["resources"]["requests"][GPU] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    detector = env_of(
        only(manifests_of("production-gpu"), "Deployment", "-detector")["spec"]["template"]["spec"]["containers"][0]
    )
    assert detector["FACESEARCH_DETECTOR_DEVICE"]["value"] == "cuda"

    assert sorted(gpu_users(manifests_of("default"))) == ["fs-facesearch-embedder"]

    cpu = manifests_of("cpu")
    assert GPU not in yaml.safe_dump_all(cpu), "the CPU-only values must not mention GPUs at all"
    for pod in pod_specs(cpu).values():
        assert "nodeSelector" not in pod and "tolerations" not in pod
    embedder = workload(cpu, "embedder")["spec"]["template"]["spec"]["containers"][0]
    assert embedder["command"] == ["python", "-m", "services.embedder"]
    assert env_of(embedder)["FACESEARCH_EMBEDDER_FLAVOUR"]["value"] == "onnx-python"


@pytest.mark.parametrize("case", CASES)
def test_every_pod_runs_as_non_root_on_a_read_only_root_filesystem(case: str) -> None:
    pods = pod_specs(manifests_of(case))
    assert len(pods) >= 4
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in containers(pod):
            security = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert security.get("runAsUser", 1) != 0, where
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), f"{where}: no writable /tmp"


@pytest.mark.parametrize(
    "case", ["default", "production-gpu", "default-model-migration", "production-gpu-model-migration"]
)
def test_network_policies_expose_the_gateway_alone(case: str) -> None:
    manifests = manifests_of(case)
    policies = {component(p): p["spec"] for p in manifests if p["kind"] == "NetworkPolicy"}
    pods = {component(m): m["spec"]["template"]["metadata"]["labels"] for m in manifests if m["kind"] in WORKLOADS}
    for name, labels in pods.items():
        if name in {"backfill", "migration", "model-migration"}:
            continue  # they accept nothing: no port is served
        assert name in policies, f"{name} has no NetworkPolicy"
        assert policies[name]["podSelector"]["matchLabels"].items() <= labels.items()
        assert policies[name]["policyTypes"] == ["Ingress"]
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    for name, policy in policies.items():
        for rule in policy["ingress"]:
            if rule.get("from") == [monitoring]:
                assert rule["ports"] == [{"port": "metrics"}], name
            elif name == "gateway":
                assert "from" not in rule  # open to every client
            else:
                allowed = [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]]
                assert set(allowed) <= {"gateway", "backfill", "search", "migration"}, (name, allowed)
                assert "gateway" in allowed or name == "qdrant"
                assert all(set(peer) == {"podSelector"} for peer in rule["from"]), name
    assert [
        p["metadata"]["name"] for p in manifests if p["kind"] == "Service" and p["spec"]["type"] != "ClusterIP"
    ] == (["fs-facesearch-gateway"] if case.startswith("production-gpu") else [])


def test_probes_check_grpc_health_and_triton_readiness() -> None:
    manifests = manifests_of("production-gpu")
    for name in ("gateway", "detector", "search"):
        container = workload(manifests, name)["spec"]["template"]["spec"]["containers"][0]
        [grpc_port] = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": grpc_port}, (name, probe)
        assert env_of(container)[f"FACESEARCH_{name.upper()}_PORT"]["value"] == str(grpc_port)

    for case in ("default", "production-gpu", "cpu"):
        triton = workload(manifests_of(case), "embedder")["spec"]["template"]["spec"]["containers"][0]
        assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
        assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        startup = triton["startupProbe"]
        assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model load takes minutes"


def test_embedder_scales_on_triton_queue_time_through_prometheus_adapter() -> None:
    manifests = manifests_of("production-gpu")
    autoscalers = {component(m): m for m in manifests if m["kind"] == "HorizontalPodAutoscaler"}
    assert sorted(autoscalers) == ["detector", "embedder", "gateway"]
    for name, autoscaler in autoscalers.items():
        assert autoscaler["apiVersion"] == "autoscaling/v2"
        target = autoscaler["spec"]["scaleTargetRef"]
        assert target["name"] == workload(manifests, name)["metadata"]["name"]
        assert "replicas" not in workload(manifests, name)["spec"], "the autoscaler owns the replica count"
    for name in ("gateway", "detector"):
        [metric] = autoscalers[name]["spec"]["metrics"]
        assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"

    [metric] = autoscalers["embedder"]["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    adapter = yaml.safe_load(only(manifests, "ConfigMap", "-prometheus-adapter-rules")["data"]["config.yaml"])
    [rule] = adapter["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert rule["seriesQuery"].startswith("nv_inference_queue_duration_us{")
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


@pytest.mark.parametrize("case", ["default", "production-gpu"])
def test_every_workload_has_a_disruption_budget(case: str) -> None:
    manifests = manifests_of(case)
    budgets = [m for m in manifests if m["kind"] == "PodDisruptionBudget"]
    for name in ("gateway", "detector", "embedder", "search", "qdrant"):
        labels = workload(manifests, name)["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, name
        assert matching[0]["spec"]["maxUnavailable"] == 1


def test_api_keys_come_from_a_secret() -> None:
    lines = [key_line("acme", "fs_acme_key"), key_line("globex", "fs_globex_key", "read")]
    manifests = render(settings=[f"apiKeys.lines[{i}]={line}" for i, line in enumerate(lines)])
    secret = only(manifests, "Secret", "-api-keys")
    keys = ApiKeys.parse(secret["stringData"]["api_keys"].splitlines(), "the Secret")
    assert len(keys) == 2
    acme = keys.authenticate([("authorization", "Bearer fs_acme_key")])
    globex = keys.authenticate([("authorization", "Bearer fs_globex_key")])
    assert (acme.tenant, acme.scope, globex.tenant, globex.scope) == ("acme", "write", "globex", "read")
    pod = workload(manifests, "gateway")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]]
    gateway = pod["containers"][0]
    [mount] = [m for m in gateway["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert env_of(gateway)["FACESEARCH_GATEWAY_API_KEYS_FILE"]["value"] == mount["mountPath"] + "/api_keys"
    key = env_of(gateway)["FACESEARCH_GATEWAY_PAGE_TOKEN_KEY"]["valueFrom"]["secretKeyRef"]
    assert key["name"] == only(manifests, "Secret", "-page-token-keys")["metadata"]["name"]

    production = manifests_of("production-gpu")
    assert not [m for m in production if m["kind"] == "Secret" and m["metadata"]["name"].endswith("-api-keys")]
    volumes = workload(production, "gateway")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "api-keys", "secret": {"secretName": "facesearch-api-keys", "defaultMode": 0o440}} in volumes


def test_gateway_serves_tls_from_a_secret_when_enabled() -> None:
    production = manifests_of("production-gpu")
    pod = workload(production, "gateway")["spec"]["template"]["spec"]
    [tls] = [c for c in pod["containers"] if c["name"] == "tls"]
    [secret_volume] = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "facesearch-gateway-tls"]
    assert any(m["name"] == secret_volume["name"] and m["readOnly"] for m in tls["volumeMounts"])
    envoy = yaml.safe_load(only(production, "ConfigMap", "-gateway-tls")["data"]["envoy.yaml"])
    [listener] = envoy["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == 8443
    context = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["tls_certificates"][0]["certificate_chain"]["filename"].startswith(
        next(m["mountPath"] for m in tls["volumeMounts"] if m["name"] == secret_volume["name"])
    )
    upstream = envoy["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert upstream["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 50050}
    service = only(production, "Service", "-gateway")
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("grpc-tls", 8443)]

    plain = manifests_of("default")
    assert [c["name"] for c in workload(plain, "gateway")["spec"]["template"]["spec"]["containers"]] == ["gateway"]
    failed = helm("template", "fs", CHART, "--set", "gateway.tls.enabled=true", check=False)
    assert failed.returncode != 0 and "gateway.tls.secretName" in failed.stderr


def test_backfill_and_migration_jobs_are_off_by_default() -> None:
    for case in VALUES_FILES:
        assert not [m for m in manifests_of(case) if m["kind"] == "Job"], case
    manifests = manifests_of("everything-on")
    backfill = only(manifests, "Job", "-backfill")["spec"]
    command = backfill["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["facesearch", "backfill"]
    build_parser().parse_args([a.replace("$(GATEWAY)", "gateway:50050") for a in command[1:]])
    assert backfill["completionMode"] == "Indexed"
    assert (backfill["completions"], backfill["parallelism"]) == (4, 2)
    pod = backfill["template"]["spec"]
    [index] = pod["containers"]
    assert index["command"][index["command"].index("--shard") + 1] == "$(JOB_COMPLETION_INDEX)/$(SHARDS)"
    assert env_of(index)["SHARDS"]["value"] == "4"
    assert env_of(index)["FACESEARCH_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "backfill-api-key"
    assert env_of(index)["GATEWAY"]["value"] == "fs-facesearch-gateway:50050"
    [archive] = [m for m in index["volumeMounts"] if m["mountPath"] == "/archive"]
    assert archive["readOnly"] is True
    migration = only(manifests, "Job", "-migration")
    assert migration["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"
    assert migration["spec"]["template"]["spec"]["containers"][0]["command"] == ["facesearch", "models", "prepare"]


@pytest.mark.parametrize("case", CASES)
def test_services_are_given_settings_they_know_and_addresses_that_exist(case: str) -> None:
    manifests = manifests_of(case)
    services = {
        m["metadata"]["name"]: {p["port"]: p["name"] for p in m["spec"]["ports"]}
        for m in manifests
        if m["kind"] == "Service"
    }
    for name, pod in pod_specs(manifests).items():
        for container in containers(pod):
            command = container.get("command", [])
            if command[:2] == ["python", "-m"]:
                assert importlib.util.find_spec(command[2]) is not None, f"{name}: no module {command[2]}"
            if command[:1] == ["facesearch"]:
                build_parser().parse_args(command[1:])  # exits (SystemExit) on a verb or option it lacks
            for variable in env_of(container):
                match = re.fullmatch(r"FACESEARCH_(GATEWAY|DETECTOR|EMBEDDER|SEARCH)_(\w+)", variable)
                if match:
                    field = match[2].lower()
                    assert field in SETTINGS[match[1]].model_fields, f"{name}/{container['name']}: {variable}"
    gateway = env_of(workload(manifests, "gateway")["spec"]["template"]["spec"]["containers"][0])
    for variable in (
        "FACESEARCH_GATEWAY_DETECTOR_ADDRESS",
        "FACESEARCH_GATEWAY_SEARCH_ADDRESS",
        "FACESEARCH_EMBEDDER_TRITON_URL",
    ):
        host, port = gateway[variable]["value"].rsplit(":", 1)
        assert services.get(host, {}).get(int(port)) == "grpc", f"{variable}: no Service {host} with gRPC port {port}"
    search = env_of(workload(manifests, "search")["spec"]["template"]["spec"]["containers"][0])
    if "qdrant" not in case:
        url = re.fullmatch(r"http://([^:]+):(\d+)", search["FACESEARCH_SEARCH_QDRANT_URL"]["value"])
        assert int(url[2]) in services[url[1]]


def test_backfill_pods_share_the_archive_and_keep_its_photo_ids(tmp_path) -> None:
    """The backfill pods' command, parsed as `facesearch` parses it for each completion index,
    on a small archive: every photo falls in exactly one pod's shard, under the id
    `facesearch index ARCHIVE` gives it."""
    from backfill.sources import Shard, directory
    from cli.archive import _photos_under

    backfill = only(manifests_of("everything-on"), "Job", "-backfill")["spec"]
    command = backfill["template"]["spec"]["containers"][0]["command"]
    archive = tmp_path / "archive"
    for name in ["2019/a.jpg", "2019/b.JPG", "2020/trip/c d.png", "2020/notes.txt", "e.jpg", "f.webp", "g/h/i.jpeg"]:
        (archive / name).parent.mkdir(parents=True, exist_ok=True)
        (archive / name).write_bytes(b"photo")
    expected = {photo_id for photo_id, _ in _photos_under([archive])}
    assert len(expected) == 6

    indexed: list[str] = []
    for index in range(backfill["completions"]):
        arguments = [
            a.replace("$(GATEWAY)", "gateway:50050")
            .replace("$(JOB_COMPLETION_INDEX)", str(index))
            .replace("$(SHARDS)", str(backfill["completions"]))
            .replace("/archive", str(archive))
            for a in command[1:]
        ]
        args = build_parser().parse_args(arguments)
        shard = Shard.parse(args.shard)
        indexed += [photo.key for photo in directory(pathlib.Path(args.source)) if shard.holds(photo.key)]
    assert sorted(indexed) == sorted(expected)


def test_values_are_checked_against_the_charts_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    embedder = schema["properties"]["embedder"]["properties"]
    assert embedder["flavour"]["enum"] == list(FLAVOURS)
    detector = schema["properties"]["detector"]["properties"]
    assert detector["backend"]["enum"] == list(typing.get_args(DetectorSettings.model_fields["backend"].annotation))
    for setting, complaint in [
        ("detector.gpus=1", "additional properties 'gpus' not allowed"),
        ("embedder.runtime=docker", "value must be one of"),
        ("embedder.flavour=onnx", "value must be one of"),
        ("apiKeys.lines[0]=acme not-a-hash", "does not match pattern"),
        ("gateway.replicas=two", "got string, want integer"),
    ]:
        failed = helm("template", "fs", CHART, "--set", setting, check=False)
        assert failed.returncode != 0 and complaint in failed.stderr, (setting, failed.stderr)


def test_probes_answer_on_the_real_servers(triton_server, detector_server) -> None:
    """What the kubelet asks, asked of a running Triton and a running detector."""
    import urllib.request

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    manifests = manifests_of("cpu")
    triton = workload(manifests, "embedder")["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        with urllib.request.urlopen(f"{triton_server.http_url}{triton[probe]['httpGet']['path']}", timeout=5) as reply:
            assert reply.status == 200, probe

    detector = workload(manifests, "detector")["spec"]["template"]["spec"]["containers"][0]
    # A gRPC probe without "service" checks the server as a whole: service "".
    assert "service" not in detector["readinessProbe"]["grpc"]
    with grpc.insecure_channel(detector_server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("case", CASES)
def test_the_settings_each_container_gets_are_valid(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each container's FACESEARCH_* variables, as the service reads them at start; Secrets'
    values stand in as a placeholder."""
    from services.embedder.serving.provisioning import repository_root
    from services.runtime.settings import load_settings

    manifests = manifests_of(case)
    loaded = 0
    for name, pod in pod_specs(manifests).items():
        for container in containers(pod):
            variables = {k: v.get("value", "placeholder-secret-value") for k, v in env_of(container).items()}
            sections = {m[1] for k in variables if (m := re.fullmatch(r"FACESEARCH_([A-Z]+)_\w+", k))} - {"API"}
            if not sections:
                continue
            for variable in [v for v in os.environ if v.startswith("FACESEARCH_")]:
                monkeypatch.delenv(variable)
            for variable, value in variables.items():
                monkeypatch.setenv(variable, value)
            for section in sections:
                load_settings(SETTINGS[section])  # raises SettingsError naming a bad variable
                loaded += 1
            if container["name"] == "models":  # prepares the repository that Triton serves
                embedder = load_settings(EmbedderSettings)
                [triton] = pod["containers"]
                served = next(a for a in triton["args"] if a.startswith("--model-repository="))
                assert served.split("=", 1)[1] == str(repository_root(embedder) / embedder.flavour), name
    assert loaded >= 4


def test_an_external_qdrant_replaces_the_statefulset() -> None:
    manifests = manifests_of("external-qdrant")
    assert not [m for m in manifests if component(m) == "qdrant"]
    search = env_of(workload(manifests, "search")["spec"]["template"]["spec"]["containers"][0])
    assert search["FACESEARCH_SEARCH_QDRANT_URL"]["value"] == EXTERNAL_QDRANT
    rules = only(
        render(settings=[f"qdrant.externalUrl={EXTERNAL_QDRANT}", "monitoring.prometheusRule.enabled=true"]),
        "PrometheusRule",
        "fs-facesearch",
    )["spec"]["groups"]
    alerts = {rule["alert"] for group in rules for rule in group["rules"] if "alert" in rule}
    assert len(alerts) == 5 and "FacesearchVectorStoreDiskFilling" not in alerts  # the volume is not the chart's


# --- extra models and the model migration Job -----------------------------------------------


def admits(manifests: list[dict], caller: dict, callee: dict, port: str) -> bool:
    """Whether the NetworkPolicies let pods labelled ``caller`` reach port ``port`` of pods
    labelled ``callee`` (a pod no policy selects admits everything)."""
    selecting = [
        p["spec"]
        for p in manifests
        if p["kind"] == "NetworkPolicy" and p["spec"]["podSelector"]["matchLabels"].items() <= callee.items()
    ]
    for policy in selecting:
        for rule in policy["ingress"]:
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if peers is None or any(
                set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"].items() <= caller.items()
                for peer in peers
            ):
                return True
    return not selecting


def pod_labels(manifest: dict) -> dict:
    return manifest["spec"]["template"]["metadata"]["labels"]


def model_migration_job(manifests: list[dict]) -> dict:
    return only(manifests, "Job", f"-model-migration-{EXTRA_MODEL}")


@pytest.mark.parametrize("name", VALUES_FILES)
def test_an_extra_model_gets_its_own_embedder(name: str) -> None:
    """Each of extraModels: one more Triton Deployment like the embedder, serving that model:
    its weights in the init container's (or the bundled Triton's) settings, GPUs as the
    embedder has them, its Service, metrics Service, PDB and HPA."""
    manifests = manifests_of(f"{name}-model-migration")
    main, extra = workload(manifests, "embedder"), only(manifests, "Deployment", EXTRA_EMBEDDER)
    assert not pod_labels(main).items() <= pod_labels(extra).items(), "the embedder's Service would reach it"
    pod = extra["spec"]["template"]["spec"]
    served = [c for c in containers(pod) if "FACESEARCH_EMBEDDER_WEIGHTS" in env_of(c)]
    assert served and [c["name"] for c in served] == (["triton"] if name == "cpu" else ["models"])
    for container in served:
        settings = env_of(container)
        assert settings["FACESEARCH_EMBEDDER_WEIGHTS"]["value"] == "dlib"
        assert settings["FACESEARCH_EMBEDDER_MODEL_ID"]["value"] == EXTRA_MODEL
    main_pod = main["spec"]["template"]["spec"]
    assert [c["image"] for c in containers(pod)] == [c["image"] for c in containers(main_pod)]
    assert [c["command"] for c in containers(pod)] == [c["command"] for c in containers(main_pod)]
    triton, main_triton = pod["containers"][0], main_pod["containers"][0]
    for key in ("args", "ports", "startupProbe", "readinessProbe", "livenessProbe", "resources", "securityContext"):
        assert triton.get(key) == main_triton.get(key), key
    for key in ("nodeSelector", "tolerations", "securityContext"):
        assert pod.get(key) == main_pod.get(key), key
    if name == "cpu":
        assert GPU not in yaml.safe_dump(extra)
    else:
        assert triton["resources"]["requests"][GPU] == triton["resources"]["limits"][GPU] == 1
    assert [v for v in pod["volumes"] if v["name"] == "models"] == [
        {"name": "models", "emptyDir": {"sizeLimit": "4Gi"}}
    ], "Triton serves every model of its repository: not the embedder's"

    service = only(manifests, "Service", EXTRA_EMBEDDER)
    assert service["spec"]["selector"].items() <= pod_labels(extra).items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8001, "http": 8000}
    metrics = only(manifests, "Service", f"{EXTRA_EMBEDDER}-metrics")
    assert metrics["spec"]["selector"].items() <= pod_labels(extra).items()
    [budget] = [
        b
        for b in manifests
        if b["kind"] == "PodDisruptionBudget"
        and b["spec"]["selector"]["matchLabels"].items() <= pod_labels(extra).items()
    ]
    assert budget["spec"]["maxUnavailable"] == 1
    autoscaler = only(manifests, "HorizontalPodAutoscaler", EXTRA_EMBEDDER)
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == EXTRA_EMBEDDER
    assert autoscaler["spec"]["metrics"] == only(manifests, "HorizontalPodAutoscaler", "-embedder")["spec"]["metrics"]
    assert "replicas" not in extra["spec"]


def test_an_extra_model_takes_its_own_replicas_and_resources() -> None:
    resources = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "3Gi"}}
    manifests = render(
        settings=[
            *MODEL_MIGRATION,
            "embedder.autoscaling.enabled=false",
            "embedder.modelRepository.persistentVolumeClaim=models",
            "extraModels[0].replicas=3",
            "extraModels[0].resources.requests.cpu=500m",
            "extraModels[0].resources.requests.memory=2Gi",
            "extraModels[0].resources.limits.memory=3Gi",
        ]
    )
    extra = only(manifests, "Deployment", EXTRA_EMBEDDER)
    assert extra["spec"]["replicas"] == 3
    assert workload(manifests, "embedder")["spec"]["replicas"] == 1
    triton = extra["spec"]["template"]["spec"]["containers"][0]
    assert triton["resources"] == {
        "requests": {**resources["requests"], GPU: 1},
        "limits": {**resources["limits"], GPU: 1},
    }
    assert not [m for m in manifests if m["kind"] == "HorizontalPodAutoscaler" and "-embedder" in m["metadata"]["name"]]
    volumes = {v["name"]: v for v in extra["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"] == {"name": "models", "emptyDir": {"sizeLimit": "4Gi"}}, "not the embedder's claim"
    claimed = render(settings=[*MODEL_MIGRATION, "extraModels[0].modelRepository.persistentVolumeClaim=dlib-models"])
    volumes = {v["name"]: v for v in only(claimed, "Deployment", EXTRA_EMBEDDER)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "dlib-models"}


@pytest.mark.parametrize("case", ["default-model-migration", "production-gpu-model-migration"])
def test_the_gateway_embeds_with_the_extra_models(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FACESEARCH_GATEWAY_EMBEDDER_URLS as GatewaySettings reads it: the extra model's id, the
    address of a Service with a gRPC port whose pods serve that model, which the NetworkPolicies
    let the gateway reach."""
    from services.embedder import models
    from services.runtime.settings import load_settings

    manifests = manifests_of(case)
    gateway = workload(manifests, "gateway")
    for variable in [v for v in os.environ if v.startswith("FACESEARCH_")]:
        monkeypatch.delenv(variable)
    for variable, value in env_of(gateway["spec"]["template"]["spec"]["containers"][0]).items():
        if variable.startswith("FACESEARCH_GATEWAY_"):
            monkeypatch.setenv(variable, value.get("value", "placeholder-secret-value"))
    urls = load_settings(GatewaySettings).embedder_urls
    assert list(urls) == [EXTRA_MODEL]
    host, port = urls[EXTRA_MODEL].rsplit(":", 1)
    service = only(manifests, "Service", host)
    assert service["metadata"]["name"] == host == EXTRA_EMBEDDER
    [grpc_port] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    assert grpc_port["name"] == "grpc"
    extra = only(manifests, "Deployment", EXTRA_EMBEDDER)
    assert service["spec"]["selector"].items() <= pod_labels(extra).items()
    weights = {
        env_of(c).get("FACESEARCH_EMBEDDER_WEIGHTS", {}).get("value")
        for c in containers(extra["spec"]["template"]["spec"])
    }
    assert models.by_id(EXTRA_MODEL).weights in weights

    assert admits(manifests, pod_labels(gateway), pod_labels(extra), "grpc")
    for other in ("detector", "search", "backfill", "model-migration"):
        caller = {**pod_labels(gateway), "app.kubernetes.io/component": other}
        assert not admits(manifests, caller, pod_labels(extra), "grpc"), other

    plain = env_of(
        workload(manifests_of(case.removesuffix("-model-migration")), "gateway")["spec"]["template"]["spec"][
            "containers"
        ][0]
    )
    assert "FACESEARCH_GATEWAY_EMBEDDER_URLS" not in plain


def test_the_extra_embedders_are_scraped_as_the_embedder() -> None:
    """Their ServiceMonitors give them job "embedder", which the alerts, the dashboard and
    prometheus-adapter's rule (the HPA's metric) select; Triton's own labels say the model."""
    manifests = manifests_of("production-gpu-model-migration")
    services = [m for m in manifests if m["kind"] == "Service"]
    monitors = {m["metadata"]["name"]: m["spec"] for m in manifests if m["kind"] == "ServiceMonitor"}
    assert sorted(monitors) == sorted(
        f"fs-facesearch-{c}" for c in ["gateway", "detector", "embedder", f"embedder-{EXTRA_MODEL}", "search"]
    )
    for name, spec in monitors.items():
        [selected] = [s for s in services if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert selected["metadata"]["name"] == f"{name}-metrics"
        job = selected["metadata"]["labels"][spec["jobLabel"]]
        assert job == ("embedder" if "-embedder" in name else name.removeprefix("fs-facesearch-"))
    adapter = yaml.safe_load(only(manifests, "ConfigMap", "-prometheus-adapter-rules")["data"]["config.yaml"])
    assert 'job="embedder"' in adapter["rules"][0]["seriesQuery"]


@pytest.mark.parametrize("case", ["default-model-migration", "production-gpu-model-migration", "cpu-model-migration"])
def test_the_model_migration_job_runs_facesearch_migrate(case: str) -> None:
    """`facesearch migrate --to MODEL` as the real parser reads it, against the gateway's Service
    and port, with the backfill Job's API key and archive; OnFailure and a backoff limit, so
    that a rerun finishes what a killed pod began."""
    manifests = manifests_of(case)
    job = model_migration_job(manifests)
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "model-migration"
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    assert job["spec"]["backoffLimit"] >= 3
    [migrate] = pod["containers"]
    env = env_of(migrate)
    command = [a.replace("$(GATEWAY)", env["GATEWAY"]["value"]) for a in migrate["command"]]
    assert command[:2] == ["facesearch", "migrate"]
    args = build_parser().parse_args(command[1:])
    assert args.to == EXTRA_MODEL and not args.drop and not args.list

    host, port = args.address.rsplit(":", 1)
    gateway = only(manifests, "Service", host)
    assert gateway["metadata"]["name"] == "fs-facesearch-gateway"
    [served] = [p for p in gateway["spec"]["ports"] if p["port"] == int(port)]
    gateway_pods = pod_labels(workload(manifests, "gateway"))
    assert admits(manifests, pod_labels(job), gateway_pods, served["name"])
    if case.startswith("production-gpu"):  # TLS on the gateway: the Service serves TLS alone
        assert served["name"] == "grpc-tls"
        [mount] = [m for m in migrate["volumeMounts"] if str(args.tls_ca).startswith(m["mountPath"] + "/")]
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "facesearch-gateway-tls"
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": args.tls_ca.name}], "the CA only"
    else:
        assert served["name"] == "grpc" and args.tls_ca is None

    backfill_key = {"name": "backfill-api-key", "key": "api-key"}
    assert env["FACESEARCH_API_KEY"]["valueFrom"]["secretKeyRef"] == backfill_key
    [archive] = [m for m in migrate["volumeMounts"] if m["mountPath"] == "/archive"]
    assert archive["readOnly"] is True
    [claim] = [v for v in pod["volumes"] if v["name"] == archive["name"]]
    assert claim["persistentVolumeClaim"] == {"claimName": "photos", "readOnly": True}


def test_the_model_migration_job_passes_more_options() -> None:
    rendered = helm(
        "template",
        "fs",
        CHART,
        *value_args((), MODEL_MIGRATION),
        "--set-string",
        "modelMigration.extraArgs={--workers,8,--no-switch}",
    ).stdout
    manifests = [m for m in yaml.safe_load_all(rendered) if m]
    command = model_migration_job(manifests)["spec"]["template"]["spec"]["containers"][0]["command"]
    args = build_parser().parse_args(command[1:])
    assert (args.to, args.workers, args.no_switch) == (EXTRA_MODEL, 8, True)


def test_the_release_jobs_reach_a_gateway_open_to_some_callers_only() -> None:
    clients = "networkPolicy.gatewayFrom[0].namespaceSelector.matchLabels.team=apps"
    manifests = render(settings=[*MODEL_MIGRATION, "backfill.enabled=true", clients])
    gateway = pod_labels(workload(manifests, "gateway"))
    for name in (f"-model-migration-{EXTRA_MODEL}", "-backfill"):
        assert admits(manifests, pod_labels(only(manifests, "Job", name)), gateway, "grpc"), name
    assert not admits(manifests, {**gateway, "app.kubernetes.io/component": "detector"}, gateway, "grpc")


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (
            [f"extraModels[1].id={EXTRA_MODEL}", "extraModels[1].weights=dlib"],
            f"extraModels: {EXTRA_MODEL} is listed twice",
        ),
        (["extraModels[1].id=facenet-casia", "extraModels[1].weights=casia"], "facenet-casia is model.id"),
        (["modelMigration.to=facenet-vggface2"], "modelMigration.to facenet-vggface2 is neither model.id"),
        (["modelMigration.to="], "modelMigration.enabled needs modelMigration.to"),
        (["backfill.apiKeySecret.name="], "needs modelMigration.apiKeySecret.name"),
        (["extraModels[0].id=facenet-v2"], "at '/extraModels/0/id': value must be one of"),
        (["extraModels[0].weights=casia"], "at '/extraModels/0/weights': value must be 'dlib'"),
        (["extraModels[0].weights=dlib-resnet"], "at '/extraModels/0/weights': value must be one of"),
        (["extraModels[0].gpus=2"], "additional properties 'gpus' not allowed"),
    ],
)
def test_extra_models_and_the_model_migration_fail_clearly(settings: list[str], complaint: str) -> None:
    failed = helm("template", "fs", CHART, *value_args((), [*MODEL_MIGRATION, *settings]), check=False)
    assert failed.returncode != 0 and complaint in failed.stderr, failed.stderr


def test_the_schema_knows_the_registered_models() -> None:
    from services.embedder import models

    items = json.loads((CHART / "values.schema.json").read_text())["properties"]["extraModels"]["items"]
    assert items["properties"]["id"]["enum"] == [m.id for m in models.MODELS]
    assert items["properties"]["weights"]["enum"] == list(models.WEIGHTS)
    pairs = [
        (rule["if"]["properties"]["id"]["const"], rule["then"]["properties"]["weights"]["const"])
        for rule in items["allOf"]
    ]
    assert pairs == [(m.id, m.weights) for m in models.MODELS]
