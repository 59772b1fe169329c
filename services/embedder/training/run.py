"""``facesearch train`` as a function: crops, split, base network, measures before, training,
measures after, the report (``<out>/report.json``) and, when asked, the export.

The report::

    {"dataset": ..., "model": ..., "config": {...}, "data": {training and held-out counts},
     "resumed_from": checkpoint or null, "steps_done": N,
     "loss": {"first": ..., "last": ..., "first_10_mean": ..., "last_10_mean": ...},
     "before": {measures}, "after": {measures}, "export": {...} or null}

The measures (``evaluate.measure``) are of the held-out identities, with the network in eval
mode and no augmentation; "before" is always the base network, also for a resumed run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.embedder.models import DEFAULT_MODEL, EmbeddingModel
from services.embedder.training.data import load_crops, split_by_identity
from services.embedder.training.evaluate import measure
from services.embedder.training.loop import StepResult, TrainConfig, Training, TrainingError

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"


@dataclass
class TrainingRun:
    """What ``train`` did."""

    training: Training
    report: dict[str, Any]
    report_path: Path


def base_network(model: EmbeddingModel, weights_path: Path | None = None):
    """(network, its weights file): the model's pretrained network."""
    from services.embedder.serving.weights import sources

    try:
        path = sources.locate(model.weights, weights_path)
        if path is None:
            raise TrainingError(f"the {model.weights} weights are not downloaded yet (facesearch models prepare)")
        weights = sources.WeightsFile(model.weights, path.absolute(), sources.file_sha256(path))
        return sources.load_network(weights), weights
    except sources.WeightsSourceError as error:
        raise TrainingError(str(error)) from None


def _loss_summary(history: list[dict[str, float]]) -> dict[str, float]:
    if not history:
        return {}
    losses = np.array([item["loss"] for item in history])
    window = min(10, len(losses))
    return {
        "first": float(losses[0]),
        "last": float(losses[-1]),
        "first_10_mean": float(losses[:window].mean()),
        "last_10_mean": float(losses[-window:].mean()),
    }


def train(
    dataset: Path,
    out: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    held_out: float = 0.25,
    model: EmbeddingModel = DEFAULT_MODEL,
    weights_path: Path | None = None,
    export_repository: Path | None = None,
    progress: Callable[[StepResult], None] = lambda _: None,
) -> TrainingRun:
    """Trains as the module docstring says and writes ``<out>/report.json``; with
    ``export_repository`` (a prepared model repository), exports the trained network there as
    a new version (``export.export_version``), recorded in the report."""
    from services.embedder.serving.weights.onnx_export import ServedFaceNet

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    crops = load_crops(Path(dataset), out, model)
    training_crops, held_out_crops = split_by_identity(crops, held_out, config.seed)
    network, weights = base_network(model, weights_path)
    base_sha = weights.sha256
    served = ServedFaceNet(network, model)
    before = measure(served, held_out_crops) if len(held_out_crops) else None
    try:
        training = Training(served, training_crops, config, out, base_weights=base_sha)
    except ValueError as error:
        raise TrainingError(f"{dataset}: {error}") from None
    resumed_from = training.resume() if resume else None
    training.run(progress)
    report: dict[str, Any] = {
        "dataset": str(dataset),
        "model": model.id,
        "base_weights_sha256": base_sha,
        "config": config.as_dict(),
        "held_out_share": held_out,
        "data": {
            "crops": len(crops),
            "training_crops": len(training_crops),
            "training_identities": len(set(training_crops.identities)),
            "held_out_crops": len(held_out_crops),
            "held_out_identities": sorted(set(held_out_crops.identities)),
        },
        "resumed_from": str(resumed_from) if resumed_from else None,
        "steps_done": training.step_done,
        "loss": _loss_summary(training.history),
        "before": before,
        "after": measure(served, held_out_crops) if len(held_out_crops) else None,
        "export": None,
    }
    if export_repository is not None:
        from services.embedder.serving.provisioning import ProvisioningError
        from services.embedder.training.export import export_version

        summary = {key: report[key] for key in ("dataset", "config", "steps_done", "loss")}
        summary["report"] = str((out / REPORT_NAME).absolute())
        try:
            version = export_version(served, Path(export_repository), weights, summary)
        except ProvisioningError as error:
            raise TrainingError(str(error)) from None
        report["export"] = {"repository": str(Path(export_repository).absolute()), **version.to_json()}
    path = out / REPORT_NAME
    path.write_text(json.dumps(report, indent=2) + "\n")
    return TrainingRun(training, report, path)
