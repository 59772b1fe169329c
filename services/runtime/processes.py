"""Supervising a child process: start it in its own process group, know whether it still
runs, stop it with SIGTERM and, after a grace period, SIGKILL to its whole group.

A started child is also stopped when its ``ChildProcess`` is collected or Python exits
without ``stop`` (a test that fails half-way leaves no server behind). On Linux it also
dies with its parent, however the parent ends (``kill -9`` included): the kernel sends it
SIGTERM when the thread that started it exits (``die_with_parent``; start children from a
thread that lives as long as they should).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path


class ChildProcess:
    """``command`` as a child; its output goes to ``log_path`` when given, else is inherited."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        stop_timeout_s: float = 15.0,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.stop_timeout_s = stop_timeout_s
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    def start(self) -> ChildProcess:
        if self.process is not None:
            raise RuntimeError(f"{self.name} was already started")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "wb") as log:
                self.process = self._spawn(log)
        else:
            self.process = self._spawn(None)
        self._finalizer = weakref.finalize(self, terminate, self.process, self.stop_timeout_s)
        return self

    def _spawn(self, log) -> subprocess.Popen:
        return subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=True,  # its own process group: its children go with it
            preexec_fn=_death_signal(signal.SIGTERM) if self.die_with_parent else None,
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def poll(self) -> int | None:
        """Its exit status once it has exited; None while it runs or before it starts."""
        return None if self.process is None else self.process.poll()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def signal(self, signum: int) -> None:
        if self.running:
            self.process.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its process group after ``stop_timeout_s``."""
        if self._finalizer is not None:
            self._finalizer()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Waits for it to exit; its exit status, or None when it still runs after ``timeout_s``."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last lines of {self.log_path} ---\n{tail}"


_PR_SET_PDEATHSIG = 1


def _death_signal(signum: int):
    """A preexec_fn that has the kernel send ``signum`` to the child when its parent dies
    (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def set_death_signal() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signum)

    return set_death_signal


def terminate(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM to ``process``; SIGKILL to its process group if it has not exited after ``timeout_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(5)
