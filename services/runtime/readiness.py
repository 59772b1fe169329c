"""Waiting until a service is ready: one polling loop for every kind of readiness check.

``wait_until_ready`` calls a check until it says yes, the time runs out, or the process
that should become ready exits first. The checks here: grpc.health.v1 SERVING (our
services) and Triton's server-and-model readiness.

A check only says that something answers on a port. ``port_in_use`` (before a start) and
``listeners`` with ``process_tree`` (after it) tell whether that something is the process
that was started, or another one that held the port already.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.processes import ChildProcess


class NotReady(TimeoutError):
    """The service was not ready in time."""


class ExitedEarly(RuntimeError):
    """The process that was to serve exited before it was ready."""


def wait_until_ready(
    check: Callable[[], bool],
    timeout_s: float,
    *,
    what: str,
    process: ChildProcess | subprocess.Popen | None = None,
    details: Callable[[], str] | None = None,
    interval_s: float = 0.1,
) -> None:
    """Calls ``check`` until it returns True. Raises ``ExitedEarly`` when ``process`` exits
    first, ``NotReady`` after ``timeout_s``; ``details`` adds text (a log tail) to either."""
    deadline = time.monotonic() + timeout_s
    more = (lambda: f"\n{details()}" if details() else "") if details else (lambda: "")
    while True:
        code = None if process is None else process.poll()
        if code is not None:
            raise ExitedEarly(f"{what} exited with status {code} before it was ready{more()}")
        if check():
            return
        if time.monotonic() > deadline:
            raise NotReady(f"{what} was not ready within {timeout_s:g} s{more()}")
        time.sleep(interval_s)


def grpc_serving(address: str, service: str = "", timeout_s: float = 1.0) -> Callable[[], bool]:
    """A check: grpc.health.v1 at ``address`` answers SERVING for ``service`` ("" = the server)."""

    def check() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
                )
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    return check


def triton_ready(
    url: str, models: Sequence[tuple[str, str]] | None = None, timeout_s: float = 2.0
) -> Callable[[], bool]:
    """A check: the Triton server at ``url`` (gRPC) is ready, and so is every (model, version)
    in ``models`` (default: every model in its repository index, any version)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def check() -> bool:
        try:
            with grpcclient.InferenceServerClient(url) as client:
                if not client.is_server_ready(client_timeout=timeout_s):
                    return False
                wanted = models
                if wanted is None:
                    index = client.get_model_repository_index(client_timeout=timeout_s)
                    wanted = [(model.name, "") for model in index.models]
                return all(client.is_model_ready(name, version, client_timeout=timeout_s) for name, version in wanted)
        except InferenceServerException:
            return False  # not listening yet

    return check


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a socket listens on ``port`` already (binding it fails), so a server started on
    it would fail to bind while the old one answered its readiness checks."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not in use
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


_PROC = Path("/proc")
_TCP_LISTEN = "0A"


def listeners(port: int) -> set[int] | None:
    """The pids of the processes with a TCP socket listening on ``port``; None where that
    cannot be known (no /proc)."""
    if not (_PROC / "net" / "tcp").is_file():
        return None
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == _TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone, or another user's
        for descriptor in descriptors:
            try:
                if os.readlink(descriptor) in inodes:
                    pids.add(int(entry.name))
                    break
            except OSError:
                continue
    return pids


def process_tree(pid: int) -> set[int]:
    """``pid`` and every process descended from it (from /proc; just ``pid`` without it)."""
    children: dict[int, list[int]] = {}
    if _PROC.is_dir():
        for entry in _PROC.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, pending = set(), [pid]
    while pending:
        current = pending.pop()
        if current not in tree:
            tree.add(current)
            pending.extend(children.get(current, []))
    return tree
