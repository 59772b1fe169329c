"""The served FaceNet: uint8 aligned crops in, unit 512-d embeddings out; its ONNX and TorchScript exports."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from services.embedder.serving.weights.facenet_casia import CROP_SIZE, PIXEL_MEAN, PIXEL_SCALE

INPUT_NAME = "crops"
OUTPUT_NAME = "embeddings"
ONNX_OPSET = 17


class ServedFaceNet(nn.Module):
    """Takes N x 160 x 160 x 3 uint8 RGB crops (NHWC, as the detector returns them),
    standardises them as the network was trained, and returns N x 512 float32 unit vectors.

    The pixels are cast to the network's own dtype with ``type_as`` (which a trace records as
    an operation on the weights, where ``.to(torch.float32)`` would be a constant), so a traced
    copy runs in float16 after ``.half()``; the embeddings are normalised in float32 whatever
    the network's precision."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.eval()

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        pixels = crops.permute(0, 3, 1, 2).type_as(next(self.network.parameters()))
        features = self.network((pixels - PIXEL_MEAN) * PIXEL_SCALE)
        # InceptionResnetV1(classify=False) already returns unit vectors; normalising here keeps
        # the served contract whatever network is wrapped (and renormalises float16 results).
        return F.normalize(features.float(), p=2.0, dim=1)


def export_onnx(model: nn.Module, path: str | Path) -> Path:
    """Writes ``model`` (the network alone or a ServedFaceNet) as an ONNX file with a dynamic
    batch dimension: input ``crops`` uint8 N x 160 x 160 x 3, output ``embeddings`` float32 N x 512."""
    served = model if isinstance(model, ServedFaceNet) else ServedFaceNet(model)
    served.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, CROP_SIZE, CROP_SIZE, 3, dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            served,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Writes ``model`` (the network alone or a ServedFaceNet) as a TorchScript file traced on the
    CPU in float32: input uint8 N x 160 x 160 x 3 (any N), output float32 N x 512 unit vectors.

    ``torch.jit.load(path, map_location=device)`` then ``.half()`` gives the float16 model."""
    served = model if isinstance(model, ServedFaceNet) else ServedFaceNet(model)
    served.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, CROP_SIZE, CROP_SIZE, 3, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in torch 2.x but is what a python-backend model loads simply.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
        # check_trace would run the model twice more (~10 s) for a check that the tests make.
        traced = torch.jit.trace(served, (example,), check_trace=False)
    traced.save(str(path))
    return path
