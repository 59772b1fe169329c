"""The fine-tuned network as a new version of the served model, in the onnx-python flavour.

``export_version`` wraps the network as the served model (``ServedFaceNet``, the model's
contract: uint8 crops in, unit vectors out), and adds it to a prepared model repository as
``<repo>/onnx-python/<model id>/<next version>/model.onnx`` beside the flavour's model.py,
recorded in the manifest's ``trained`` section (``provisioning.record_trained_version``).
The config is not changed: it serves the pinned ``model_version``. To serve the new version,
set ``model_version`` to it (``FACESEARCH_EMBEDDER_MODEL_VERSION``, or ``model_version`` in
``[embedder]``); the next ``facesearch models prepare`` (or embedder start) writes the config
for it and verifies the fine-tuned file instead of exporting the weights. The onnxruntime-onnx
flavour can serve it too (its file is copied); torch-cuda-python cannot (no TorchScript).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from services.embedder.serving import flavours
from services.embedder.serving.provisioning import TrainedVersion, record_trained_version
from services.embedder.serving.weights.sources import WeightsFile

FLAVOUR = "onnx-python"


def export_version(
    served: nn.Module, repository: Path, base: WeightsFile, training: dict[str, Any] | None = None
) -> TrainedVersion:
    """Writes ``served`` (a ServedFaceNet) as the next version of its model in ``repository``'s
    onnx-python flavour (prepared before) and returns the recorded version."""
    from services.embedder.serving.weights.onnx_export import export_onnx

    flavour = flavours.get(FLAVOUR)

    def write(folder: Path) -> dict[str, str]:
        kinds = {}
        for file in flavour.files:
            if file.source_path is not None:
                shutil.copyfile(file.source_path, folder / file.name)
                kinds[file.name] = ""
            else:
                temporary = folder / f".{file.name}.tmp"
                export_onnx(served, temporary)
                temporary.replace(folder / file.name)
                kinds[file.name] = file.artifact
        return kinds

    return record_trained_version(Path(repository), FLAVOUR, served.model.id, base, write, training or {})
