"""The triplet loss on unit vectors: ``max(0, d(a, p) - d(a, n) + margin)``, averaged over the
mined triplets, with ``d`` the Euclidean distance between L2-normalised embeddings (0 to 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPSILON = 1e-12  # keeps the square root's gradient finite at distance 0


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """N x N Euclidean distances between the rows of ``embeddings`` (unit vectors after
    normalising them here)."""
    unit = F.normalize(embeddings, p=2.0, dim=1)
    squared = (2.0 - 2.0 * unit @ unit.T).clamp(min=0.0)
    return torch.sqrt(squared + _EPSILON) * (1 - torch.eye(len(unit), device=unit.device, dtype=unit.dtype))


def triplet_loss(
    distances: torch.Tensor,
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    margin: float,
) -> tuple[torch.Tensor, float]:
    """The mean triplet loss over the triplets, and the fraction of them with a positive loss.
    No triplet: a zero loss (still attached to ``distances``' graph)."""
    if len(anchors) == 0:
        return distances.sum() * 0.0, 0.0
    losses = F.relu(distances[anchors, positives] - distances[anchors, negatives] + margin)
    return losses.mean(), float((losses > 0).float().mean())
