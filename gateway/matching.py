"""Verify, Identify and FindMe: comparing faces by cosine similarity of unit vectors.

A match is a similarity at or above the model's threshold (configured per model, or
given per call); every answer says which model and threshold it used.

A person known by several faces (their enrolled references, or the reference photos of
one FindMe call) is compared by the mean of a face's similarities to all of them
(``References``): a stranger must look like the person in every reference, not in one,
so the threshold calibrated for single pairs keeps its false-accept rate however many
references a person has, where a match with any one reference lets in about as many
times more strangers as there are references. The price is a little recall; both are
measured in docs/evaluation.md, "Several references".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facesearch.v1 import common_pb2, facesearch_pb2, search_pb2
from gateway import paging
from gateway.analysis import AnalysedPhoto, FoundFace, PhotoInput, clearest_face
from gateway.dependencies import Dependencies, distance
from gateway.errors import GatewayError, invalid, not_found, shown
from gateway.people import People, check_person_id
from services.runtime.deadlines import Deadline
from services.runtime.page_tokens import PageTokens, query_fingerprint

GALLERY = search_pb2.FACE_SOURCE_GALLERY
ENROLLMENT = search_pb2.FACE_SOURCE_ENROLLMENT
REFERENCES_PER_PERSON = 10  # reference faces one person may hold in a top-k list
CANDIDATES_PER_FACE = 2  # candidate people per requested answer of one face


@dataclass(frozen=True)
class References:
    """One person's reference faces. A face's similarity to the person is the mean of its
    similarities to the references, which is its dot product with their mean vector: one
    nearest-neighbour query along that mean finds the faces of any similarity."""

    mean: np.ndarray  # the mean of the references' unit vectors (its norm is at most 1)
    norm: float

    @classmethod
    def of(cls, vectors: list[np.ndarray]) -> References:
        mean = np.mean(np.asarray(vectors, dtype=np.float32), axis=0)
        norm = float(np.linalg.norm(mean))
        if norm < 1e-6:
            raise invalid("the reference faces cancel out: they cannot all show one person")
        return cls(mean, norm)

    @property
    def direction(self) -> np.ndarray:
        """The unit vector along the mean: the nearest-neighbour query."""
        return self.mean / self.norm

    def similarity(self, vector: np.ndarray) -> float:
        return float(np.clip(vector @ self.mean, -1.0, 1.0))

    def query_threshold(self, threshold: float) -> float:
        """The cosine to ``direction`` of a face whose similarity is ``threshold`` (above 1:
        no face can reach it)."""
        return max(-1.0, threshold / self.norm)

    def from_query(self, cosine: float) -> float:
        """The similarity of a face at this cosine to ``direction``."""
        return float(np.clip(cosine * self.norm, -1.0, 1.0))


@dataclass
class Verdict:
    similarity: float
    distance: float
    same_person: bool
    face_a: common_pb2.Face
    face_b: common_pb2.Face


class Matcher:
    def __init__(self, deps: Dependencies, people: People) -> None:
        self.deps = deps
        self.people = people
        self.tokens = PageTokens("FindMe", deps.settings.page_key())

    async def _reference_faces(self, photos: list[PhotoInput], deadline: Deadline, names: list[str]) -> list[FoundFace]:
        """The clearest face of each photo; a photo without one is the caller's mistake."""
        analysed = await self.deps.analyser.analyse(photos, deadline)
        faces = []
        for name, photo in zip(names, analysed, strict=True):
            faces.append(self._clearest(photo, name))
        return faces

    def _clearest(self, photo: AnalysedPhoto, name: str) -> FoundFace:
        if photo.error is not None:
            code, message = photo.error
            raise GatewayError(code, f"{name}: {message}")
        face = clearest_face(photo.faces, self.deps.settings.min_face_size)
        if face is None:
            found = (
                f"{len(photo.faces)} face(s), none of at least {self.deps.settings.min_face_size} px"
                if photo.faces
                else "no face"
            )
            raise invalid(f"{name}: {found} found")
        return face

    async def verify(self, a: PhotoInput, b: PhotoInput, threshold: float, deadline: Deadline) -> Verdict:
        face_a, face_b = await self._reference_faces([a, b], deadline, ["photo a", "photo b"])
        similarity = float(np.clip(face_a.vector @ face_b.vector, -1.0, 1.0))
        return Verdict(similarity, distance(similarity), similarity >= threshold, face_a.face, face_b.face)

    async def identify(
        self, tenant: str, photo: PhotoInput, top_k: int, threshold: float, deadline: Deadline
    ) -> list[facesearch_pb2.IdentifiedFace]:
        top_k = top_k or 3
        if not 1 <= top_k <= 100:
            raise invalid(f"top_k must be in [1, 100], got {top_k}")
        [analysed] = await self.deps.analyser.analyse([photo], deadline)
        if analysed.error is not None:
            code, message = analysed.error
            raise GatewayError(code, f"photo: {message}")
        if not analysed.faces:
            raise invalid("photo: no face found")
        vectors = [f.vector for f in analysed.faces]
        # A person whose mean similarity reaches the threshold has a reference that does.
        hits = await self.deps.query(tenant, vectors, top_k * REFERENCES_PER_PERSON, threshold, ENROLLMENT, deadline)
        candidates_of_face: list[dict[str, str]] = []  # person id -> display name, per face
        for face_hits in hits:
            candidates: dict[str, str] = {}
            for hit in face_hits:  # best first
                if len(candidates) == top_k * CANDIDATES_PER_FACE:
                    break
                candidates.setdefault(hit.face.payload.person_id, hit.face.payload.person_name)
            candidates_of_face.append(candidates)
        people = sorted({person for candidates in candidates_of_face for person in candidates})
        references = await self._references(tenant, people, deadline)
        identified = []
        for found, candidates in zip(analysed.faces, candidates_of_face, strict=True):
            scored = []
            for person_id, name in candidates.items():
                if person_id not in references:
                    continue  # deleted since the query
                similarity = references[person_id].similarity(found.vector)
                if similarity >= threshold:
                    scored.append(
                        facesearch_pb2.Candidate(person_id=person_id, display_name=name, similarity=similarity)
                    )
            scored.sort(key=lambda c: (-c.similarity, c.person_id))
            identified.append(
                facesearch_pb2.IdentifiedFace(face=found.face, candidates=scored[:top_k], unknown=not scored)
            )
        return identified

    async def _references(self, tenant: str, people: list[str], deadline: Deadline) -> dict[str, References]:
        """The references of each of these enrolled people (those still enrolled)."""
        if not people:
            return {}
        faces = await self.people.references_of(tenant, people, deadline, with_vectors=True)
        return {
            person_id: References.of([np.asarray(f.vector, dtype=np.float32) for f in of_person])
            for person_id, of_person in faces.items()
        }

    async def find_me(
        self,
        tenant: str,
        references: list[PhotoInput],
        person_id: str,
        threshold: float,
        limit: int,
        page_token: str,
        deadline: Deadline,
        person_ids: list[str] | None = None,
        match_all: bool = False,
    ) -> tuple[list[facesearch_pb2.PhotoMatch], str]:
        """Every indexed photo holding a face of the person the references show (the given photos'
        clearest faces and the enrolled person's references, together), best first; with
        ``person_ids``, the photos with any (or, ``match_all``, all) of those enrolled people."""
        settings = self.deps.settings
        person_ids = list(dict.fromkeys(person_ids or []))
        limit = paging.page_size(limit, 50, settings.max_page_size, "limit")
        if person_ids and (references or person_id):
            raise invalid("give person_ids alone, or reference photos and person_id")
        if not references and not person_id and not person_ids:
            raise invalid("give reference photos, an enrolled person_id, or both")
        if len(references) > settings.max_photos_per_request:
            raise invalid(f"{len(references)} reference photos, over the limit of {settings.max_photos_per_request}")
        if len(person_ids) > settings.max_photos_per_request:
            raise invalid(f"{len(person_ids)} people, over the limit of {settings.max_photos_per_request}")
        # A page token holds the offset of the next page in the ranking of this query.
        hashes = sorted(r.content_hash for r in references)
        query = query_fingerprint(
            tenant, self.deps.model_id, hashes, person_id, person_ids, match_all, round(threshold, 6)
        )
        start = paging.page_start(self.tokens, page_token, query)

        if person_ids:
            ranked = await self._photos_of_people(tenant, person_ids, match_all, threshold, deadline)
        else:
            vectors = (
                [
                    f.vector
                    for f in await self._reference_faces(
                        references, deadline, [f"reference {i}" for i in range(len(references))]
                    )
                ]
                if references
                else []
            )
            if person_id:
                vectors += await self._enrolled_vectors(tenant, person_id, deadline)
            photos = await self._photos_of(tenant, References.of(vectors), threshold, person_id, deadline)
            ranked = [
                _match(hit, hit.score, [])
                for hit in sorted(photos.values(), key=lambda h: (-h.score, h.face.payload.photo_id))
            ]
        return paging.one_page(ranked, start, limit, self.tokens, query)

    async def _enrolled_vectors(self, tenant: str, person_id: str, deadline: Deadline) -> list[np.ndarray]:
        check_person_id(person_id)
        enrolled = await self.people.references(tenant, person_id, deadline, with_vectors=True)
        if not enrolled:
            raise not_found(f"no person {shown(person_id)} is enrolled")
        return [np.asarray(f.vector, dtype=np.float32) for f in enrolled]

    async def _photos_of(
        self, tenant: str, person: References, threshold: float, person_id: str, deadline: Deadline
    ) -> dict[str, search_pb2.ScoredFace]:
        """Photo id -> the photo's face most like the person, at or above the threshold (its score
        the similarity to them); faces said not to be ``person_id`` are left out."""
        cosine = person.query_threshold(threshold)
        hits = []
        if cosine <= 1.0:
            [hits] = await self.deps.query(
                tenant, [person.direction], self.deps.settings.max_matches, cosine, GALLERY, deadline
            )
        best: dict[str, search_pb2.ScoredFace] = {}
        for hit in hits:
            if person_id and person_id in hit.face.payload.not_person_ids:
                continue
            photo_id = hit.face.payload.photo_id
            if photo_id not in best or hit.score > best[photo_id].score:
                best[photo_id] = hit
        for hit in best.values():
            hit.score = person.from_query(hit.score)
        return best

    async def _photos_of_people(
        self, tenant: str, person_ids: list[str], match_all: bool, threshold: float, deadline: Deadline
    ) -> list[facesearch_pb2.PhotoMatch]:
        """The photos with any (all) of these people, each person found by their own references;
        a photo's similarity is the best (the least) of theirs."""
        found: dict[str, dict[str, search_pb2.ScoredFace]] = {}  # photo -> person -> face
        for person_id in person_ids:
            vectors = await self._enrolled_vectors(tenant, person_id, deadline)
            for photo_id, hit in (
                await self._photos_of(tenant, References.of(vectors), threshold, person_id, deadline)
            ).items():
                found.setdefault(photo_id, {})[person_id] = hit
        matches = []
        for by_person in found.values():
            if match_all and len(by_person) < len(person_ids):
                continue
            if match_all and len({h.face.id for h in by_person.values()}) < len(by_person):
                continue  # one face cannot be two people
            scores = [h.score for h in by_person.values()]
            first = by_person[next(p for p in person_ids if p in by_person)]
            matches.append(_match(first, min(scores) if match_all else max(scores), list(by_person)))
        return sorted(matches, key=lambda m: (-m.similarity, m.photo_id))


def _match(hit: search_pb2.ScoredFace, similarity: float, person_ids: list[str]) -> facesearch_pb2.PhotoMatch:
    payload = hit.face.payload
    return facesearch_pb2.PhotoMatch(
        photo_id=payload.photo_id,
        photo_uri=payload.photo_uri,
        box=payload.box,
        face_index=payload.face_index,
        similarity=similarity,
        person_ids=person_ids,
    )
