"""The shared gRPC server: health, reflection, metrics, limits and graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from facesearch.v1 import common_pb2, detector_pb2, detector_pb2_grpc
from services.runtime.ports import free_ports
from services.runtime.readiness import grpc_serving, wait_until_ready
from tests.conftest import REPO, photo_bytes, start_detector

DETECTOR = "facesearch.v1.Detector"


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Samples of a /metrics endpoint, keyed by name and labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_health_reports_serving_for_the_server_and_each_service(detector_server):
    with grpc.insecure_channel(detector_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", DETECTOR]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(detector_server):
    with grpc.insecure_channel(detector_server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [reply] = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {service.name for service in reply.list_services_response.service}
    assert {DETECTOR, "grpc.health.v1.Health"} <= names


def test_metrics_count_calls_by_method_and_status_code(detector_server, detector):
    port = detector_server.server.metrics_port
    method = f"/{DETECTOR}/Detect"

    def count(code: str) -> float:
        key = (
            "facesearch_grpc_requests_total",
            frozenset({"service": "detector", "method": method, "code": code}.items()),
        )
        return scrape(port).get(key, 0.0)

    ok_before, invalid_before = count("OK"), count("INVALID_ARGUMENT")
    detector.Detect(
        detector_pb2.DetectRequest(image=common_pb2.Image(content=photo_bytes("photoprism", "2.jpg"))), timeout=60
    )
    with pytest.raises(grpc.RpcError):
        detector.Detect(detector_pb2.DetectRequest(image=common_pb2.Image(content=b"junk")), timeout=60)
    with pytest.raises(grpc.RpcError):
        detector.Detect(detector_pb2.DetectRequest(image=common_pb2.Image(content=b"")), timeout=60)
    assert count("OK") == ok_before + 1
    assert count("INVALID_ARGUMENT") == invalid_before + 2
    samples = scrape(port)
    labels = frozenset({"service": "detector", "method": method}.items())
    assert samples[("facesearch_grpc_request_duration_seconds_count", labels)] >= 3
    assert samples[("facesearch_grpc_request_duration_seconds_sum", labels)] > 0
    assert samples[("facesearch_grpc_requests_in_flight", labels)] == 0


def test_in_flight_gauge_rises_during_a_call():
    server = start_detector(workers=1)
    big = photo_bytes("compreface", "001_A.jpg")
    try:
        with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            stub = detector_pb2_grpc.DetectorStub(channel)
            future = stub.Detect.future(detector_pb2.DetectRequest(image=common_pb2.Image(content=big)), timeout=60)
            labels = frozenset({"service": "detector", "method": f"/{DETECTOR}/Detect"}.items())
            seen = 0.0
            while not future.done():
                seen = max(
                    seen, scrape(server.server.metrics_port).get(("facesearch_grpc_requests_in_flight", labels), 0.0)
                )
                time.sleep(0.05)
            assert future.result().faces
            assert seen == 1
    finally:
        server.stop()


def test_graceful_stop_finishes_in_flight_calls_and_refuses_new_ones():
    server = start_detector(workers=1)
    big = photo_bytes("compreface", "001_A.jpg")  # takes about a second
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = detector_pb2_grpc.DetectorStub(channel)
        in_flight = stub.Detect.future(detector_pb2.DetectRequest(image=common_pb2.Image(content=big)), timeout=60)
        time.sleep(0.3)
        stopper = threading.Thread(target=server.stop, kwargs={"grace_s": 30})
        stopper.start()
        time.sleep(0.2)
        assert len(in_flight.result().faces) == 1, "the call in flight when stop began still completes"
        stopper.join(30)
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            detector_pb2_grpc.DetectorStub(channel).Detect(
                detector_pb2.DetectRequest(image=common_pb2.Image(content=big)), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_sigterm_drains_and_exits_cleanly_with_structured_logs():
    [port] = free_ports(1)
    env = {**os.environ, "FACESEARCH_DETECTOR_PORT": str(port), "FACESEARCH_DETECTOR_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.detector"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        address = f"127.0.0.1:{port}"
        wait_until_ready(grpc_serving(address), 120, what="the detector", process=process)
        big = photo_bytes("compreface", "001_A.jpg")
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            call = detector_pb2_grpc.DetectorStub(channel).Detect.future(
                detector_pb2.DetectRequest(image=common_pb2.Image(content=big)), timeout=60
            )
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            assert len(call.result().faces) == 1
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    logs = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")]
    messages = [entry["message"] for entry in logs]
    assert "serving" in messages and "shutting down" in messages and "stopped" in messages
    serving = next(entry for entry in logs if entry["message"] == "serving")
    assert serving["service"] == "detector" and serving["address"] == f"127.0.0.1:{port}"
    assert {"time", "level", "logger"} <= serving.keys()


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"FACESEARCH_DETECTOR_MAX_SIDE": "ten"}, "max_side (FACESEARCH_DETECTOR_MAX_SIDE)"),
        ({"FACESEARCH_DETECTOR_MIN_CONFIDENCE": "1.5"}, "min_confidence (FACESEARCH_DETECTOR_MIN_CONFIDENCE)"),
        ({"FACESEARCH_DETECTOR_BACKEND": "yolo"}, "FACESEARCH_DETECTOR_YOLO_WEIGHTS"),
        ({"FACESEARCH_DETECTOR_BACKEND": "magic"}, "backend"),
    ],
)
def test_bad_settings_stop_the_service_with_a_clear_message(variables, expected):
    result = subprocess.run(
        [sys.executable, "-m", "services.detector"],
        cwd=REPO,
        env={**os.environ, **variables},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid detector settings" in result.stderr
    assert expected in result.stderr


def test_a_request_that_is_not_protobuf_gets_invalid_argument(detector_server):
    with grpc.insecure_channel(detector_server.address) as channel:
        detect = channel.unary_unary("/facesearch.v1.Detector/Detect")
        with pytest.raises(grpc.RpcError) as caught:
            detect(b"\x0a\x05ab", timeout=10)  # a field that claims more bytes than there are
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DetectRequest" in caught.value.details()
