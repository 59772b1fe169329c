"""``InProcessEmbedder``: the served ONNX model run by ONNX Runtime in the caller's process.

For a single machine without a Triton server. It runs the very ``model.onnx`` that
Triton serves in the flavour marked ``in_process`` in ``serving.flavours`` (same file, same
CPU execution provider), so its vectors equal Triton's. The file is found in the model
repository that ``facesearch models prepare`` writes::

    <model_repository>/onnx-python/<model_id>/<model_version>/model.onnx

or passed explicitly. ONNX Runtime runs in a small thread pool of its own (``workers``
threads, each session run using ``intra_op_threads`` threads), so the event loop is
never blocked; crops are run ``client_batch_size`` at a time.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.embedder.client.base import (
    Embedder,
    EmbedderError,
    EmbedderUnavailable,
    ModelNotPrepared,
    gather_all,
)
from services.embedder.serving import flavours
from services.embedder.settings import EmbedderSettings
from services.runtime.deadlines import Deadline


def onnx_model_path(settings: EmbedderSettings) -> Path:
    """Where ``facesearch models prepare`` puts the ONNX file of the settings' pinned model."""
    flavour = flavours.IN_PROCESS
    relpath = flavours.model_file(flavour.name, settings.model_id, settings.model_version, flavour.model_file_name)
    return Path(settings.model_repository) / relpath


def _numpy_dtype(onnx_type: str) -> str:
    """ONNX Runtime's type of a tensor ("tensor(float)") as a numpy dtype name ("float32")."""
    name = onnx_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64"}.get(name, name)


class InProcessEmbedder(Embedder):
    def __init__(
        self,
        settings: EmbedderSettings,
        *,
        onnx_path: str | Path | None = None,
        workers: int = 1,
    ) -> None:
        super().__init__(settings.model_id, settings.model_version, settings.model)
        self.onnx_path = Path(onnx_path) if onnx_path is not None else onnx_model_path(settings)
        self.batch_size = settings.client_batch_size
        if not self.onnx_path.is_file():
            raise ModelNotPrepared(
                f"no ONNX model for {self.model_id} version {self.model_version} at {self.onnx_path}; "
                "run `facesearch models prepare` to write it (or set the embedder's model_repository)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise EmbedderError(f"ONNX Runtime cannot load {self.onnx_path}: {error}") from error
        [self._input, *_] = self._session.get_inputs()
        [self._output, *_] = self._session.get_outputs()
        for tensor, spec, what in (
            (self._input, self.model.input, "takes"),
            (self._output, self.model.output, "returns"),
        ):
            if _numpy_dtype(tensor.type) != spec.dtype or list(tensor.shape[1:]) != list(spec.dims):
                raise EmbedderError(
                    f"{self.onnx_path} {what} {tensor.type} {tensor.shape}, not "
                    f"{spec.dtype} {spec.name} [N, {', '.join(map(str, spec.dims))}]"
                )
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embedder-onnx")

    def describe(self) -> str:
        return f"ONNX Runtime {self.model_id} version {self.model_version} ({self.onnx_path})"

    def _run(self, crops: np.ndarray) -> np.ndarray:
        try:
            return self._session.run([self._output.name], {self._input.name: crops})[0]
        except Exception as error:
            raise EmbedderError(f"{self.describe()} failed: {error}") from error

    async def _embed(self, crops: np.ndarray, deadline: Deadline | None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        runs = [
            loop.run_in_executor(self._executor, self._run, crops[start : start + self.batch_size])
            for start in range(0, len(crops), self.batch_size)
        ]
        try:
            parts = await asyncio.wait_for(gather_all(runs), None if deadline is None else deadline.remaining())
        except TimeoutError:
            raise EmbedderUnavailable(f"{self.describe()} did not finish within the deadline", deadline=True) from None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def ready(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        await super().close()
        # Runs already started finish (ONNX Runtime cannot be interrupted); queued ones are dropped.
        self._executor.shutdown(wait=False, cancel_futures=True)
