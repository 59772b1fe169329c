"""Running an aio gRPC server on a background thread, for synchronous programs
(tests, benchmarks, the command line) that host a service in-process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from services.runtime.server import GrpcServer

T = TypeVar("T")


class BackgroundServer:
    """Starts ``server`` on its own event loop thread; ``stop`` shuts it down."""

    def __init__(self, server: GrpcServer, timeout_s: float = 60.0) -> None:
        self.server = server
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{server.service}-loop", daemon=True)
        self._thread.start()
        self.port = self.run(server.start())

    @property
    def address(self) -> str:
        return f"{self.server.settings.host}:{self.port}"

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs a coroutine on the server's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self.timeout_s)

    def stop(self, grace_s: float | None = 0) -> None:
        if not self._thread.is_alive():
            return
        self.run(self.server.stop(grace_s))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.timeout_s)
        self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
