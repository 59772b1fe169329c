"""The embedding interface the rest of the suite uses, whatever runs the model.

``Embedder.embed`` takes aligned face crops exactly as the detector returns them (the
model contract's input, ``services.embedder.models``: uint8 N x 160 x 160 x 3 RGB for
FaceNet) and returns ``Embeddings``: float32 N x dimension unit vectors (512 for FaceNet),
one row per crop in the same order, with the id and version of the model that made them.
Two backends implement it: ``triton.TritonEmbedder`` (a Triton Inference Server over
gRPC) and ``in_process.InProcessEmbedder`` (the same ONNX model run by ONNX Runtime in
the caller's process); ``factory.create_embedder`` picks one from the settings.

Errors:

- ``EmbeddingInputError`` (a ``ValueError``): the crops are not what the model takes;
  the caller's fault (gRPC INVALID_ARGUMENT). Raised before anything is sent.
- ``EmbedderUnavailable``: the model could not be reached or did not answer in time
  (server down, not ready after the retries, model not served, deadline exceeded).
  ``deadline`` tells a deadline apart (gRPC DEADLINE_EXCEEDED, else UNAVAILABLE).
- ``EmbedderError``: anything else that went wrong on the model's side, such as an
  answer that is not N unit-length vectors of the model's dimension (gRPC INTERNAL).
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass

import numpy as np

from services.embedder.models import EmbeddingModel
from services.runtime.deadlines import Deadline

UNIT_TOLERANCE = 1e-3  # how far from 1 a vector's L2 norm may be


class EmbedderError(Exception):
    """The embedding model failed or answered something that is not embeddings."""


class EmbeddingInputError(ValueError):
    """Crops that the model does not take; the message says what was expected and what came."""


class EmbedderUnavailable(EmbedderError):
    """The model could not be reached or did not answer in time.

    ``deadline`` is True when a deadline ran out (map to gRPC DEADLINE_EXCEEDED),
    False when the service is down, not ready or does not serve the model (UNAVAILABLE).
    """

    def __init__(self, message: str, *, deadline: bool = False) -> None:
        super().__init__(message)
        self.deadline = deadline


class ModelNotPrepared(EmbedderError, FileNotFoundError):
    """The model file the in-process backend needs is not there."""


@dataclass(frozen=True)
class Embeddings:
    """``vectors``: float32 N x dimension, unit L2 norm, row i for crop i (read-only).
    ``model_id`` and ``model_version``: the model that produced them."""

    vectors: np.ndarray
    model_id: str
    model_version: str

    def __len__(self) -> int:
        return len(self.vectors)


def validate_crops(crops: object, model: EmbeddingModel) -> np.ndarray:
    """Returns ``crops`` as a C-contiguous array of ``model``'s input (uint8 N x 160 x 160 x 3
    for FaceNet), or raises ``EmbeddingInputError`` saying what was expected and what came."""
    spec = model.input
    dims = tuple(spec.dims)
    expected = (
        f"{spec.dtype} array of aligned {model.pixels.colour} face crops, "
        f"shape (N, {', '.join(map(str, dims))}) with N >= 1"
    )
    if not isinstance(crops, np.ndarray):
        raise EmbeddingInputError(f"crops must be a numpy {expected}; got {type(crops).__name__}")
    came = f"got {crops.dtype} array of shape {crops.shape}"
    if crops.ndim != len(dims) + 1:
        hint = " (for one crop, pass crops[None])" if crops.shape == dims else ""
        raise EmbeddingInputError(
            f"crops must be a {expected}; {came}: {crops.ndim} dimensions, not {len(dims) + 1}{hint}"
        )
    if crops.shape[1:] != dims:
        raise EmbeddingInputError(f"crops must be a {expected}; {came}")
    if crops.dtype != np.dtype(spec.dtype):
        raise EmbeddingInputError(f"crops must be a {expected}; {came} (pass the detector's {spec.dtype} pixels)")
    if crops.shape[0] == 0:
        raise EmbeddingInputError(f"crops must be a {expected}; {came}: the batch is empty")
    return np.ascontiguousarray(crops)


def check_vectors(vectors: object, count: int, source: str, model: EmbeddingModel) -> np.ndarray:
    """Returns the model's answer as ``count`` unit vectors of ``model``'s output (float32 x 512
    for FaceNet), or raises ``EmbedderError`` naming ``source`` when it is not that."""
    spec = model.output
    if not isinstance(vectors, np.ndarray):
        raise EmbedderError(f"{source} returned no embeddings array")
    expected = (count, *spec.dims)
    if vectors.shape != expected:
        raise EmbedderError(
            f"{source} returned embeddings of shape {vectors.shape} for {count} crops; expected {expected}"
        )
    if vectors.dtype != np.dtype(spec.dtype):
        raise EmbedderError(f"{source} returned {vectors.dtype} embeddings; expected {spec.dtype}")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise EmbedderError(f"{source} returned NaN or infinite embeddings for crops {np.flatnonzero(bad).tolist()}")
    norms = np.linalg.norm(vectors, axis=1)
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise EmbedderError(
            f"{source} returned embeddings that are not unit length (crop {first}: norm {norms[first]:.6g})"
        )
    return vectors


class Embedder(abc.ABC):
    """Face crops in, embeddings out. ``model`` is the contract of the served model (its
    input and output); use from one event loop; ``close`` when done (or ``async with``)."""

    def __init__(self, model_id: str, model_version: str, model: EmbeddingModel) -> None:
        self.model_id = model_id
        self.model_version = model_version
        self.model = model
        self._closed = False

    async def embed(self, crops: np.ndarray, *, deadline: Deadline | None = None) -> Embeddings:
        """Embeds the crops (uint8 N x 160 x 160 x 3 RGB for FaceNet); row i of the result is crop i.

        ``deadline`` bounds the whole call (retries included); once it has passed
        ``EmbedderUnavailable(deadline=True)`` is raised. Without it each backend's own
        per-request deadline and retry limits bound the call.
        """
        crops = validate_crops(crops, self.model)
        if self._closed:
            raise EmbedderUnavailable(f"the {type(self).__name__} for {self.model_id} was closed")
        vectors = await self._embed(crops, deadline)
        vectors = check_vectors(vectors, len(crops), self.describe(), self.model)
        vectors.setflags(write=False)
        return Embeddings(vectors, self.model_id, self.model_version)

    @abc.abstractmethod
    async def _embed(self, crops: np.ndarray, deadline: Deadline | None) -> np.ndarray:
        """The backend's N x dimension answer for valid crops, within ``deadline`` if any."""

    @abc.abstractmethod
    async def ready(self) -> bool:
        """Whether ``embed`` can be expected to work now (a quick check, no retries)."""

    async def close(self) -> None:
        """Releases the backend's resources; ``embed`` raises EmbedderUnavailable afterwards."""
        self._closed = True

    def describe(self) -> str:
        return f"{type(self).__name__} {self.model_id} version {self.model_version}"

    async def __aenter__(self) -> Embedder:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def gather_all(coroutines: list) -> list:
    """Runs the coroutines concurrently and returns their results in order; on the first
    error the others are cancelled and that error is raised (not an ExceptionGroup)."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
