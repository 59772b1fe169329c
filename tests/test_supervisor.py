"""`facesearch up` supervises the suite: the real command on loopback ports, its services as
child processes. A back end killed with SIGKILL is started again while the others keep
serving; SIGTERM stops the gateway first, so the photos of a stream in flight are indexed, not
FAILED; a port held by another process stops `up` before it starts anything; killing the
launcher itself leaves no service behind.

Slow (Triton starts twice): one `up` for the kill tests and the drain, one for the launcher's
SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from facesearch.v1 import (
    common_pb2,
    detector_pb2,
    detector_pb2_grpc,
    facesearch_pb2,
    facesearch_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from gateway.auth import add_key
from services.runtime.channels import service_token_metadata
from services.runtime.ports import free_ports
from services.runtime.readiness import grpc_serving, process_tree, triton_ready
from tests.conftest import REPO, photo_bytes

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

FACESEARCH = [sys.executable, "-m", "cli.main"]
READY = "press Ctrl-C to stop"
SERVICE_TOKEN = "the-service-token-of-the-supervision-tests"
INTERNAL = service_token_metadata(SERVICE_TOKEN)  # what a call to the detector or search carries


class Up:
    """One `facesearch up` on free ports, its models prepared already, its log in a file."""

    def __init__(self, work: Path, models: Path) -> None:
        names = ["detector", "detector_metrics", "triton", "triton_http", "triton_metrics"]
        names += ["search", "search_metrics", "gateway", "gateway_metrics"]
        self.ports = dict(zip(names, free_ports(len(names))))
        self.key = add_key(work / "api_keys", "me")
        self.env = {
            **os.environ,
            "FACESEARCH_DETECTOR_PORT": str(self.ports["detector"]),
            "FACESEARCH_DETECTOR_METRICS_PORT": str(self.ports["detector_metrics"]),
            "FACESEARCH_EMBEDDER_PORT": str(self.ports["triton"]),
            "FACESEARCH_EMBEDDER_HTTP_PORT": str(self.ports["triton_http"]),
            "FACESEARCH_EMBEDDER_METRICS_PORT": str(self.ports["triton_metrics"]),
            "FACESEARCH_EMBEDDER_MODEL_REPOSITORY": str(models),
            "FACESEARCH_EMBEDDER_WORK_DIR": str(work / "triton"),
            "FACESEARCH_SEARCH_PORT": str(self.ports["search"]),
            "FACESEARCH_SEARCH_METRICS_PORT": str(self.ports["search_metrics"]),
            "FACESEARCH_SEARCH_PATH": str(work / "search"),
            "FACESEARCH_GATEWAY_PORT": str(self.ports["gateway"]),
            "FACESEARCH_GATEWAY_METRICS_PORT": str(self.ports["gateway_metrics"]),
            "FACESEARCH_GATEWAY_API_KEYS_FILE": str(work / "api_keys"),
            "FACESEARCH_SERVICE_TOKEN": SERVICE_TOKEN,
        }
        self.log_path = work / "up.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 240) -> Up:
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen([*FACESEARCH, "up"], cwd=REPO, env=self.env, stderr=log)
        self.wait_for(READY, timeout_s)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, text: str, timeout_s: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout_s
        while self.log.count(text) < count:
            assert self.process.poll() is None or text in self.log, self.log
            assert time.monotonic() < deadline, f"no {text!r} within {timeout_s} s:\n{self.log}"
            time.sleep(0.2)

    def pids(self, marker: str) -> list[int]:
        """The launcher's descendants whose command line contains ``marker``."""
        found = []
        for pid in process_tree(self.process.pid) - {self.process.pid}:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in command:
                found.append(pid)
        return found

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="module")
def up(tmp_path_factory, onnx_python_models):
    suite = Up(tmp_path_factory.mktemp("up"), onnx_python_models.model_repository)
    started = time.monotonic()
    suite.start()
    print(f"facesearch up ready in {time.monotonic() - started:.1f} s")
    yield suite
    suite.close()


def until(check, timeout_s: float, what: str) -> float:
    """Seconds until ``check()`` is true."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, f"{what} not within {timeout_s} s"
        time.sleep(0.2)
    return time.monotonic() - start


def detects(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        request = detector_pb2.DetectRequest(image=common_pb2.Image(content=photo_bytes("photoprism", "2.jpg")))
        try:
            return (
                len(detector_pb2_grpc.DetectorStub(channel).Detect(request, timeout=20, metadata=INTERNAL).faces) == 1
            )
        except grpc.RpcError:
            return False


def counts(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            search_pb2_grpc.SearchStub(channel).Count(
                search_pb2.CountRequest(tenant="me"), timeout=5, metadata=INTERNAL
            )
        except grpc.RpcError:
            return False
    return True


def verifies(up: Up) -> bool:
    """The whole suite answers: the gateway, through the detector, Triton and search."""
    photo = facesearch_pb2.Photo(content=photo_bytes("compreface", "007_B.jpg"))
    with grpc.insecure_channel(up.address("gateway")) as channel:
        try:
            reply = facesearch_pb2_grpc.FaceSearchStub(channel).Verify(
                facesearch_pb2.VerifyRequest(a=photo, b=photo),
                metadata=[("authorization", f"Bearer {up.key}")],
                timeout=30,
            )
        except grpc.RpcError:
            return False
    return reply.same_person


def test_a_port_held_by_another_process_stops_up_before_anything_starts(tmp_path, onnx_python_models):
    suite = Up(tmp_path, onnx_python_models.model_repository)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", suite.ports["search"]))
        squatter.listen()
        result = subprocess.run(
            [*FACESEARCH, "up"], cwd=REPO, env=suite.env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode != 0
    assert f"{suite.ports['search']} (search gRPC) already in use by another process" in result.stderr
    assert READY not in result.stderr and "ready" not in result.stderr.replace("already", "")


@pytest.mark.parametrize(
    ("marker", "answers"),
    [
        ("services.detector", lambda up: detects(up.address("detector"))),
        ("services.search", lambda up: counts(up.address("search"))),
        ("tritonserver", lambda up: triton_ready(up.address("triton"))()),
    ],
    ids=["detector", "search", "triton"],
)
def test_a_killed_back_end_is_restarted_while_the_others_keep_serving(up, marker, answers):
    assert verifies(up)
    [pid] = up.pids(marker)
    restarts = up.log.count("restarted (pid")
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    up.wait_for("exited with status", 10, count=restarts + 1)
    assert grpc_serving(up.address("gateway"))(), "the gateway keeps serving meanwhile"
    up.wait_for("restarted (pid", 30, count=restarts + 1)
    until(lambda: answers(up), 120, f"{marker} answering again")
    serving_again = time.monotonic() - killed
    [new_pid] = up.pids(marker)
    assert new_pid != pid
    until(lambda: verifies(up), 60, "the whole suite answering again")
    print(f"{marker}: killed -> serving again in {serving_again:.1f} s")
    assert up.process.poll() is None


def index(up: Up, photos: list[facesearch_pb2.Photo], spacing_s: float, on_first_result) -> tuple[list, object, list]:
    """Streams ``photos`` to IndexPhotos ``spacing_s`` apart; calls ``on_first_result`` once the
    first result is back. Returns the results, the stream's error status (None: OK) and when
    each photo was sent."""
    sent = []

    def requests():
        for photo in photos:
            sent.append(time.monotonic())
            yield facesearch_pb2.IndexPhotosRequest(photo=photo)
            time.sleep(spacing_s)

    results, stream_error = [], None
    with grpc.insecure_channel(up.address("gateway")) as channel:
        stream = facesearch_pb2_grpc.FaceSearchStub(channel).IndexPhotos(
            requests(), metadata=[("authorization", f"Bearer {up.key}")], timeout=120
        )
        try:
            for reply in stream:
                results.append(reply.result)
                if len(results) == 1:
                    on_first_result()
        except grpc.RpcError as error:
            stream_error = error.code()
    return results, stream_error, sent


def faces_stored(up: Up) -> int:
    with grpc.insecure_channel(up.address("search")) as channel:
        request = search_pb2.CountRequest(tenant="me")
        return search_pb2_grpc.SearchStub(channel).Count(request, timeout=10, metadata=INTERNAL).count


def test_a_stream_goes_on_while_a_killed_back_end_restarts_and_keeps_what_it_acknowledged(up):
    # Photos of their own (the drain test below sends others): callers see failures only while
    # search is down, and every face acknowledged as stored is there after its restart.
    names = [f"{n:03d}_{k}.jpg" for n, k in zip(range(7, 18), "BBC23445680")]
    photos = [facesearch_pb2.Photo(id=n, content=photo_bytes("compreface", n)) for n in names]
    names = [f"overlap/{n}.jpg" for n in range(1, 5)] + ["7.jpg", "8.jpg", "10.jpg", "11.jpg"]
    photos += [facesearch_pb2.Photo(id=n, content=photo_bytes("photoprism", n)) for n in names]
    before = faces_stored(up)
    [pid] = up.pids("services.search")
    back = []

    def kill() -> None:
        os.kill(pid, signal.SIGKILL)

        def watch() -> None:
            until(lambda: counts(up.address("search")), 60, "search answering again")
            back.append(time.monotonic())

        threading.Thread(target=watch, daemon=True).start()

    results, stream_error, sent = index(up, photos, 0.3, kill)
    statuses = [facesearch_pb2.PhotoStatus.Name(r.status) for r in results]
    print(f"search killed under a stream of {len(photos)} photos: {statuses.count('PHOTO_STATUS_FAILED')} FAILED")
    assert stream_error is None and len(results) == len(photos)
    assert back, "search did not answer again"
    later = [status for status, at in zip(statuses, sent) if at > back[0] + 0.5]
    assert later, "search came back after the last photo was sent"
    assert "PHOTO_STATUS_FAILED" not in later, statuses
    acknowledged = sum(r.faces_stored for r in results if r.status == facesearch_pb2.PHOTO_STATUS_INDEXED)
    assert acknowledged > 0 and faces_stored(up) == before + acknowledged


def test_sigterm_during_a_stream_stops_the_gateway_first_and_no_photo_fails(up):
    # Last of the module's tests on `up`: it stops it. The photos keep coming after SIGTERM, so
    # the gateway, draining, still calls the detector, Triton and search for them.
    names = ["2.jpg", "3.jpg", "4.jpg", "5.jpg", "6.jpg", "12.jpg", "16.jpg", "17.jpg", "18.jpg", "9.jpg"]
    photos = [
        facesearch_pb2.Photo(id=f"p{i}-{n}", content=photo_bytes("photoprism", n)) for i in range(3) for n in names
    ]
    descendants = process_tree(up.process.pid) - {up.process.pid}
    signalled = []

    def stop() -> None:
        up.process.send_signal(signal.SIGTERM)
        signalled.append(time.monotonic())

    results, stream_error, _ = index(up, photos, 0.1, stop)
    drained = time.monotonic() - signalled[0]
    assert up.process.wait(60) == 0
    statuses = [facesearch_pb2.PhotoStatus.Name(r.status) for r in results]
    print(
        f"SIGTERM after the first of {len(photos)} photos: {len(statuses)} answered "
        f"({statuses.count('PHOTO_STATUS_FAILED')} FAILED) in {drained:.1f} s, stream ended {stream_error or 'OK'}"
    )
    assert "PHOTO_STATUS_FAILED" not in statuses, statuses
    assert len(statuses) == len(photos), f"stream ended with {stream_error} after {len(statuses)} photos"
    assert set(statuses) <= {"PHOTO_STATUS_INDEXED", "PHOTO_STATUS_NO_FACE", "PHOTO_STATUS_DUPLICATE"}
    until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in descendants), 30, "every service gone")


def test_killing_the_launcher_leaves_no_service_behind(tmp_path, onnx_python_models):
    suite = Up(tmp_path, onnx_python_models.model_repository).start()
    try:
        descendants = process_tree(suite.process.pid) - {suite.process.pid}
        assert len(suite.pids("tritonserver")) == 1 and len(descendants) >= 5
        suite.process.kill()
        suite.process.wait(10)
        gone = until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in descendants), 30, "no orphans")
        print(f"launcher killed: its {len(descendants)} processes gone in {gone:.1f} s")
        for name in ("detector", "triton", "search", "gateway"):
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", suite.ports[name])) != 0, f"{name} still listening"
    finally:
        suite.close()


def test_a_port_answered_by_a_process_the_suite_did_not_start_is_not_ready():
    from launcher.processes import ServiceProcess, Suite
    from services.runtime.processes import ChildProcess

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        service = ServiceProcess("detector", "services.detector", port=port, metrics_port=0)
        service.child = ChildProcess("detector", [sys.executable, "-c", "import time; time.sleep(30)"]).start()
        try:
            with pytest.raises(RuntimeError, match=f"answered by another process \\(pid {os.getpid()}\\)"):
                Suite._check_owner(service)
        finally:
            service.child.stop()
