"""Online triplet mining on one batch: pure functions of its distance matrix and labels.

``distances`` is the batch's N x N matrix of embedding distances, ``labels`` its N identity
numbers. Both strategies return three equal-length index tensors (anchors, positives,
negatives) into the batch:

- ``batch_hard``: for every anchor that has a positive, its farthest positive and its closest
  negative (one triplet per anchor);
- ``semi_hard``: for every anchor-positive pair (both orders), the closest negative that is
  farther than the positive but within ``margin`` of it (``d_ap < d_an < d_ap + margin``),
  the negatives that give a loss without being harder than the positive. A pair with no such
  negative falls back to its anchor's closest negative (a hard triplet), so that every pair
  still gives a triplet; ``semi_hard_mask`` tells the two apart.

Anchors without any positive or without any negative in the batch give no triplet.
"""

from __future__ import annotations

import torch

from services.embedder.training.options import MINING


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels.view(-1, 1) == labels.view(1, -1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same  # positives (not oneself), negatives


def batch_hard(distances: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchors, positives, negatives): each anchor's hardest positive and hardest negative."""
    distances = distances.detach()
    positive, negative = _masks(labels)
    usable = positive.any(dim=1) & negative.any(dim=1)
    anchors = torch.nonzero(usable).flatten()
    far_positive = distances.masked_fill(~positive, float("-inf")).argmax(dim=1)
    near_negative = distances.masked_fill(~negative, float("inf")).argmin(dim=1)
    return anchors, far_positive[anchors], near_negative[anchors]


def semi_hard(
    distances: torch.Tensor, labels: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchors, positives, negatives): every anchor-positive pair with its closest semi-hard
    negative, or its anchor's closest negative when it has none (see the module docstring)."""
    anchors, positives, negatives, _ = semi_hard_with_mask(distances, labels, margin)
    return anchors, positives, negatives


def semi_hard_with_mask(
    distances: torch.Tensor, labels: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``semi_hard``'s triplets and, for each, whether its negative is semi-hard (False: the
    fallback to the closest negative)."""
    distances = distances.detach()
    positive, negative = _masks(labels)
    negative = negative & negative.any(dim=1, keepdim=True)  # anchors with no negative drop out below
    pairs = positive & negative.any(dim=1, keepdim=True)
    anchors, positives = torch.nonzero(pairs, as_tuple=True)
    d_ap = distances[anchors, positives].unsqueeze(1)  # pairs x 1
    d_an = distances[anchors]  # pairs x N
    candidate = negative[anchors] & (d_an > d_ap) & (d_an < d_ap + margin)
    semi = candidate.any(dim=1)
    closest_semi = d_an.masked_fill(~candidate, float("inf")).argmin(dim=1)
    closest = d_an.masked_fill(~negative[anchors], float("inf")).argmin(dim=1)
    negatives = torch.where(semi, closest_semi, closest)
    return anchors, positives, negatives, semi


def mine(
    strategy: str, distances: torch.Tensor, labels: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The triplets of ``strategy`` (one of ``MINING``)."""
    if strategy == "batch-hard":
        return batch_hard(distances, labels)
    if strategy == "semi-hard":
        return semi_hard(distances, labels, margin)
    raise ValueError(f"unknown mining {strategy!r} (one of {', '.join(MINING)})")
