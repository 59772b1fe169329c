"""TensorFlow's frozen GraphDef read without TensorFlow.

The protobuf is decoded by the classes generated from
protos/facesearch/tensorflow_graph/graph.proto (TensorFlow's field numbers, only
the fields weight conversion needs); the ``Const`` tensors become numpy arrays.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
from google.protobuf.message import DecodeError

from facesearch.tensorflow_graph.graph_pb2 import DataType, GraphDef, NodeDef, TensorProto


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


# Element type -> numpy dtype and the TensorProto field listing values not given as raw content.
_DTYPES = {
    DataType.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    DataType.DT_INT32: (np.dtype("<i4"), "int_val"),
}
_MAX_ELEMENTS = 1 << 30  # no constant of a face model comes near this


class FrozenGraph(NamedTuple):
    nodes: dict[str, NodeDef]  # every node by name
    consts: dict[str, np.ndarray]  # the tensor of every Const node by name


def tensor_value(tensor: TensorProto) -> np.ndarray:
    """The tensor as a numpy array of its shape."""
    if tensor.dtype not in _DTYPES:
        raise WeightsError(f"unsupported tensor dtype {tensor.dtype}")
    dtype, listed = _DTYPES[tensor.dtype]
    shape = tuple(dim.size for dim in tensor.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise WeightsError(f"constant with unknown shape {shape}")
    count = math.prod(shape)
    if count > _MAX_ELEMENTS:
        raise WeightsError(f"constant of shape {shape} is implausibly large")
    if tensor.tensor_content:
        if len(tensor.tensor_content) != count * dtype.itemsize:
            raise WeightsError(
                f"tensor content holds {len(tensor.tensor_content)} bytes, shape {shape} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(tensor.tensor_content, dtype).reshape(shape).copy()
    values = np.array(getattr(tensor, listed), dtype)
    if values.size == count:
        return values.reshape(shape)
    if values.size <= 1:  # TensorFlow stores a constant fill as one value (or none for zeros)
        return np.full(shape, values[0] if values.size else 0, dtype)
    raise WeightsError(f"tensor lists {values.size} values, shape {shape} needs {count}")


def parse_graphdef(data: bytes) -> FrozenGraph:
    """The nodes and constants of a serialized GraphDef."""
    try:
        graph = GraphDef.FromString(data)
    except DecodeError as exc:
        raise WeightsError(f"truncated or corrupt protobuf: {exc}") from None
    if not graph.node:
        raise WeightsError("no graph nodes found")
    nodes, consts = {}, {}
    for node in graph.node:
        if not node.name or not node.op:
            raise WeightsError("graph node without a name or op")
        nodes[node.name] = node
        if node.op == "Const":
            value = node.attr.get("value")
            if value is None or not value.HasField("tensor"):
                raise WeightsError(f"Const node {node.name} has no tensor value")
            consts[node.name] = tensor_value(value.tensor)
    return FrozenGraph(nodes, consts)


def read_graphdef(path: str | Path) -> FrozenGraph:
    """The frozen graph at ``path``; WeightsError names the file if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"graph file not found: {path}")
    try:
        return parse_graphdef(path.read_bytes())
    except WeightsError as exc:
        raise WeightsError(f"{path}: not a valid TensorFlow GraphDef ({exc})") from None
