"""Runs the facesearch services on localhost as child processes (``facesearch up``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.detector.settings import DetectorSettings
from services.runtime.settings import load_settings


@dataclass
class ServiceProcess:
    name: str
    module: str
    port: int
    metrics_port: int
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


DEFAULT_METRICS_PORTS = {"detector": 9101}


def default_suite() -> list[ServiceProcess]:
    """The services that make up the suite, on their configured (or default) local ports."""
    detector = load_settings(DetectorSettings)
    return [
        ServiceProcess(
            "detector",
            "services.detector",
            port=detector.port,
            metrics_port=detector.metrics_port or DEFAULT_METRICS_PORTS["detector"],
        ),
    ]


def wait_until_serving(address: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Polls grpc.health.v1 until the server says SERVING; raises TimeoutError or
    RuntimeError (the process exited) otherwise."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"exited with status {process.returncode} before serving")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} not serving after {timeout_s:.0f} s")


class Suite:
    def __init__(self, services: list[ServiceProcess], startup_timeout_s: float = 120.0) -> None:
        self.services = services
        self.startup_timeout_s = startup_timeout_s

    def start(self) -> None:
        for service in self.services:
            prefix = f"FACESEARCH_{service.name.upper()}_"
            env = {
                **os.environ,
                f"{prefix}PORT": str(service.port),
                f"{prefix}METRICS_PORT": str(service.metrics_port),
                **service.env,
            }
            env.setdefault(f"{prefix}LOG_FORMAT", "text")
            service.process = subprocess.Popen([sys.executable, "-m", service.module], env=env)
        for service in self.services:
            try:
                wait_until_serving(service.address, self.startup_timeout_s, service.process)
            except (TimeoutError, RuntimeError) as error:
                self.stop()
                raise RuntimeError(f"{service.name}: {error}") from None

    def stop(self, grace_s: float = 15.0) -> None:
        running = [s.process for s in self.services if s.process and s.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def wait(self) -> int:
        """Blocks until a service exits or SIGTERM/SIGINT arrives; returns an exit status."""
        stopping = False

        def request_stop(signum, frame):  # noqa: ARG001
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        while not stopping:
            for service in self.services:
                if service.process and service.process.poll() is not None:
                    print(f"{service.name} exited with status {service.process.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
