"""`facesearch k8s backfill` and `facesearch k8s scale` with the real kubernetes client,
against a local HTTP stand-in for the API server (no Kubernetes API server can run here):
what the client sends is checked, the Job strictly against the Kubernetes schemas."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import kubernetes_validate
import pytest
import yaml

from backfill.sources import Shard
from cli.main import build_parser, main


class StandIn(BaseHTTPRequestHandler):
    """Answers as the API server would for the two calls, and records what came."""

    requests: ClassVar[list[tuple[str, str, str, dict]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.requests.append((self.command, self.path, self.headers.get("Content-Type", ""), body))
        if self.command == "POST" and self.path.endswith("/jobs"):
            reply = {**body, "status": {}}
        elif self.command == "PATCH" and self.path.endswith("/scale"):
            name = self.path.split("/")[-2]
            replicas = body["spec"]["replicas"]
            reply = {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": name},
                     "spec": {"replicas": replicas}, "status": {"replicas": replicas}}  # fmt: skip
        else:
            self.send_error(404)
            return
        data = json.dumps(reply).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_PATCH = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def api_server(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StandIn.requests = []
    kubeconfig = tmp_path / "kubeconfig"
    url = f"http://127.0.0.1:{server.server_address[1]}"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "here", "cluster": {"server": url}}],
                "users": [{"name": "me", "user": {"token": "t"}}],
                "contexts": [{"name": "here", "context": {"cluster": "here", "user": "me"}}],
                "current-context": "here",
            }
        )
    )
    yield kubeconfig
    server.shutdown()


def test_backfill_creates_an_indexed_job_of_one_shard_per_pod(api_server: Path, capsys) -> None:
    status = main(
        ["k8s", "backfill", "--kubeconfig", str(api_server), "--archive-claim", "photos", "--shards", "3",
         "--image", "registry.example.com/facesearch:1.0", "--name", "backfill-now"]
    )  # fmt: skip
    assert status == 0 and "job backfill-now in facesearch: 3 shard(s) of photos" in capsys.readouterr().out
    [(method, path, _, job)] = StandIn.requests
    assert (method, path) == ("POST", "/apis/batch/v1/namespaces/facesearch/jobs")
    kubernetes_validate.validate(job, "1.30.0", strict=True)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    [claim] = [v for v in pod["volumes"] if v["name"] == "archive"]
    assert claim["persistentVolumeClaim"] == {"claimName": "photos", "readOnly": True}
    assert container["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FACESEARCH_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "backfill-api-key", "key": "api-key"}
    # What pod i runs, as Kubernetes expands it: `facesearch backfill` of shard i of 3.
    for index in range(3):
        expanded = [
            a.replace("$(JOB_COMPLETION_INDEX)", str(index)).replace("$(SHARDS)", env["SHARDS"]["value"])
            for a in container["command"]
        ]
        assert expanded[:2] == ["facesearch", "backfill"]
        args = build_parser().parse_args(expanded[1:])
        assert (args.source, Shard.parse(args.shard)) == ("/archive", Shard(index, 3))


def test_scale_sets_the_replicas_of_the_embedder(api_server: Path, capsys) -> None:
    assert main(["k8s", "scale", "--kubeconfig", str(api_server), "embedder", "5"]) == 0
    assert "deployment fs-facesearch-embedder in facesearch: 5 replica(s)" in capsys.readouterr().out
    [(method, path, content_type, body)] = StandIn.requests
    assert (method, path) == ("PATCH", "/apis/apps/v1/namespaces/facesearch/deployments/fs-facesearch-embedder/scale")
    assert body == {"spec": {"replicas": 5}} and "patch" in content_type
