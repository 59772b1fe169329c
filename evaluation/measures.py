"""How well faces are told apart: the measures the thresholds are chosen with.

- verification: VAL (share of same-person pairs accepted) at a FAR (share of
  different-person pairs accepted), and the threshold that gives a target FAR;
- search: precision, recall and F1 of a set of found photos;
- identification: top-k accuracy of ranked candidates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float  # accept a pair when its cosine similarity is >= this
    far: float
    val: float


def operating_point(genuine: Sequence[float], impostor: Sequence[float], threshold: float) -> OperatingPoint:
    genuine_scores, impostor_scores = np.asarray(genuine, float), np.asarray(impostor, float)
    if not len(genuine_scores) or not len(impostor_scores):
        raise ValueError("need same-person and different-person pairs")
    return OperatingPoint(
        threshold, float(np.mean(impostor_scores >= threshold)), float(np.mean(genuine_scores >= threshold))
    )


def threshold_at_far(genuine: Sequence[float], impostor: Sequence[float], target_far: float) -> OperatingPoint:
    """The lowest threshold whose FAR is at most ``target_far`` (so VAL is as high as it can be)."""
    if not 0.0 <= target_far < 1.0:
        raise ValueError(f"target FAR must be in [0, 1), got {target_far}")
    impostor_scores = np.sort(np.asarray(impostor, float))[::-1]
    allowed = int(np.floor(target_far * len(impostor_scores)))  # impostor pairs that may pass
    if allowed >= len(impostor_scores):
        threshold = float(impostor_scores[-1])
    else:
        # Just above the first impostor score that must be refused.
        threshold = float(np.nextafter(impostor_scores[allowed], np.inf))
    return operating_point(genuine, impostor, threshold)


@dataclass(frozen=True)
class Retrieval:
    precision: float
    recall: float
    f1: float


def retrieval(found: Iterable[str], relevant: Iterable[str]) -> Retrieval:
    found_set, relevant_set = set(found), set(relevant)
    hits = len(found_set & relevant_set)
    precision = hits / len(found_set) if found_set else 0.0
    recall = hits / len(relevant_set) if relevant_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Retrieval(precision, recall, f1)


def top_k_accuracy(
    ranked: Sequence[Sequence[str]], truth: Sequence[str], ks: Iterable[int] = (1, 5, 10)
) -> dict[int, float]:
    """Share of probes whose true identity is among the first k candidates."""
    if len(ranked) != len(truth) or not truth:
        raise ValueError("one ranked list per probe, and at least one probe")
    return {k: sum(t in list(r)[:k] for r, t in zip(ranked, truth, strict=True)) / len(truth) for k in ks}
