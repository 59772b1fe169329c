"""How well a network tells held-out identities apart: every pair of held-out crops, genuine
when both are of one identity, impostor otherwise, scored by cosine similarity; the measures
are ``evaluation.measures``' VAL at a few FARs, with the ROC's area and the mean scores.

Identities are told apart by ``set/identity``: two sets that label one person differently
would count some genuine pairs as impostors, so the figures are a lower bound then."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from evaluation.measures import roc_auc, threshold_at_far
from services.embedder.training.data import FaceCrops

FARS = (0.001, 0.01, 0.1)


@torch.no_grad()
def embed(served: torch.nn.Module, crops: np.ndarray, batch: int = 16) -> np.ndarray:
    """The unit vectors of ``crops`` (uint8 N x rows x columns x 3) through ``served`` (a
    ServedFaceNet), in eval mode, without augmentation."""
    was_training = served.training
    served.eval()
    try:
        out = [served(torch.from_numpy(crops[i : i + batch]).float()) for i in range(0, len(crops), batch)]
    finally:
        served.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def pair_scores(vectors: np.ndarray, identities: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) cosine similarities of every unordered pair."""
    similarity = vectors @ vectors.T
    rows, columns = np.triu_indices(len(identities), k=1)
    labels = np.array(identities)
    same = labels[rows] == labels[columns]
    scores = similarity[rows, columns]
    return scores[same], scores[~same]


def measure(served: torch.nn.Module, held_out: FaceCrops) -> dict[str, Any]:
    """The measures of ``served`` on the held-out crops (see the module docstring)."""
    genuine, impostor = pair_scores(embed(served, held_out.crops), held_out.identities)
    result: dict[str, Any] = {
        "identities": len(set(held_out.identities)),
        "crops": len(held_out),
        "genuine_pairs": len(genuine),
        "impostor_pairs": len(impostor),
    }
    if not len(genuine) or not len(impostor):
        return result
    result["roc_auc"] = roc_auc(genuine, impostor)
    result["mean_genuine"] = float(genuine.mean())
    result["mean_impostor"] = float(impostor.mean())
    result["val_at_far"] = {}
    for far in FARS:
        point = threshold_at_far(genuine, impostor, far)
        result["val_at_far"][str(far)] = {"threshold": point.threshold, "far": point.far, "val": point.val}
    return result
