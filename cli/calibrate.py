"""The ``calibrate`` verb: the match threshold for a target FAR, measured through the
running gateway on labelled photos, and stored for the gateway to use from its next start.

Every similarity comes from the served pipeline (the gateway's detector settings, the
model Triton serves, the search service's scores), one vector comparison per pair:
each photo labelled with one person is enrolled as a person of its own (up to 100 at
a time, Identify's top_k limit), then Identify on every photo, with threshold -1 and
top_k the number enrolled, gives the similarity of each of its faces to each of them.
The people enrolled are deleted afterwards; nothing else is stored. So that no other
person takes a place among the candidates, the tenant must have no enrolled people.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc

from cli.archive import UsageError
from cli.exit_status import EXIT_OK
from evaluation.calibration import (
    Calibration,
    FoundFace,
    LabelledPhoto,
    calibrate,
    found_faces,
    labelled_pairs,
    load_labels,
)
from facesearch.v1 import facesearch_pb2
from sdk.client import FaceSearchClient, FaceSearchError

MAX_PEOPLE_PER_ROUND = 100  # Identify's largest top_k


def measure(
    client: FaceSearchClient, photos: list[LabelledPhoto], progress: Callable[[str], None] = lambda _: None
) -> list[tuple[FoundFace, FoundFace, float]]:
    """(face, reference face, similarity) for every face found in ``photos`` and every face
    of a one-person photo, each unordered pair once, through the gateway."""
    if client.stats().people:
        raise UsageError(
            "the tenant has enrolled people; calibrate with the API key of a tenant with none "
            "(e.g. `facesearch keys add calibration`)"
        )
    run = uuid.uuid4().hex[:12]
    candidates = [p for p in photos if p.single is not None]
    if not candidates:
        raise UsageError("no photo is labelled with one face of one person")
    faces: dict[str, list[FoundFace]] = {}
    scores: dict[tuple[str, str], list[dict[str, float]]] = {}  # photo key, person id -> per face
    enrolled: dict[str, LabelledPhoto] = {}
    for start in range(0, len(candidates), MAX_PEOPLE_PER_ROUND):
        chunk = candidates[start : start + MAX_PEOPLE_PER_ROUND]
        people = {}
        try:
            for number, photo in enumerate(chunk, start):
                person_id = f"calibration-{run}-{number}"
                reply = client.enroll(photo.key, [photo.path], person_id=person_id)
                if reply.reference_faces:
                    people[person_id] = photo
                [result] = reply.results
                if result.status == facesearch_pb2.PHOTO_STATUS_ENROLLED and result.faces_found == 1:
                    enrolled[person_id] = photo
            progress(f"enrolled {len(people)} reference photos; identifying {len(photos)} photos")
            for photo in photos if people else []:
                similarities = _identify(client, photo, len(people))
                faces.setdefault(photo.key, found_faces(photo, len(similarities)))
                for person_id in people:
                    scores[(photo.key, person_id)] = [s.get(person_id) for s in similarities]
        finally:
            for person_id in people:
                client.delete_person(person_id)
    pairs: dict[frozenset, tuple[FoundFace, FoundFace, float]] = {}
    for (photo_key, person_id), per_face in scores.items():
        reference = enrolled.get(person_id)
        if reference is None or reference.key == photo_key or len(faces[reference.key]) != 1:
            continue
        reference_face = faces[reference.key][0]
        for face, similarity in zip(faces[photo_key], per_face, strict=True):
            if similarity is not None:
                pair = frozenset([(photo_key, face.index), (reference.key, 0)])
                pairs.setdefault(pair, (face, reference_face, similarity))
    return list(pairs.values())


def _identify(client: FaceSearchClient, photo: LabelledPhoto, people: int) -> list[dict[str, float]]:
    """Per face of the photo: person id -> similarity, for every enrolled person."""
    try:
        reply = client.identify(photo.path, top_k=people, threshold=-1.0)
    except FaceSearchError as error:
        if error.code == grpc.StatusCode.INVALID_ARGUMENT:  # not a usable photo: no faces
            return []
        raise
    return [{c.person_id: c.similarity for c in face.candidates} for face in reply.faces]


def store_threshold(path: Path, model_id: str, result: Calibration, dataset: Path) -> None:
    """Writes (or replaces) the model's entry of the thresholds file the gateway reads at start."""
    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored.setdefault("models", {})[model_id] = {
        **result.as_dict(),
        "dataset": str(dataset),
        "calibrated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(stored, indent=2) + "\n")
    os.replace(temporary, path)


def labelled_photos(dataset: Path) -> list[LabelledPhoto]:
    """The labelled photos of ``dataset``; a usage error when there are none or one is missing."""
    try:
        photos = load_labels(dataset)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"cannot read the labels of {dataset}: {error!r}") from None
    missing = [str(p.path) for p in photos if not p.path.is_file()]
    if not photos or missing:
        raise UsageError(f"no labelled photos in {dataset}" if not photos else f"no such file: {missing[0]}")
    return photos


def calibrate_threshold(client: FaceSearchClient, args: argparse.Namespace) -> int:
    photos = labelled_photos(args.dataset)
    if not 0 < args.far < 1:
        raise UsageError(f"--far must be in (0, 1), got {args.far}")
    model_id = client.stats().settings.model.id
    scored = measure(client, photos, lambda line: print(line, file=sys.stderr))
    genuine, impostor = labelled_pairs(scored)
    if not genuine or not impostor:
        raise UsageError(f"need same-person and different-person pairs; found {len(genuine)} and {len(impostor)}")
    result = calibrate(genuine, impostor, args.far)
    print(
        f"model {model_id}: threshold {result.threshold:.4f} (L2 {result.l2_distance:.3f}) for FAR <= {args.far:g}\n"
        f"  FAR {result.far:.5f} ({result.impostors_accepted} of {result.different_person_pairs} different-person "
        f"pairs), {result.confidence:.0%} upper bound {result.far_upper:.5f}\n"
        f"  VAL {result.val:.3f} on {result.same_person_pairs} same-person pairs"
    )
    store_threshold(args.thresholds_file, model_id, result, args.dataset)
    print(f"stored in {args.thresholds_file}; the gateway uses it from its next start")
    return EXIT_OK
