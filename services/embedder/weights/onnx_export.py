"""The served FaceNet: uint8 aligned crops in, unit 512-d embeddings out, and its ONNX export."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from services.embedder.weights.facenet_casia import CROP_SIZE, PIXEL_MEAN, PIXEL_SCALE

INPUT_NAME = "crops"
OUTPUT_NAME = "embeddings"
ONNX_OPSET = 17


class ServedFaceNet(nn.Module):
    """Takes N x 160 x 160 x 3 uint8 RGB crops (NHWC, as the detector returns them),
    standardises them as the network was trained, and returns N x 512 float32 unit vectors."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.eval()

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        pixels = crops.permute(0, 3, 1, 2).to(torch.float32)
        features = self.network((pixels - PIXEL_MEAN) * PIXEL_SCALE)
        # InceptionResnetV1(classify=False) already returns unit vectors; normalising here keeps
        # the served contract whatever network is wrapped.
        return F.normalize(features, p=2.0, dim=1)


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
