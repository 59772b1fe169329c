"""Triton model folders for the embedder: their config.pbtxt text, and writing one.

One model folder is::

    <repo>/<model_name>/config.pbtxt
    <repo>/<model_name>/<version>/model.py     (triton_models/onnx_python/model.py)
    <repo>/<model_name>/<version>/model.onnx

served by Triton's ``python`` backend, which runs the ONNX model with ONNX Runtime
on the CPU (see model.py for the tensor contract). ``write_model`` writes such a folder;
``services.embedder.serving.provisioning`` writes the folders of every flavour (this one,
``torch_python_config`` and ``onnxruntime_config``) with checksums.

Every config has the same tensors (input ``crops`` UINT8 [160, 160, 3], output
``embeddings`` FP32 [512], batched) and dynamic batching.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

PYTHON_MODEL = Path(__file__).resolve().parent / "triton_models" / "onnx_python" / "model.py"
TORCH_PYTHON_MODEL = Path(__file__).resolve().parent / "triton_models" / "torch_python" / "model.py"


def model_file(flavour: str, model_id: str, version: str | int, name: str) -> str:
    """Where a model's file lies in the model repository, relative to its root:
    ``<flavour>/<model id>/<version>/<name>`` (one Triton repository per flavour)."""
    return f"{flavour}/{model_id}/{version}/{name}"


CROP_DIMS = (160, 160, 3)
EMBEDDING_DIMS = (512,)


def model_config(
    name: str,
    *,
    max_batch_size: int = 32,
    preferred_batch_sizes: Sequence[int] = (8, 16, 32),
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    intra_op_threads: int = 1,
) -> str:
    """The config.pbtxt text of an embedding model on the python backend running ONNX Runtime."""
    return (
        f'name: "{name}"\nbackend: "python"\n'
        + _batched_tensors(max_batch_size, preferred_batch_sizes, max_queue_delay_us)
        + f"instance_group [ {{ kind: KIND_CPU, count: {instances} }} ]\n"
        + _parameters({"intra_op_num_threads": intra_op_threads})
    )


def torch_python_config(
    name: str,
    *,
    device: str = "cuda",
    precision: str = "fp16",
    max_batch_size: int = 32,
    preferred_batch_sizes: Sequence[int] = (8, 16, 32),
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    intra_op_threads: int = 1,
) -> str:
    """The config.pbtxt text of the TorchScript model on the python backend
    (triton_models/torch_python/model.py): ``instances`` per GPU for device cuda, on the CPU for cpu."""
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, not {device!r}")
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be fp16 or fp32, not {precision!r}")
    kind = "KIND_GPU" if device == "cuda" else "KIND_CPU"
    return (
        f'name: "{name}"\nbackend: "python"\n'
        + _batched_tensors(max_batch_size, preferred_batch_sizes, max_queue_delay_us)
        + f"instance_group [ {{ kind: {kind}, count: {instances} }} ]\n"
        + _parameters({"device": device, "precision": precision, "intra_op_num_threads": intra_op_threads})
    )


def onnxruntime_config(
    name: str,
    *,
    precision: str = "fp16",
    max_batch_size: int = 32,
    preferred_batch_sizes: Sequence[int] = (8, 16, 32),
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    tensorrt_workspace_bytes: int = 1 << 30,
) -> str:
    """The config.pbtxt text of the ONNX model on Triton's own onnxruntime backend, on GPUs,
    with TensorRT as execution accelerator (NVIDIA's Triton images; not the bundled server here)."""
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be fp16 or fp32, not {precision!r}")
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nbackend: "onnxruntime"\n'
        'default_model_filename: "model.onnx"\n'
        + _batched_tensors(max_batch_size, preferred_batch_sizes, max_queue_delay_us)
        + f"instance_group [ {{ kind: KIND_GPU, count: {instances} }} ]\n"
        + "optimization { execution_accelerators {\n"
        + "  gpu_execution_accelerator : [ {\n"
        + '    name : "tensorrt"\n'
        + f'    parameters {{ key: "precision_mode" value: "{precision.upper()}" }}\n'
        + f'    parameters {{ key: "max_workspace_size_bytes" value: "{tensorrt_workspace_bytes}" }}\n'
        + "  } ]\n"
        + "} }\n"
    )


def _batched_tensors(max_batch_size: int, preferred_batch_sizes: Sequence[int], max_queue_delay_us: int) -> str:
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1 (dynamic batching needs a batch dimension)")
    preferred = sorted({size for size in preferred_batch_sizes if size <= max_batch_size})
    return f"""\
max_batch_size: {max_batch_size}
input [ {{ name: "crops", data_type: TYPE_UINT8, dims: {_dims(CROP_DIMS)} }} ]
output [ {{ name: "embeddings", data_type: TYPE_FP32, dims: {_dims(EMBEDDING_DIMS)} }} ]
dynamic_batching {{
  preferred_batch_size: {_dims(preferred)}
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
"""


def _parameters(values: dict[str, object]) -> str:
    return "".join(
        f'parameters {{ key: "{key}", value: {{ string_value: "{value}" }} }}\n' for key, value in values.items()
    )


def write_model(
    repository: str | Path,
    name: str,
    onnx_model: str | Path | bytes,
    *,
    version: int = 1,
    **config: int | Sequence[int],
) -> Path:
    """Writes (or replaces) one model folder in ``repository`` and returns its path.

    ``onnx_model`` is a path to an .onnx file or its serialized bytes; ``config`` takes
    ``model_config``'s keyword arguments.
    """
    folder = Path(repository) / name
    version_dir = folder / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(model_config(name, **config))
    shutil.copyfile(PYTHON_MODEL, version_dir / "model.py")
    if isinstance(onnx_model, bytes):
        (version_dir / "model.onnx").write_bytes(onnx_model)
    else:
        shutil.copyfile(onnx_model, version_dir / "model.onnx")
    return folder


def _dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(value) for value in values) + " ]"
