"""The flavours of the served embedding model: one table, and each flavour's Triton config.

A flavour is one way of serving the model with Triton. Each ``Flavour`` in ``FLAVOUR_TABLE``
says which Triton backend (and platform) runs it, on which kind of instance, which files its
version folder holds (a ``model.py`` copied from ``triton_models/``, or a model file made from
the weights: an ``"onnx"`` export or a ``"torchscript"`` trace), which settings shape its
config, and how its ``ModelConfig`` differs from the common one. Provisioning
(``provisioning.py``), ``embedder serve``, the in-process client, the ``flavour`` setting and
the command line's ``--flavour`` choices all read this table.

Every flavour's config (``model_config``) is a ``tritonclient.grpc.model_config_pb2.ModelConfig``
written as text (``config_text``): the model contract's input and output tensors
(``services.embedder.models``), batched up to ``max_batch_size``, dynamic batching with the
``preferred_batch_sizes`` up to it and ``max_queue_delay_us``, and ``instances`` instances of
the flavour's kind; then the flavour's string parameters, read by its model.py, and its own
additions (TensorRT for ``onnxruntime-onnx``).

Nothing here imports tritonclient until a config is built, so the settings can validate the
``flavour`` setting against ``FLAVOURS`` cheaply.

One model repository per flavour: ``<model_repository>/<flavour>/<model id>/<version>/<file>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from services.embedder.models import EmbeddingModel

TRITON_MODELS = Path(__file__).resolve().parent / "triton_models"
ARTIFACTS = ("onnx", "torchscript")  # model files made from the weights (see provisioning)
TENSORRT_WORKSPACE_BYTES = 1 << 30

# The settings that shape every flavour's config, by their key in the manifest and the config.
BATCHING = {
    "max_batch_size": "max_batch_size",
    "preferred_batch_sizes": "preferred_batch_sizes",
    "max_queue_delay_us": "max_queue_delay_us",
    "instances": "instances",
}


@dataclass(frozen=True)
class VersionFile:
    """A file of a flavour's version folder: copied from ``source`` (a path relative to
    ``triton_models/``), or made from the weights as ``artifact`` (one of ``ARTIFACTS``)."""

    name: str
    source: str | None = None
    artifact: str | None = None

    def __post_init__(self) -> None:
        if (self.source is None) == (self.artifact is None):
            raise ValueError(f"{self.name}: a version file has a source or an artifact, not both or neither")
        if self.artifact is not None and self.artifact not in ARTIFACTS:
            raise ValueError(f"{self.name}: unknown artifact {self.artifact!r} (one of {', '.join(ARTIFACTS)})")

    @property
    def source_path(self) -> Path | None:
        return None if self.source is None else TRITON_MODELS / self.source


@dataclass(frozen=True)
class Flavour:
    """One way of serving the model (see the module docstring)."""

    name: str
    description: str
    backend: str  # the Triton backend that runs it
    instance_kind: str  # "KIND_CPU" or "KIND_GPU"
    files: tuple[VersionFile, ...]
    # Settings that shape its config beside BATCHING: {key in the manifest and config: settings field}.
    options: Mapping[str, str] = field(default_factory=dict)
    # Its config's string parameters, read by its model.py: {parameter: option key}.
    parameters: Mapping[str, str] = field(default_factory=dict)
    platform: str = ""  # Triton's platform, for backends that name one
    # The option whose value "cpu" puts the instances on the CPU whatever ``instance_kind`` says.
    device_option: str | None = None
    # Adds what only this flavour's config has.
    customise: Callable[[Flavour, ModelConfig, Mapping[str, Any]], None] | None = None
    # Its model.onnx is the file the in-process client runs (same file, same CPU provider).
    in_process: bool = False

    def option_values(self, settings: Any) -> dict[str, Any]:
        """The settings that shape this flavour's config, by key (recorded in the manifest)."""
        values = {key: getattr(settings, name) for key, name in {**BATCHING, **self.options}.items()}
        values["preferred_batch_sizes"] = list(values["preferred_batch_sizes"])
        return values

    def kind(self, options: Mapping[str, Any]) -> str:
        if self.device_option is not None and options[self.device_option] == "cpu":
            return "KIND_CPU"
        return self.instance_kind

    def model_config(
        self, name: str, options: Mapping[str, Any], model: EmbeddingModel, version: str | int | None = None
    ) -> ModelConfig:
        """The config of model ``name`` in this flavour, shaped by ``options`` (``option_values``);
        with ``version``, Triton serves that version only (else Triton's default: the latest)."""
        from tritonclient.grpc import model_config_pb2 as pb

        max_batch_size = options["max_batch_size"]
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1 (dynamic batching needs a batch dimension)")
        config = pb.ModelConfig(name=name, backend=self.backend, platform=self.platform, max_batch_size=max_batch_size)
        for tensors, spec in ((config.input, model.input), (config.output, model.output)):
            tensors.add(name=spec.name, data_type=triton_data_type(spec.dtype), dims=spec.dims)
        config.dynamic_batching.preferred_batch_size.extend(
            sorted({size for size in options["preferred_batch_sizes"] if size <= max_batch_size})
        )
        config.dynamic_batching.max_queue_delay_microseconds = options["max_queue_delay_us"]
        config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.Value(self.kind(options)), count=options["instances"])
        if version is not None:
            config.version_policy.specific.versions.append(int(version))
        for parameter, key in self.parameters.items():
            config.parameters[parameter].string_value = str(options[key])
        if self.customise is not None:
            self.customise(self, config, options)
        return config

    @property
    def model_file_name(self) -> str:
        """The file its backend loads: the artifact (for a python-backend flavour, model.py loads it)."""
        return next(file.name for file in self.files if file.artifact is not None)


def _tensorrt(flavour: Flavour, config: ModelConfig, options: Mapping[str, Any]) -> None:
    """onnxruntime with TensorRT as GPU execution accelerator, in the ``precision`` asked for."""
    config.default_model_filename = flavour.model_file_name
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accelerator.parameters["precision_mode"] = options["precision"].upper()
    accelerator.parameters["max_workspace_size_bytes"] = str(TENSORRT_WORKSPACE_BYTES)


FLAVOUR_TABLE: tuple[Flavour, ...] = (
    Flavour(
        name="onnx-python",
        description="python backend running the ONNX model with ONNX Runtime on the CPU",
        backend="python",
        instance_kind="KIND_CPU",
        files=(VersionFile("model.py", source="onnx_python/model.py"), VersionFile("model.onnx", artifact="onnx")),
        options={"intra_op_threads": "intra_op_threads"},
        parameters={"intra_op_num_threads": "intra_op_threads"},
        in_process=True,
    ),
    Flavour(
        name="torch-cuda-python",
        description="python backend running the TorchScript model with torch, on CUDA GPUs (or the CPU)",
        backend="python",
        instance_kind="KIND_GPU",
        device_option="device",
        files=(
            VersionFile("model.py", source="torch_python/model.py"),
            VersionFile("model.pt", artifact="torchscript"),
        ),
        options={"device": "torch_device", "precision": "precision", "intra_op_threads": "intra_op_threads"},
        parameters={"device": "device", "precision": "precision", "intra_op_num_threads": "intra_op_threads"},
    ),
    Flavour(
        name="onnxruntime-onnx",
        description="Triton's onnxruntime backend with TensorRT, on NVIDIA GPUs (NVIDIA's Triton images)",
        backend="onnxruntime",
        platform="onnxruntime_onnx",
        instance_kind="KIND_GPU",
        files=(VersionFile("model.onnx", artifact="onnx"),),
        options={"precision": "precision"},
        customise=_tensorrt,
    ),
)

FLAVOURS: tuple[str, ...] = tuple(flavour.name for flavour in FLAVOUR_TABLE)
DEFAULT_FLAVOUR = FLAVOURS[0]
REGISTRY: dict[str, Flavour] = {flavour.name: flavour for flavour in FLAVOUR_TABLE}
if len(REGISTRY) != len(FLAVOUR_TABLE):
    raise ValueError("two flavours share one name")
[IN_PROCESS] = [flavour for flavour in FLAVOUR_TABLE if flavour.in_process]


def get(name: str) -> Flavour:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown flavour {name!r} (one of {', '.join(FLAVOURS)})") from None


def model_file(flavour: str, model_id: str, version: str | int, name: str) -> str:
    """Where a model's file lies in the model repository, relative to its root:
    ``<flavour>/<model id>/<version>/<name>`` (one Triton repository per flavour)."""
    return f"{flavour}/{model_id}/{version}/{name}"


def triton_data_type(dtype: str) -> int:
    """The ``model_config_pb2.DataType`` of a numpy dtype name ("uint8" -> TYPE_UINT8)."""
    import numpy as np
    from tritonclient.grpc import model_config_pb2 as pb
    from tritonclient.utils import np_to_triton_dtype

    return pb.DataType.Value(f"TYPE_{np_to_triton_dtype(np.dtype(dtype))}")


def config_text(config: ModelConfig) -> str:
    """config.pbtxt: the config in protobuf's text format."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)
