"""Enrolled people: Enroll and ListPeople.

A person is their faces: reference faces (one per enrolment photo, or copied from faces of
the archive: see ``gateway.people_edits``), stored with source "enrollment", the person's
id and display name, and faces of the archive assigned to them. Nothing else is kept
about a person.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import grpc

from facesearch.v1 import facesearch_pb2, search_pb2
from gateway import paging
from gateway.analysis import AnalysedPhoto, FoundFace, PhotoInput
from gateway.clusters import quality_order
from gateway.dependencies import Dependencies, enrollment_face_id, face_record
from gateway.errors import invalid, shown
from services.runtime.deadlines import Deadline
from services.runtime.page_tokens import PageTokens, query_fingerprint

ENROLLMENT = search_pb2.FACE_SOURCE_ENROLLMENT
PERSON_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
MAX_NAME_LENGTH = 256
MAX_REFERENCE_FACES = 100_000  # faces read when listing people
DEFAULT_PAGE_SIZE = 100


@dataclass
class EnrolledPerson:
    person_id: str
    display_name: str
    reference_faces: int
    hidden: bool = False
    representative: search_pb2.FaceRecord | None = None  # their best reference face


def check_person_id(person_id: str) -> str:
    if not PERSON_ID.match(person_id):
        raise invalid(
            f"person_id {shown(person_id)}: use 1-128 letters, digits or '_', '.', ':', '@', '-', starting with "
            "a letter or digit"
        )
    return person_id


class People:
    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps
        self.tokens = PageTokens("ListPeople", deps.settings.page_key())

    async def references(
        self, tenant: str, person_id: str, deadline: Deadline, *, with_vectors: bool = False
    ) -> list[search_pb2.FaceRecord]:
        return (await self.references_of(tenant, [person_id], deadline, with_vectors=with_vectors)).get(person_id, [])

    async def references_of(
        self, tenant: str, person_ids: list[str], deadline: Deadline, *, with_vectors: bool = False
    ) -> dict[str, list[search_pb2.FaceRecord]]:
        """The reference faces of each of these people, in one pass (people with none left out)."""
        request = search_pb2.ScrollRequest(
            tenant=tenant,
            model=self.deps.model,
            page_size=1000,
            with_vectors=with_vectors,
            filter=search_pb2.FaceFilter(person_ids=person_ids, source=ENROLLMENT),
        )
        by_person: dict[str, list[search_pb2.FaceRecord]] = {}
        for face in await self.deps.search.scroll_all(request, deadline, limit=MAX_REFERENCE_FACES):
            by_person.setdefault(face.payload.person_id, []).append(face)
        return by_person

    async def enroll(
        self, tenant: str, person_id: str, display_name: str, photos: list[PhotoInput], deadline: Deadline
    ) -> tuple[str, list[facesearch_pb2.PhotoResult], int]:
        """Adds the clearest face of each photo as a reference of the person."""
        if len(display_name) > MAX_NAME_LENGTH:
            raise invalid(f"display_name is longer than {MAX_NAME_LENGTH} characters")
        if not photos:
            raise invalid("give at least one photo to enrol")
        if len(photos) > self.deps.settings.max_photos_per_request:
            raise invalid(f"{len(photos)} photos, over the limit of {self.deps.settings.max_photos_per_request}")
        if person_id:
            check_person_id(person_id)
            existing = await self.references(tenant, person_id, deadline, with_vectors=True)
        elif display_name.strip():
            person_id, existing = uuid.uuid4().hex, []
        else:
            raise invalid("give a person_id, or a display_name to enrol a new person")
        name = display_name.strip() or (existing[0].payload.person_name if existing else "")

        analysed = await self.deps.analyser.analyse(photos, deadline)
        results, records = [], []
        for photo in analysed:
            result, face = self._subject(photo)
            results.append(result)
            if face is not None:
                record_id = enrollment_face_id(tenant, person_id, photo.photo.content_hash)
                records.append(
                    face_record(
                        photo,
                        face,
                        face_index=face.face.index,
                        source=ENROLLMENT,
                        person_id=person_id,
                        person_name=name,
                        record_id=record_id,
                    )
                )
        renamed = [f for f in existing if f.payload.person_name != name and f.id not in {r.id for r in records}]
        for face in renamed:
            face.payload.person_name = name
        if records or renamed:
            request = search_pb2.UpsertRequest(tenant=tenant, model=self.deps.model, faces=[*records, *renamed])
            await self.deps.search.upsert(request, deadline)
            self.deps.metrics.faces_stored.inc(len(records))
        count = await self.deps.search.count(
            search_pb2.CountRequest(
                tenant=tenant,
                model_id=self.deps.model_id,
                filter=search_pb2.FaceFilter(person_ids=[person_id], source=ENROLLMENT),
            ),
            deadline,
        )
        return person_id, results, count

    def _subject(self, photo: AnalysedPhoto) -> tuple[facesearch_pb2.PhotoResult, FoundFace | None]:
        """The one face the photo is about, or the reason there is none."""
        result = facesearch_pb2.PhotoResult(photo_id=photo.photo.id, content_hash=photo.photo.content_hash)
        if photo.error is not None:
            code, message = photo.error
            invalid_photo = code == grpc.StatusCode.INVALID_ARGUMENT
            result.status = facesearch_pb2.PHOTO_STATUS_INVALID if invalid_photo else facesearch_pb2.PHOTO_STATUS_FAILED
            result.message = message
            return result, None
        min_size = self.deps.settings.min_face_size
        usable = sorted(
            (f for f in photo.faces if f.face.quality.face_size >= min_size), key=lambda f: f.area, reverse=True
        )
        result.faces_found = len(photo.faces)
        if not usable:
            result.status = facesearch_pb2.PHOTO_STATUS_NO_FACE
            result.message = (f"no face of at least {min_size} px" if photo.faces else "no face found") + (
                f" ({photo.blurred_skipped} blurred face(s) left out)" if photo.blurred_skipped else ""
            )
            return result, None
        dominance = self.deps.settings.enrollment_dominance
        if len(usable) > 1 and usable[0].area < dominance * usable[1].area:
            result.status = facesearch_pb2.PHOTO_STATUS_MULTIPLE_FACES
            result.message = (
                f"{len(usable)} faces of similar size; enrol from a photo where the person's face is the largest "
                f"by {dominance:g}x in area, or crop the photo"
            )
            return result, None
        result.status = facesearch_pb2.PHOTO_STATUS_ENROLLED
        result.faces_stored = 1
        return result, usable[0]

    async def list(self, tenant: str, deadline: Deadline) -> list[EnrolledPerson]:
        """Every enrolled person of the tenant, by display name then id."""
        request = search_pb2.ScrollRequest(
            tenant=tenant, model=self.deps.model, page_size=1000, filter=search_pb2.FaceFilter(source=ENROLLMENT)
        )
        people: dict[str, EnrolledPerson] = {}
        for face in await self.deps.search.scroll_all(request, deadline, limit=MAX_REFERENCE_FACES):
            payload = face.payload
            person = people.setdefault(payload.person_id, EnrolledPerson(payload.person_id, payload.person_name, 0))
            person.reference_faces += 1
            person.hidden = person.hidden or payload.person_hidden
            if person.representative is None or quality_order(face) < quality_order(person.representative):
                person.representative = face
        return sorted(people.values(), key=lambda p: (p.display_name.casefold(), p.person_id))

    async def page(
        self, tenant: str, page_size: int, page_token: str, deadline: Deadline, include_hidden: bool = False
    ) -> tuple[list[EnrolledPerson], str]:
        """One page of ``list`` and the token of the next (empty after the last page)."""
        size = paging.page_size(page_size, DEFAULT_PAGE_SIZE, self.deps.settings.max_page_size)
        query = query_fingerprint("ListPeople", tenant, include_hidden)
        start = paging.page_start(self.tokens, page_token, query)
        people = [p for p in await self.list(tenant, deadline) if include_hidden or not p.hidden]
        return paging.one_page(people, start, size, self.tokens, query)

    async def archive_faces(self, tenant: str, person_id: str, deadline: Deadline) -> int:
        """How many faces of the archive are assigned to the person."""
        request = search_pb2.CountRequest(
            tenant=tenant,
            model_id=self.deps.model_id,
            filter=search_pb2.FaceFilter(person_ids=[person_id], source=search_pb2.FACE_SOURCE_GALLERY),
        )
        return await self.deps.search.count(request, deadline)
