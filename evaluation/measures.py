"""How well faces are told apart: the measures the thresholds are chosen with.

- verification: VAL (share of same-person pairs accepted) at a FAR (share of
  different-person pairs accepted), and the threshold that gives a target FAR;
- search: precision, recall and F1 of a set of found photos;
- the ROC curve, its area, and the accuracy over all pairs at a threshold (and the best);
- identification: top-k accuracy of ranked candidates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


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


@dataclass(frozen=True)
class Roc:
    """The ROC curve: at each distinct score taken as the threshold, from the highest down,
    the FAR and VAL of accepting every pair scoring at or above it (the first point is (0, 0))."""

    thresholds: np.ndarray
    far: np.ndarray
    val: np.ndarray


def _scores(genuine: Sequence[float], impostor: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    genuine_scores, impostor_scores = np.asarray(genuine, float), np.asarray(impostor, float)
    if not len(genuine_scores) or not len(impostor_scores):
        raise ValueError("need same-person and different-person pairs")
    return genuine_scores, impostor_scores


def roc_curve(genuine: Sequence[float], impostor: Sequence[float]) -> Roc:
    genuine_scores, impostor_scores = _scores(genuine, impostor)
    thresholds = np.unique(np.concatenate([genuine_scores, impostor_scores]))[::-1]
    accepted_impostors = len(impostor_scores) - np.searchsorted(np.sort(impostor_scores), thresholds, "left")
    accepted_genuine = len(genuine_scores) - np.searchsorted(np.sort(genuine_scores), thresholds, "left")
    return Roc(
        np.concatenate([[np.inf], thresholds]),
        np.concatenate([[0.0], accepted_impostors / len(impostor_scores)]),
        np.concatenate([[0.0], accepted_genuine / len(genuine_scores)]),
    )


def roc_auc(genuine: Sequence[float], impostor: Sequence[float]) -> float:
    """Area under the ROC curve: the chance that a same-person pair scores above a
    different-person pair (ties count half)."""
    genuine_scores, impostor_scores = _scores(genuine, impostor)
    ranks = rankdata(np.concatenate([genuine_scores, impostor_scores]))  # ties get their mean rank
    n_genuine, n_impostor = len(genuine_scores), len(impostor_scores)
    above = ranks[:n_genuine].sum() - n_genuine * (n_genuine + 1) / 2
    return float(above / (n_genuine * n_impostor))


def accuracy_at(genuine: Sequence[float], impostor: Sequence[float], threshold: float) -> float:
    """Share of all pairs decided right when pairs scoring >= ``threshold`` are accepted."""
    genuine_scores, impostor_scores = _scores(genuine, impostor)
    right = np.sum(genuine_scores >= threshold) + np.sum(impostor_scores < threshold)
    return float(right / (len(genuine_scores) + len(impostor_scores)))


def best_accuracy(genuine: Sequence[float], impostor: Sequence[float]) -> tuple[float, float]:
    """(accuracy, threshold): the highest share of all pairs decided right over every
    threshold, and the lowest threshold that reaches it (midway between two scores)."""
    genuine_scores, impostor_scores = _scores(genuine, impostor)
    scores = np.unique(np.concatenate([genuine_scores, impostor_scores]))
    candidates = np.concatenate([[scores[0]], (scores[:-1] + scores[1:]) / 2, [np.nextafter(scores[-1], np.inf)]])
    genuine_sorted, impostor_sorted = np.sort(genuine_scores), np.sort(impostor_scores)
    right = (len(genuine_sorted) - np.searchsorted(genuine_sorted, candidates, "left")) + np.searchsorted(
        impostor_sorted, candidates, "left"
    )
    best = int(np.argmax(right))
    return float(right[best] / (len(genuine_sorted) + len(impostor_sorted))), float(candidates[best])


@dataclass(frozen=True)
class Spread:
    count: int
    mean: float
    std: float
    min: float
    max: float


def spread(scores: Sequence[float]) -> Spread:
    values = np.asarray(scores, float)
    if not len(values):
        raise ValueError("no scores")
    return Spread(len(values), float(values.mean()), float(values.std()), float(values.min()), float(values.max()))
