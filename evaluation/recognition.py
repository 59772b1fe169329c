"""How well the served pipeline recognises the people of labelled photos: verification
over every labelled pair, leave-one-out identification, and FindMe precision and recall.

All of it works on what ``evaluation.calibration`` defines: found faces labelled as far
as the labels allow, scored pairs of them, and the pair kinds; nothing here calls a
service.

- verification: ROC curve and its area, accuracy over all pairs (the best and at a given
  threshold), VAL at given FARs, and the spread of same- and different-person scores;
- identification: every face known to be one identity, among the reference faces
  (one-person photos) it was scored against, is ranked against the others; a probe counts
  when its identity has another reference face; candidates the labels cannot tell apart
  from the probe (one name in two sets) are left out;
- FindMe: each identity with at least ``min_photos`` labelled photos is enrolled from its
  first one-person photo; the photos found for it, other than that one, are scored against
  the photos labelled with it. Photos of other sets naming someone alike are not counted
  either way.
- several references: the same FindMe decisions for people enrolled from their first 1, 2
  and 3 one-person photos, by each rule a person of several references could be matched by
  (``REFERENCE_RULES``), worked out from the scored pairs alone: the similarity of a face to
  the unit mean of reference vectors r_i is sum_i s_i / |sum_i r_i|, where
  |sum_i r_i|^2 = n + 2 sum_{i<j} r_i . r_j, and every such similarity is a scored pair.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.calibration import GENUINE, IMPOSTOR, FoundFace, LabelledPhoto, pair_kind
from evaluation.measures import (
    Retrieval,
    accuracy_at,
    best_accuracy,
    retrieval,
    roc_auc,
    roc_curve,
    spread,
    threshold_at_far,
    top_k_accuracy,
)

Scored = tuple[FoundFace, FoundFace, float]
VAL_FARS = (1e-2, 1e-3)
TOP_K = (1, 5, 10)
HISTOGRAM_BINS = 40


def _spread(scores: Sequence[float]) -> dict:
    s = spread(scores)
    return {"count": s.count, "mean": s.mean, "std": s.std, "min": s.min, "max": s.max}


def roc_steps(genuine: Sequence[float], impostor: Sequence[float]) -> list[tuple[float, float]]:
    """The ROC curve's corners, (FAR, VAL), enough to draw it exactly as a step line: the
    points just before and at each rise of VAL, and (1, 1)."""
    roc = roc_curve(genuine, impostor)
    rises = np.flatnonzero(np.diff(roc.val) > 0) + 1
    keep = sorted({0, len(roc.val) - 1, *rises.tolist(), *(rises - 1).tolist()})
    return [(float(roc.far[i]), float(roc.val[i])) for i in keep]


def histograms(genuine: Sequence[float], impostor: Sequence[float], bins: int = HISTOGRAM_BINS) -> dict:
    """Counts of same- and different-person scores in the same ``bins`` bins."""
    both = np.concatenate([np.asarray(genuine, float), np.asarray(impostor, float)])
    edges = np.linspace(float(both.min()), float(both.max()), bins + 1)
    return {
        "edges": edges.tolist(),
        "same_person": np.histogram(genuine, edges)[0].tolist(),
        "different_person": np.histogram(impostor, edges)[0].tolist(),
    }


def verification(genuine: Sequence[float], impostor: Sequence[float], threshold: float) -> dict:
    """The verification measures of the scored pairs, ``threshold`` being the configured one."""
    accuracy, best_threshold = best_accuracy(genuine, impostor)
    at_far = []
    for far in VAL_FARS:
        point = threshold_at_far(genuine, impostor, far)
        at_far.append({"target_far": far, "threshold": point.threshold, "far": point.far, "val": point.val})
    return {
        "pairs": {"same_person": len(genuine), "different_person": len(impostor)},
        "roc_auc": roc_auc(genuine, impostor),
        "best_accuracy": {"accuracy": accuracy, "threshold": best_threshold},
        "at_threshold": {
            "threshold": threshold,
            "accuracy": accuracy_at(genuine, impostor, threshold),
            "far": float(np.mean(np.asarray(impostor) >= threshold)),
            "val": float(np.mean(np.asarray(genuine) >= threshold)),
        },
        "val_at_far": at_far,
        "same_person_similarity": _spread(genuine),
        "different_person_similarity": _spread(impostor),
        "roc": roc_steps(genuine, impostor),
        "histograms": histograms(genuine, impostor),
    }


def _identity(face: FoundFace) -> tuple[str, str]:
    return (face.photo.set_name, face.identity)


def leave_one_out(scored: Iterable[Scored]) -> tuple[list[list[tuple[str, str]]], list[tuple[str, str]]]:
    """(ranked identities per probe, each probe's identity): every reference face of a known
    identity ranked against the other reference faces it was scored with, best first."""
    references = {(b.photo.key, b.index): b for _, b, _ in scored if b.identity is not None}
    against: dict[tuple[str, int], list[tuple[float, tuple[str, str]]]] = defaultdict(list)
    for a, b, similarity in scored:
        ka, kb = (a.photo.key, a.index), (b.photo.key, b.index)
        if ka not in references or kb not in references or pair_kind(a, b) not in (GENUINE, IMPOSTOR):
            continue
        against[ka].append((similarity, _identity(b)))
        against[kb].append((similarity, _identity(a)))
    ranked, truth = [], []
    for key, candidates in against.items():
        probe = _identity(references[key])
        if probe not in {identity for _, identity in candidates}:
            continue  # no other reference face of this identity
        order: list[tuple[str, str]] = []
        for _, identity in sorted(candidates, key=lambda c: -c[0]):
            if identity not in order:
                order.append(identity)
        ranked.append(order)
        truth.append(probe)
    return ranked, truth


def identification(scored: Sequence[Scored], ks: Iterable[int] = TOP_K) -> dict:
    ranked, truth = leave_one_out(scored)
    if not truth:
        return {"probes": 0, "top_k": {}}
    return {"probes": len(truth), "top_k": {str(k): v for k, v in top_k_accuracy(ranked, truth, ks).items()}}


@dataclass(frozen=True)
class FindMeTarget:
    set_name: str
    identity: str
    name: str
    enrolment: LabelledPhoto  # the one-person photo the person is enrolled from
    relevant: frozenset[str]  # keys of the other photos labelled with the person
    ignored: frozenset[str]  # photos of other sets naming someone alike: not counted

    @property
    def person_key(self) -> str:
        return f"{self.set_name}/{self.identity}"


def findme_targets(photos: Sequence[LabelledPhoto], min_photos: int = 3) -> list[FindMeTarget]:
    """The identities with at least ``min_photos`` labelled photos, one of them a one-person photo."""
    labelled: dict[tuple[str, str], list[LabelledPhoto]] = defaultdict(list)
    for photo in photos:
        for identity in photo.people:
            labelled[(photo.set_name, identity)].append(photo)
    targets = []
    for (set_name, identity), of_them in labelled.items():
        singles = [p for p in of_them if p.single == identity]
        if len(of_them) < min_photos or not singles:
            continue
        enrolment = singles[0]
        name = enrolment.names.get(identity, "")
        ignored = {
            p.key for p in photos if name and p.set_name != set_name and any(p.names.get(i) == name for i in p.people)
        }
        relevant = {p.key for p in of_them} - {enrolment.key}
        targets.append(FindMeTarget(set_name, identity, name, enrolment, frozenset(relevant), frozenset(ignored)))
    return targets


def findme_scores(targets: Sequence[FindMeTarget], found: Mapping[str, Iterable[str]]) -> dict:
    """Precision, recall and F1 per person (``found``: person key -> photo keys FindMe gave;
    a person missing from it could not be enrolled and found nothing) and overall, over
    every (person, photo) decision together."""
    people, all_found, all_relevant = {}, set(), set()
    for target in targets:
        kept = set(found.get(target.person_key, ())) - {target.enrolment.key} - target.ignored
        result = retrieval(kept, target.relevant)
        people[target.person_key] = {
            **_retrieval_dict(result),
            "found": len(kept),
            "relevant": len(target.relevant),
            "hits": len(kept & target.relevant),
            "enrolled_from": target.enrolment.key,
            "enrolled": target.person_key in found,
        }
        all_found |= {(target.person_key, k) for k in kept}
        all_relevant |= {(target.person_key, k) for k in target.relevant}
    return {"people": people, "overall": _retrieval_dict(retrieval(all_found, all_relevant))}


def _retrieval_dict(result: Retrieval) -> dict:
    return {"precision": result.precision, "recall": result.recall, "f1": result.f1}


def _face(face: FoundFace) -> dict:
    return {"photo": face.photo.key, "face": face.index, "path": str(face.photo.path)}


def worst_mistakes(scored: Iterable[Scored], count: int = 8) -> dict:
    """The highest-scoring different-person pairs and the lowest-scoring same-person pairs."""
    genuine, impostor = [], []
    for a, b, similarity in scored:
        kind = pair_kind(a, b)
        if kind == GENUINE:
            genuine.append((similarity, a, b))
        elif kind == IMPOSTOR:
            impostor.append((similarity, a, b))

    def described(pairs):
        return [{"similarity": s, "a": _face(a), "b": _face(b)} for s, a, b in pairs]

    return {
        "different_person": described(sorted(impostor, key=lambda p: -p[0])[:count]),
        "same_person": described(sorted(genuine, key=lambda p: p[0])[:count]),
    }


# How a face is compared with a person of several reference faces (s_i: its similarities to them).
MEAN_SIMILARITY = "mean similarity"  # mean s_i: what the gateway does
BEST_REFERENCE = "best reference"  # max s_i: a match with any one reference
MEAN_FACE = "mean face"  # to the unit mean of the references' vectors
REFERENCE_RULES = (MEAN_SIMILARITY, BEST_REFERENCE, MEAN_FACE)
REFERENCE_COUNTS = (1, 2, 3)


def _face_key(face: FoundFace) -> tuple[str, int]:
    return (face.photo.key, face.index)


def rule_similarity(rule: str, to_references: Sequence[float], among_references: Sequence[float]) -> float:
    """The similarity of a face to a person by ``rule``: ``to_references`` are its similarities
    to the person's n reference faces, ``among_references`` those of the n (n - 1) / 2 pairs of
    reference faces (only the mean face needs them)."""
    if rule == BEST_REFERENCE:
        return max(to_references)
    if rule == MEAN_SIMILARITY:
        return sum(to_references) / len(to_references)
    if rule == MEAN_FACE:
        norm = math.sqrt(max(len(to_references) + 2 * sum(among_references), 1e-12))
        return sum(to_references) / norm
    raise ValueError(f"unknown rule {rule!r} (one of {', '.join(REFERENCE_RULES)})")


def several_references(
    scored: Sequence[Scored],
    photos: Sequence[LabelledPhoto],
    threshold: float,
    counts: Iterable[int] = REFERENCE_COUNTS,
    min_photos: int = 3,
) -> dict:
    """FindMe precision, recall and F1 at ``threshold`` for people enrolled from 1, 2, 3 ...
    one-person photos, by each rule of ``REFERENCE_RULES``. For n references, the people are the
    identities with at least n one-person photos whose face was scored, and at least
    ``min_photos`` - 1 other labelled photos; a photo is found when one of its faces is."""
    similarity: dict[frozenset, float] = {}
    faces_of: dict[str, list[FoundFace]] = defaultdict(list)
    for a, b, s in scored:
        similarity[frozenset([_face_key(a), _face_key(b)])] = s
        for face in (a, b):
            if face not in faces_of[face.photo.key]:
                faces_of[face.photo.key].append(face)
    labelled: dict[tuple[str, str], list[LabelledPhoto]] = defaultdict(list)
    for photo in photos:
        for identity in photo.people:
            labelled[(photo.set_name, identity)].append(photo)
    results = {}
    for n in counts:
        decisions: dict[str, tuple[set, set]] = {rule: (set(), set()) for rule in REFERENCE_RULES}  # found, relevant
        people = 0
        for (set_name, identity), of_them in labelled.items():
            singles = [p for p in of_them if [f.identity for f in faces_of.get(p.key, [])] == [identity]]
            if len(singles) < n or len(of_them) - n < min_photos - 1:
                continue
            references = [faces_of[p.key][0] for p in singles[:n]]
            enrolment = {p.key for p in singles[:n]}
            name = singles[0].names.get(identity, "")
            ignored = {
                p.key
                for p in photos
                if name and p.set_name != set_name and any(p.names.get(i) == name for i in p.people)
            }
            among = [
                similarity[frozenset([_face_key(a), _face_key(b)])]
                for i, a in enumerate(references)
                for b in references[i + 1 :]
            ]
            relevant = {(identity, set_name, p.key) for p in of_them if p.key not in enrolment}
            people += 1
            for photo_key, faces in faces_of.items():
                if photo_key in enrolment or photo_key in ignored:
                    continue
                for face in faces:
                    to_references = [similarity.get(frozenset([_face_key(face), _face_key(r)])) for r in references]
                    if None in to_references:
                        continue
                    for rule in REFERENCE_RULES:
                        if rule_similarity(rule, to_references, among) >= threshold:
                            decisions[rule][0].add((identity, set_name, photo_key))
            for rule in REFERENCE_RULES:
                decisions[rule][1].update(relevant)
        results[str(n)] = {
            "people": people,
            "rules": {rule: _retrieval_dict(retrieval(*decided)) for rule, decided in decisions.items()},
        }
    return {"threshold": threshold, "references": results}
