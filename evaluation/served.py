"""Measuring the served pipeline through the gateway, with a caller's API key: the
similarities ``facesearch calibrate`` chooses a threshold from, and everything
``facesearch eval`` reports.

Similarities (``measure``): each photo labelled with one person is enrolled as a person
of its own (up to 100 at a time, Identify's top_k limit), then Identify on every photo,
with threshold -1 and top_k the number enrolled, gives the similarity of each of its
faces to each of them: one served vector comparison per pair (the gateway's detector
settings, the model Triton serves, the search service's scores). The people enrolled
are deleted afterwards; so that no other person takes a place among the candidates, the
tenant must have no enrolled people.

FindMe (``find_me``): every photo is indexed into the tenant (its id: SET/FILE), each
identity with 3 or more labelled photos is enrolled from its first one-person photo, and
FindMe by that person at the configured threshold gives the photos scored
(``evaluation.recognition``); the same decisions for people of 1, 2 and 3 references, by
each rule, follow from the similarities. ``evaluate_dataset`` needs a tenant that stores nothing and
deletes every photo and person it adds, also when it fails.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc

from evaluation.calibration import FoundFace, LabelledPhoto, found_faces, labelled_pairs, load_labels
from evaluation.recognition import (
    FindMeTarget,
    findme_scores,
    findme_targets,
    identification,
    several_references,
    verification,
)
from evaluation.recognition import worst_mistakes as mistakes
from facesearch.v1 import facesearch_pb2
from sdk.client import FaceSearchClient, FaceSearchError

MAX_PEOPLE_PER_ROUND = 100  # Identify's largest top_k
FINDME_MIN_PHOTOS = 3


class EvaluationError(ValueError):
    """The labelled photos or the tenant cannot be measured; the message says why."""


def labelled_photos(dataset: Path) -> list[LabelledPhoto]:
    """The labelled photos of ``dataset``; a usage error when there are none or one is missing."""
    try:
        photos = load_labels(dataset)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EvaluationError(f"cannot read the labels of {dataset}: {error!r}") from None
    missing = [str(p.path) for p in photos if not p.path.is_file()]
    if not photos or missing:
        raise EvaluationError(f"no labelled photos in {dataset}" if not photos else f"no such file: {missing[0]}")
    return photos


def measure(
    client: FaceSearchClient, photos: list[LabelledPhoto], progress: Callable[[str], None] = lambda _: None
) -> list[tuple[FoundFace, FoundFace, float]]:
    """(face, reference face, similarity) for every face found in ``photos`` and every face
    of a one-person photo, each unordered pair once, through the gateway."""
    if client.stats().people:
        raise EvaluationError(
            "the tenant has enrolled people; calibrate with the API key of a tenant with none "
            "(e.g. `facesearch keys add calibration`)"
        )
    run = uuid.uuid4().hex[:12]
    candidates = [p for p in photos if p.single is not None]
    if not candidates:
        raise EvaluationError("no photo is labelled with one face of one person")
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


def labelled_scores(
    client: FaceSearchClient, photos: list[LabelledPhoto], progress: Callable[[str], None] = lambda _: None
) -> tuple[list[tuple[FoundFace, FoundFace, float]], list[float], list[float]]:
    """``measure``'s pairs, and their similarities split into same-person and different-person
    ones; an error when either kind is missing."""
    scored = measure(client, photos, progress)
    genuine, impostor = labelled_pairs(scored)
    if not genuine or not impostor:
        raise EvaluationError(f"need same-person and different-person pairs; found {len(genuine)} and {len(impostor)}")
    return scored, genuine, impostor


def _identify(client: FaceSearchClient, photo: LabelledPhoto, people: int) -> list[dict[str, float]]:
    """Per face of the photo: person id -> similarity, for every enrolled person."""
    try:
        reply = client.identify(photo.path, top_k=people, threshold=-1.0)
    except FaceSearchError as error:
        if error.code == grpc.StatusCode.INVALID_ARGUMENT:  # not a usable photo: no faces
            return []
        raise
    return [{c.person_id: c.similarity for c in face.candidates} for face in reply.faces]


def evaluate_dataset(
    client: FaceSearchClient,
    dataset: Path,
    progress: Callable[[str], None] = lambda _: None,
    *,
    keep_pairs: bool = False,
) -> dict:
    """Every measure of the labelled photos of ``dataset``, through the gateway; with
    ``keep_pairs``, also "pairs": the (same-person, different-person) similarities."""
    photos = labelled_photos(dataset)
    stats = client.stats()
    if stats.photos or stats.people:
        raise EvaluationError(
            f"the tenant stores {stats.photos} photos and {stats.people} people; evaluate with the API key of "
            "a tenant that stores nothing (e.g. `facesearch keys add evaluation`)"
        )
    model = stats.settings.model
    threshold = round(float(stats.settings.similarity_threshold), 6)  # served as a 32-bit float
    scored, genuine, impostor = labelled_scores(client, photos, progress)
    faces = {(a.photo.key, a.index) for a, _, _ in scored} | {(b.photo.key, b.index) for _, b, _ in scored}
    targets = findme_targets(photos, FINDME_MIN_PHOTOS)
    progress(f"FindMe: indexing {len(photos)} photos, enrolling {len(targets)} people")
    found = find_me(client, photos, targets)
    result = {
        "model": {"id": model.id, "version": model.version},
        "configured_threshold": threshold,
        "dataset": str(dataset),
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "photos": len(photos),
        "photos_with_faces": len({key for key, _ in faces}),
        "faces": len(faces),
        "verification": verification(genuine, impostor, threshold),
        "identification": identification(scored),
        "findme": {"min_photos": FINDME_MIN_PHOTOS, **findme_scores(targets, found)},
        "several_references": several_references(scored, photos, threshold, min_photos=FINDME_MIN_PHOTOS),
        "worst_mistakes": mistakes(scored),
    }
    if keep_pairs:
        result["pairs"] = (genuine, impostor)
    return result


def find_me(
    client: FaceSearchClient, photos: Sequence[LabelledPhoto], targets: Sequence[FindMeTarget]
) -> dict[str, set[str]]:
    """Person key -> keys of the photos FindMe finds for them at the configured threshold,
    with every photo indexed and each target enrolled (those whose enrolment photo gives no
    usable face are left out); all of it deleted afterwards."""
    run = uuid.uuid4().hex[:12]
    indexed: list[str] = []
    people: list[str] = []
    same_bytes: dict[str, list[str]] = defaultdict(list)  # content hash -> photo keys
    found: dict[str, set[str]] = {}
    try:

        def requests() -> Iterator[facesearch_pb2.Photo]:
            for photo in photos:
                yield facesearch_pb2.Photo(id=photo.key, uri=str(photo.path), content=photo.path.read_bytes())

        stored_as: dict[str, str] = {}  # content hash -> the photo id it is stored under
        for result in client.index(requests()):
            same_bytes[result.content_hash].append(result.photo_id)
            if result.status == facesearch_pb2.PHOTO_STATUS_INDEXED:
                indexed.append(result.photo_id)
                stored_as[result.content_hash] = result.photo_id
        alike = {stored_as[h]: keys for h, keys in same_bytes.items() if h in stored_as}
        for number, target in enumerate(targets):
            person_id = f"evaluation-{run}-{number}"
            reply = client.enroll(target.name or target.person_key, [target.enrolment.path], person_id=person_id)
            if not reply.reference_faces:
                continue  # no usable face in the enrolment photo: the person finds nothing
            people.append(person_id)
            matches = client.find_me_all(person_id=person_id)
            found[target.person_key] = {key for m in matches for key in alike.get(m.photo_id, [m.photo_id])}
    finally:
        for person_id in people:
            client.delete_person(person_id)
        for photo_id in indexed:
            client.delete_photo(photo_id)
    return found
