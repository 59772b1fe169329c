"""One event loop for a whole test module, as a service has: gRPC's asyncio channels belong to
one loop, and closing loops under them makes it log errors.

    module_loop = ModuleLoop()
    one_event_loop = module_loop.fixture()   # autouse, module scope
    run = module_loop.run
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest


class ModuleLoop:
    def __init__(self) -> None:
        self._runner: asyncio.Runner | None = None

    def fixture(self):
        @pytest.fixture(scope="module", autouse=True)
        def one_event_loop() -> Iterator[None]:
            with asyncio.Runner() as runner:
                self._runner = runner
                yield
            self._runner = None

        return one_event_loop

    def run(self, coroutine):
        assert self._runner is not None, "the module's event loop runs only during its tests"
        return self._runner.run(coroutine)
