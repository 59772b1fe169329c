"""A minimal reader of TensorFlow's frozen GraphDef protobuf, without TensorFlow.

Only what weight conversion needs is decoded: each node's name, op, inputs and
simple attributes (strings, numbers, types, shapes and lists of them), and for
``Const`` nodes the tensor (dtype, shape, values) as a numpy array. Everything
else in the file is skipped by wire type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


# TensorFlow DataType enum values -> numpy dtypes (the ones a frozen vision graph uses).
_DTYPES = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    19: np.dtype("<f2"),  # DT_HALF
}
# TensorProto field numbers of the typed value lists, by dtype.
_VALUE_FIELDS = {1: 5, 2: 6, 3: 7, 4: 7, 5: 7, 6: 7, 9: 10, 10: 11, 19: 13}

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_MAX_ELEMENTS = 1 << 30  # no constant of a face model comes near this


@dataclass
class GraphNode:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, object] = field(default_factory=dict)  # e.g. strides, padding, epsilon
    value: np.ndarray | None = None  # the tensor of a Const node


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise WeightsError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WeightsError("varint longer than 10 bytes")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def iter_fields(buf: memoryview, start: int = 0, end: int | None = None):
    """Yields (field number, wire type, value) of one message; length-delimited values
    are memoryview slices, varints ints, fixed-width values raw bytes."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WeightsError(f"field number 0 at byte {pos}")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _BYTES:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise WeightsError(
                    f"field {number} at byte {pos} needs {pos + length - end} bytes more than there are"
                    " (truncated or corrupt)"
                )
            value, pos = buf[pos : pos + length], pos + length
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if pos + size > end:
                raise WeightsError(f"truncated fixed-width field {number}")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise WeightsError(f"unsupported wire type {wire} (field {number}) at byte {pos}")
        yield number, wire, value


def _text(value: memoryview) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WeightsError("string field is not UTF-8") from exc


def _shape(message: memoryview) -> tuple[int, ...]:
    dims = []
    for number, wire, value in iter_fields(message):
        if number == 2 and wire == _BYTES:  # TensorShapeProto.dim
            size = 0
            for dim_number, dim_wire, dim_value in iter_fields(value):
                if dim_number == 1 and dim_wire == _VARINT:
                    size = _signed(dim_value)
            dims.append(size)
    return tuple(dims)


def _packed_varints(value: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(value):
        item, pos = _varint(value, pos, len(value))
        out.append(item)
    return out


def _tensor(message: memoryview) -> np.ndarray:
    dtype_code, shape, content = 0, (), None
    listed: list = []
    for number, wire, value in iter_fields(message):
        if number == 1 and wire == _VARINT:
            dtype_code = value
        elif number == 2 and wire == _BYTES:
            shape = _shape(value)
        elif number == 4 and wire == _BYTES:
            content = bytes(value)
        elif number == _VALUE_FIELDS.get(dtype_code, -1):
            listed.append((wire, value))
    if dtype_code not in _DTYPES:
        raise WeightsError(f"unsupported tensor dtype {dtype_code}")
    dtype = _DTYPES[dtype_code]
    if any(d < 0 for d in shape):
        raise WeightsError(f"constant with unknown shape {shape}")
    count = math.prod(shape)
    if count > _MAX_ELEMENTS:
        raise WeightsError(f"constant of shape {shape} is implausibly large")
    if content is not None:
        if len(content) != count * dtype.itemsize:
            raise WeightsError(
                f"tensor content holds {len(content)} bytes, shape {shape} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(content, dtype=dtype).reshape(shape).copy()
    values = _typed_values(listed, dtype)
    if count == 0:
        return np.zeros(shape, dtype)
    if len(values) == count:
        return values.reshape(shape)
    if len(values) == 1:  # TensorFlow stores a constant fill as one value
        return np.full(shape, values[0], dtype)
    if len(values) == 0:
        return np.zeros(shape, dtype)
    raise WeightsError(f"tensor lists {len(values)} values, shape {shape} needs {count}")


def _typed_values(listed: list, dtype: np.dtype) -> np.ndarray:
    """Values listed field by field (packed or not) instead of as raw tensor content."""
    fixed = dtype.kind == "f" and dtype.itemsize >= 4  # float and double: fixed-width little-endian
    parts = []
    for wire, value in listed:
        if fixed and wire in (_BYTES, _FIXED32, _FIXED64):
            raw = bytes(value)
            if len(raw) % dtype.itemsize:
                raise WeightsError("packed float values have a ragged length")
            parts.append(np.frombuffer(raw, dtype=dtype))
        elif not fixed and wire in (_BYTES, _VARINT):  # ints, bools, half floats (as bit patterns)
            items = [_signed(i) for i in (_packed_varints(value) if wire == _BYTES else [value])]
            if dtype.kind == "f":
                parts.append(np.array(items, np.int64).astype(np.uint16).view(dtype))
            else:
                parts.append(np.array(items, np.int64).astype(dtype))
        else:
            raise WeightsError(f"tensor values of dtype {dtype} stored with wire type {wire}")
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _attr_list(message: memoryview) -> list:
    items: list = []
    for number, wire, value in iter_fields(message):
        if number == 2 and wire == _BYTES:  # s
            items.append(bytes(value).decode("utf-8", "replace"))
        elif number in (3, 6) and wire in (_BYTES, _VARINT):  # i, type: packed or not
            raw = _packed_varints(value) if wire == _BYTES else [value]
            items.extend(_signed(v) for v in raw)
        elif number == 4 and wire in (_BYTES, _FIXED32):  # f
            raw = bytes(value)
            if len(raw) % 4:
                raise WeightsError("packed float attribute has a ragged length")
            items.extend(np.frombuffer(raw, "<f4").tolist())
        elif number == 7 and wire == _BYTES:  # shape
            items.append(_shape(value))
    return items


def _attr(message: memoryview) -> object:
    """The value of one AttrValue, or None for kinds not decoded (functions, placeholders)."""
    for number, wire, value in iter_fields(message):
        if number == 1 and wire == _BYTES:
            return _attr_list(value)
        if number == 2 and wire == _BYTES:
            return bytes(value).decode("utf-8", "replace")
        if number == 3 and wire == _VARINT:
            return _signed(value)
        if number == 4 and wire == _FIXED32:
            return float(np.frombuffer(bytes(value), "<f4")[0])
        if number == 5 and wire == _VARINT:
            return bool(value)
        if number == 6 and wire == _VARINT:
            return value
        if number == 7 and wire == _BYTES:
            return _shape(value)
        if number == 8 and wire == _BYTES:
            return _tensor(value)
    return None


def _node(message: memoryview) -> GraphNode:
    node = GraphNode(name="", op="")
    for number, wire, value in iter_fields(message):
        if wire != _BYTES:
            continue
        if number == 1:
            node.name = _text(value)
        elif number == 2:
            node.op = _text(value)
        elif number == 3:
            node.inputs.append(_text(value))
        elif number == 5:  # attr: map<string, AttrValue>
            key, attr = "", None
            for entry_number, entry_wire, entry_value in iter_fields(value):
                if entry_number == 1 and entry_wire == _BYTES:
                    key = _text(entry_value)
                elif entry_number == 2 and entry_wire == _BYTES:
                    attr = _attr(entry_value)
            node.attrs[key] = attr
    if not node.name or not node.op:
        raise WeightsError("graph node without a name or op")
    if node.op == "Const":
        value = node.attrs.pop("value", None)
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"Const node {node.name} has no tensor value")
        node.value = value
    return node


def parse_graphdef(data: bytes) -> list[GraphNode]:
    """The nodes of a serialized GraphDef, in file order."""
    if not data:
        raise WeightsError("empty graph file")
    buf = memoryview(data)
    nodes = []
    for number, wire, value in iter_fields(buf):
        if number == 1 and wire == _BYTES:  # GraphDef.node
            nodes.append(_node(value))
    if not nodes:
        raise WeightsError("no graph nodes found")
    return nodes


def read_graphdef(path: str | Path) -> list[GraphNode]:
    """The nodes of the frozen graph at ``path``; WeightsError names the file if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"graph file not found: {path}")
    try:
        return parse_graphdef(path.read_bytes())
    except WeightsError as exc:
        raise WeightsError(f"{path}: not a valid TensorFlow GraphDef ({exc})") from None
