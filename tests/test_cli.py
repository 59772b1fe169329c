"""The facesearch command: `up` starts the services and stops them on Ctrl-C; `detect` talks to them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import grpc

from facesearch.v1 import search_pb2, search_pb2_grpc
from gateway.auth import ApiKeys, add_key
from launcher.processes import ensure_local_key
from services.runtime.channels import service_token_metadata
from services.runtime.ports import free_ports
from tests.conftest import REPO, photo_path

FACESEARCH = [sys.executable, "-m", "cli.main"]
SERVICE_TOKEN = "the-service-token-of-the-cli-test"


def test_up_serves_detect_requests_and_stops_cleanly_on_ctrl_c(tmp_path):
    port, metrics_port, triton_port, triton_http_port, triton_metrics_port, search_port, search_metrics = free_ports(7)
    gateway_port, gateway_metrics = free_ports(2)
    key = add_key(tmp_path / "api_keys", "me")
    env = {
        **os.environ,
        "FACESEARCH_DETECTOR_PORT": str(port),
        "FACESEARCH_DETECTOR_METRICS_PORT": str(metrics_port),
        # The embedder (Triton) on free ports too, its models prepared (converted) in tmp_path.
        "FACESEARCH_EMBEDDER_PORT": str(triton_port),
        "FACESEARCH_EMBEDDER_HTTP_PORT": str(triton_http_port),
        "FACESEARCH_EMBEDDER_METRICS_PORT": str(triton_metrics_port),
        "FACESEARCH_EMBEDDER_MODEL_REPOSITORY": str(tmp_path / "models"),
        "FACESEARCH_SEARCH_PORT": str(search_port),
        "FACESEARCH_SEARCH_METRICS_PORT": str(search_metrics),
        "FACESEARCH_SEARCH_PATH": str(tmp_path / "search"),
        "FACESEARCH_GATEWAY_PORT": str(gateway_port),
        "FACESEARCH_GATEWAY_METRICS_PORT": str(gateway_metrics),
        "FACESEARCH_GATEWAY_API_KEYS_FILE": str(tmp_path / "api_keys"),
        "FACESEARCH_SERVICE_TOKEN": SERVICE_TOKEN,
    }
    log = (tmp_path / "up.log").open("w+")
    up = subprocess.Popen([*FACESEARCH, "up"], cwd=REPO, env=env, stderr=log, text=True)
    try:
        deadline = time.monotonic() + 300
        while "press Ctrl-C to stop" not in (tmp_path / "up.log").read_text():
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "facesearch up did not become ready"
            time.sleep(0.5)
        garbage = tmp_path / "not-a-photo.jpg"
        garbage.write_bytes(b"plain text, no image")
        result = subprocess.run(
            [
                *FACESEARCH,
                "detect",
                "--json",
                "--address",
                f"127.0.0.1:{port}",
                str(photo_path("compreface", "011_3.jpg")),
                str(garbage),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1, result.stderr  # one photo failed
        good, bad = (json.loads(line) for line in result.stdout.splitlines())
        assert len(good["faces"]) == 3 and (good["width"], good["height"]) == (800, 534)
        assert "cannot decode" in bad["error"]
        with grpc.insecure_channel(f"127.0.0.1:{search_port}") as channel:
            count = search_pb2_grpc.SearchStub(channel).Count(
                search_pb2.CountRequest(tenant="me"), timeout=30, metadata=service_token_metadata(SERVICE_TOKEN)
            )
        assert count.count == 0
        # The gateway, through the whole suite: detector, Triton, search.
        verify = subprocess.run(
            [
                *FACESEARCH,
                "verify",
                "--address",
                f"127.0.0.1:{gateway_port}",
                "--api-key",
                key,
                str(photo_path("compreface", "002_A.jpg")),
                str(photo_path("compreface", "004_A.jpg")),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verify.returncode == 0 and "same person" in verify.stdout, verify.stderr
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
    text = (tmp_path / "up.log").read_text()
    assert f"127.0.0.1:{port}" in text and f"{metrics_port}/metrics" in text
    assert f"127.0.0.1:{triton_port}" in text and f"{triton_metrics_port}/metrics" in text
    assert f"127.0.0.1:{search_port}" in text and f"{search_metrics}/metrics" in text
    assert f"127.0.0.1:{gateway_port}" in text and f"{gateway_metrics}/metrics" in text
    assert "stopped" in text
    assert (tmp_path / "models" / "onnx-python" / "facenet-casia" / "1" / "model.onnx").is_file()
    after = subprocess.run(
        [*FACESEARCH, "detect", "--address", f"127.0.0.1:{port}", str(photo_path("compreface", "011_3.jpg"))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert after.returncode == 3, "the detector is gone after Ctrl-C: UNAVAILABLE"
    assert "UNAVAILABLE" in after.stderr
    for gone in (triton_port, search_port, gateway_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", gone)) != 0, "every service is gone after Ctrl-C"


def test_detect_rejects_missing_files():
    result = subprocess.run(
        [*FACESEARCH, "detect", "/no/such/photo.jpg"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "no such file" in result.stderr


def test_up_makes_one_local_key_and_keeps_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keys_file, key_file = ensure_local_key()
    key = key_file.read_text().strip()
    assert ApiKeys.load(keys_file).authenticate([("authorization", f"Bearer {key}")]).tenant == "local"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and key not in keys_file.read_text()
    assert ensure_local_key() == (keys_file, key_file) and key_file.read_text().strip() == key
    assert len(keys_file.read_text().splitlines()) == 1
