"""Choosing a match threshold for a target false-accept rate, on labelled photos.

Labels come as ``labels.json`` (``{"sets": {SET: {"people": {ID: NAME}, "photos":
{FILE: {"faces": N, "people": [ID, ...]}}}}}``, photos under ``SET/FILE`` beside it)
or as a folder with one subfolder of photos per person (one set; each photo is taken
to show that person alone).

Identities mean something only within their set, so pairs are labelled per found face:

- a face *is* identity X when its photo is labelled with one face, of X, and exactly
  one face was found in it; any other face is unknown, and *could be* any of its
  photo's labelled people, or anyone when the photo has unlabelled faces (or more
  faces were found than labelled);
- same-person (genuine) pairs: two faces of one identity, in two photos of one set;
- different-person (impostor) pairs: two faces of one photo; within a set, two faces
  that cannot be the same identity; and any two faces of different sets, except when
  both could be people the sets name alike (one person may be labelled in two sets).
  Anything else (a group-photo face against a photo of someone who may be in it) is
  not used.

The threshold for a target FAR is the lowest whose measured FAR on the impostor pairs
is at most the target; its FAR is given with a one-sided Clopper-Pearson upper bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import beta

from evaluation.measures import threshold_at_far

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
GENUINE = "genuine"
IMPOSTOR = "impostor"


@dataclass(frozen=True)
class LabelledPhoto:
    set_name: str
    name: str  # file name within the set
    path: Path
    faces: int  # labelled number of visible faces
    people: tuple[str, ...]  # identities labelled in it (ids of its set)
    names: dict[str, str]  # identity -> the name the set gives it (only for sets that name theirs)

    @property
    def key(self) -> str:
        return f"{self.set_name}/{self.name}"

    @property
    def single(self) -> str | None:
        """The identity of a photo labelled with one face, of one person."""
        return self.people[0] if self.faces == 1 and len(self.people) == 1 else None


def load_labels(dataset: Path) -> list[LabelledPhoto]:
    """The labelled photos of a labels file, or of a folder of one subfolder per person."""
    if dataset.is_file():
        return photos_from_labels(json.loads(dataset.read_text()), dataset.parent)
    if dataset.is_dir() and (dataset / "labels.json").is_file():
        return load_labels(dataset / "labels.json")
    if not dataset.is_dir():
        raise FileNotFoundError(f"no labels file or folder: {dataset}")
    photos = []
    for person in sorted(p for p in dataset.iterdir() if p.is_dir()):
        for file in sorted(person.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                name = file.relative_to(dataset).as_posix()
                photos.append(LabelledPhoto(dataset.name, name, file, 1, (person.name,), {}))
    return photos


def photos_from_labels(labels: dict, root: Path) -> list[LabelledPhoto]:
    photos = []
    for set_name, labelled in labels["sets"].items():
        names = dict(labelled.get("people", {}))
        for name, photo in labelled["photos"].items():
            people = tuple(photo.get("people", ()))
            photos.append(LabelledPhoto(set_name, name, root / set_name / name, int(photo["faces"]), people, names))
    return photos


@dataclass(frozen=True)
class FoundFace:
    """A face the pipeline found in a labelled photo, and what the labels say of it."""

    photo: LabelledPhoto
    index: int  # the face's index in its photo
    identity: str | None  # known identity, or None
    could_be: frozenset[str]  # the identities it may be (its identity alone when known)
    anyone: bool  # may also be someone unlabelled

    @property
    def names(self) -> set[str]:
        return {self.photo.names[i] for i in self.could_be if i in self.photo.names}


def found_faces(photo: LabelledPhoto, count: int) -> list[FoundFace]:
    """The ``count`` faces found in ``photo``, labelled as far as the labels allow."""
    identity = photo.single if count == 1 else None
    if identity is not None:
        return [FoundFace(photo, 0, identity, frozenset([identity]), False)]
    anyone = photo.faces > len(photo.people) or count > photo.faces
    return [FoundFace(photo, i, None, frozenset(photo.people), anyone) for i in range(count)]


def pair_kind(a: FoundFace, b: FoundFace) -> str | None:
    """``GENUINE``, ``IMPOSTOR``, or None when the labels cannot tell (or it is one face)."""
    if a.photo.key == b.photo.key:
        return IMPOSTOR if a.index != b.index else None
    if a.photo.set_name != b.photo.set_name:
        return None if a.names & b.names else IMPOSTOR
    if a.identity is not None and a.identity == b.identity:
        return GENUINE
    if a.anyone or b.anyone or a.could_be & b.could_be:
        return None
    return IMPOSTOR


def labelled_pairs(
    scored: Iterable[tuple[FoundFace, FoundFace, float]],
) -> tuple[list[float], list[float]]:
    """The similarities of scored face pairs, as (same-person, different-person) lists."""
    genuine, impostor = [], []
    for a, b, similarity in scored:
        kind = pair_kind(a, b)
        if kind == GENUINE:
            genuine.append(similarity)
        elif kind == IMPOSTOR:
            impostor.append(similarity)
    return genuine, impostor


def far_upper_bound(accepted: int, pairs: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a rate seen as ``accepted`` of ``pairs``."""
    if pairs <= 0 or not 0 <= accepted <= pairs:
        raise ValueError(f"need 0 <= accepted <= pairs and pairs > 0, got {accepted} of {pairs}")
    if accepted == pairs:
        return 1.0
    return float(beta.ppf(confidence, accepted + 1, pairs - accepted))


@dataclass(frozen=True)
class Calibration:
    target_far: float
    threshold: float  # accept a pair when its cosine similarity is >= this
    far: float  # measured on the impostor pairs
    far_upper: float  # one-sided upper confidence bound on the FAR
    confidence: float
    val: float  # share of same-person pairs accepted
    same_person_pairs: int
    different_person_pairs: int
    impostors_accepted: int

    @property
    def l2_distance(self) -> float:
        return math.sqrt(max(0.0, 2.0 - 2.0 * self.threshold))

    def as_dict(self) -> dict:
        return {
            "target_far": self.target_far,
            "threshold": round(self.threshold, 4),
            "l2_distance": round(self.l2_distance, 4),
            "far": round(self.far, 6),
            "far_upper": round(self.far_upper, 6),
            "confidence": self.confidence,
            "val": round(self.val, 4),
            "pairs": {"same_person": self.same_person_pairs, "different_person": self.different_person_pairs},
            "impostors_accepted": self.impostors_accepted,
        }


def calibrate(
    genuine: Sequence[float], impostor: Sequence[float], target_far: float, confidence: float = 0.95
) -> Calibration:
    """The lowest threshold whose FAR on ``impostor`` is at most ``target_far``, rounded up to
    4 decimals (the value stored and served), with its FAR, FAR bound and VAL."""
    chosen = threshold_at_far(genuine, impostor, target_far)
    threshold = math.ceil(chosen.threshold * 10_000) / 10_000
    accepted = sum(s >= threshold for s in impostor)
    return Calibration(
        target_far=target_far,
        threshold=threshold,
        far=accepted / len(impostor),
        far_upper=far_upper_bound(accepted, len(impostor), confidence),
        confidence=confidence,
        val=sum(s >= threshold for s in genuine) / len(genuine),
        same_person_pairs=len(genuine),
        different_person_pairs=len(impostor),
        impostors_accepted=accepted,
    )
