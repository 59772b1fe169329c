"""Writing Triton model repositories for the embedder.

One model folder is::

    <repo>/<model_name>/config.pbtxt
    <repo>/<model_name>/<version>/model.py     (triton_models/onnx_python/model.py)
    <repo>/<model_name>/<version>/model.onnx

served by Triton's ``python`` backend, which runs the ONNX model with ONNX Runtime
on the CPU (see model.py for the tensor contract).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

PYTHON_MODEL = Path(__file__).resolve().parent / "triton_models" / "onnx_python" / "model.py"

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
    """The config.pbtxt text of an embedding model on the python backend."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1 (dynamic batching needs a batch dimension)")
    preferred = sorted({size for size in preferred_batch_sizes if size <= max_batch_size})
    return f"""\
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "crops", data_type: TYPE_UINT8, dims: {_dims(CROP_DIMS)} }} ]
output [ {{ name: "embeddings", data_type: TYPE_FP32, dims: {_dims(EMBEDDING_DIMS)} }} ]
dynamic_batching {{
  preferred_batch_size: {_dims(preferred)}
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [ {{ kind: KIND_CPU, count: {instances} }} ]
parameters {{ key: "intra_op_num_threads", value: {{ string_value: "{intra_op_threads}" }} }}
"""


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
