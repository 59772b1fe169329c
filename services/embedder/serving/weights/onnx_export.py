"""The served model: the contract's uint8 aligned crops in, its unit vectors out (for FaceNet:
N x 160 x 160 x 3 in, N x 512 out); its ONNX and TorchScript exports.

Everything about the tensors (names, dtypes, dimensions) and the pixel standardisation comes
from the model contract, ``services.embedder.models``."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from services.embedder.models import DEFAULT_MODEL, EmbeddingModel

ONNX_OPSET = 17


class ServedFaceNet(nn.Module):
    """Takes the contract's crops (for FaceNet: N x 160 x 160 x 3 uint8 RGB, NHWC, as the
    detector returns them), standardises them as ``model.pixels`` says the network was
    trained (one mean for all channels, or one per channel), and returns N x dimension
    float32 unit vectors.

    The pixels are cast to the network's own dtype with ``type_as`` (which a trace records as
    an operation on the weights, where ``.to(torch.float32)`` would be a constant), so a traced
    copy runs in float16 after ``.half()``; the embeddings are normalised in float32 whatever
    the network's precision."""

    def __init__(self, network: nn.Module, model: EmbeddingModel = DEFAULT_MODEL) -> None:
        super().__init__()
        if model.pixels.layout != "HWC":
            raise ValueError(f"{model.id}: pixel layout {model.pixels.layout} is not supported (HWC is)")
        self.network = network.eval()
        self.model = model
        self.scale = model.pixels.scale
        means = model.pixels.channel_means(model.crop.channels)
        if len(set(means)) == 1:
            self.mean = means[0]  # one number for every channel
        else:  # one per channel, broadcast over N x channels x rows x columns
            self.register_buffer("mean", torch.tensor(means, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def example(self) -> torch.Tensor:
        """Two crops of zeros: the input that exports trace with."""
        spec = self.model.input
        return torch.zeros(2, *spec.dims, dtype=getattr(torch, spec.dtype))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        pixels = crops.permute(0, 3, 1, 2).type_as(next(self.network.parameters()))
        features = self.network((pixels - self.mean) * self.scale)
        # InceptionResnetV1(classify=False) already returns unit vectors; normalising here keeps
        # the served contract whatever network is wrapped (and renormalises float16 results).
        return F.normalize(features.float(), p=2.0, dim=1)


def export_onnx(model: nn.Module, path: str | Path) -> Path:
    """Writes ``model`` (the network alone or a ServedFaceNet) as an ONNX file with a dynamic
    batch dimension and the contract's tensors (for FaceNet: input ``crops`` uint8
    N x 160 x 160 x 3, output ``embeddings`` float32 N x 512)."""
    served = model if isinstance(model, ServedFaceNet) else ServedFaceNet(model)
    served.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs, outputs = served.model.input.name, served.model.output.name
    with torch.no_grad():
        torch.onnx.export(
            served,
            (served.example(),),
            str(path),
            input_names=[inputs],
            output_names=[outputs],
            dynamic_axes={inputs: {0: "batch"}, outputs: {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Writes ``model`` (the network alone or a ServedFaceNet) as a TorchScript file traced on the
    CPU in float32: input the contract's crops (any N), output float32 unit vectors.

    ``torch.jit.load(path, map_location=device)`` then ``.half()`` gives the float16 model."""
    served = model if isinstance(model, ServedFaceNet) else ServedFaceNet(model)
    served.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in torch 2.x but is what a python-backend model loads simply.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
        # check_trace would run the model twice more (~10 s) for a check that the tests make.
        traced = torch.jit.trace(served, (served.example(),), check_trace=False)
    traced.save(str(path))
    return path
