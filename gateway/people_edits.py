"""What people do with the people the archive holds: name a cluster, rename, merge, move a
face to someone or detach it, "not this person", hide, list a person's faces.

A person is their faces: reference faces (source "enrollment", what Identify and FindMe
compare with) and faces of the archive assigned to them (source "gallery" with their
``person_id``). Naming a cluster assigns its faces to the person and copies the best
``REFERENCES_FROM_CLUSTER`` of them as references; moving a face does the same for one face.
A face said not to be a person keeps that person's id in ``not_person_ids``: it is detached,
never joins a cluster named as them, and FindMe by them leaves it out.
"""

from __future__ import annotations

import uuid

from facesearch.v1 import facesearch_pb2, search_pb2
from gateway import paging
from gateway.clusters import Clusters, face_ref, quality_order
from gateway.dependencies import Dependencies
from gateway.errors import invalid, not_found
from gateway.people import MAX_NAME_LENGTH, People, check_person_id
from services.runtime.deadlines import Deadline
from services.runtime.page_tokens import PageTokens, query_fingerprint

GALLERY = search_pb2.FACE_SOURCE_GALLERY
ENROLLMENT = search_pb2.FACE_SOURCE_ENROLLMENT
REFERENCES_FROM_CLUSTER = 20  # the best faces of a named cluster become references
MAX_PERSON_FACES = 1_000_000
DEFAULT_PAGE_SIZE = 100
UPSERT_BATCH = 256
# Namespace of the ids of references copied from faces of the archive: one per (person, face).
COPIED_REFERENCE_NAMESPACE = uuid.UUID("5b0e3a52-3f7e-4b7a-9d39-1f7b2c1a8e60")


def copied_reference_id(tenant: str, person_id: str, face_id: str) -> str:
    return str(uuid.uuid5(COPIED_REFERENCE_NAMESPACE, f"{tenant}\n{person_id}\n{face_id}"))


def check_face_id(face_id: str) -> str:
    try:
        return str(uuid.UUID(face_id))
    except ValueError:
        raise invalid(f"face_id {face_id[:64]!r} is not a stored face's id (a UUID)") from None


class PeopleEdits:
    def __init__(self, deps: Dependencies, people: People, clusters: Clusters) -> None:
        self.deps = deps
        self.people = people
        self.clusters = clusters
        self.tokens = PageTokens("ListPersonFaces", deps.settings.page_key())

    # --- reading ---------------------------------------------------------------------------------

    async def _faces(
        self, tenant: str, deadline: Deadline, *, with_vectors: bool = True, **filter_fields
    ) -> list[search_pb2.FaceRecord]:
        request = search_pb2.ScrollRequest(
            tenant=tenant,
            model=self.deps.model,
            page_size=1000,
            with_vectors=with_vectors,
            filter=search_pb2.FaceFilter(**filter_fields),
        )
        return await self.deps.search.scroll_all(request, deadline, limit=MAX_PERSON_FACES)

    async def _person_faces(self, tenant: str, person_id: str, deadline: Deadline) -> list[search_pb2.FaceRecord]:
        """Every face of the person (references and faces of the archive); NOT_FOUND if none."""
        check_person_id(person_id)
        faces = await self._faces(tenant, deadline, person_ids=[person_id])
        if not faces:
            raise not_found(f"no person {person_id!r}")
        return faces

    async def _face(self, tenant: str, face_id: str, deadline: Deadline) -> search_pb2.FaceRecord:
        """A face of the archive, by its id."""
        faces = await self._faces(tenant, deadline, face_ids=[check_face_id(face_id)], source=GALLERY)
        if not faces:
            raise not_found(f"no face {face_id!r} in the archive")
        return faces[0]

    async def person(self, tenant: str, person_id: str, deadline: Deadline) -> facesearch_pb2.Person:
        return summary(person_id, await self._person_faces(tenant, person_id, deadline))

    async def list_faces(
        self, tenant: str, person_id: str, page_size: int, page_token: str, deadline: Deadline
    ) -> tuple[list[facesearch_pb2.FaceRef], str]:
        size = paging.page_size(page_size, DEFAULT_PAGE_SIZE, self.deps.settings.max_page_size)
        query = query_fingerprint("ListPersonFaces", tenant, person_id)
        start = paging.page_start(self.tokens, page_token, query)
        faces = sorted(await self._person_faces(tenant, person_id, deadline), key=quality_order)
        page, token = paging.one_page(faces, start, size, self.tokens, query)
        return [face_ref(f) for f in page], token

    # --- writing ---------------------------------------------------------------------------------

    async def _store(self, tenant: str, faces: list[search_pb2.FaceRecord], deadline: Deadline) -> None:
        for start in range(0, len(faces), UPSERT_BATCH):
            request = search_pb2.UpsertRequest(
                tenant=tenant, model=self.deps.model, faces=faces[start : start + UPSERT_BATCH]
            )
            await self.deps.search.upsert(request, deadline)

    async def _forget(self, tenant: str, ids: list[str], deadline: Deadline) -> None:
        if ids:
            request = search_pb2.DeleteRequest(tenant=tenant, ids=search_pb2.FaceIds(ids=ids))
            await self.deps.search.delete(request, deadline)

    @staticmethod
    def _as_reference(face: search_pb2.FaceRecord, tenant: str, person_id: str, name: str) -> search_pb2.FaceRecord:
        reference = search_pb2.FaceRecord()
        reference.CopyFrom(face)
        reference.id = copied_reference_id(tenant, person_id, face.id)
        payload = reference.payload
        payload.source = ENROLLMENT
        payload.person_id, payload.person_name = person_id, name
        payload.cluster_id, payload.cluster_core, payload.cluster_run = "", False, 0
        del payload.not_person_ids[:]
        return reference

    async def name_cluster(
        self, tenant: str, cluster_id: str, person_id: str, display_name: str, deadline: Deadline
    ) -> facesearch_pb2.Person:
        if len(display_name) > MAX_NAME_LENGTH:
            raise invalid(f"display_name is longer than {MAX_NAME_LENGTH} characters")
        if not cluster_id or len(cluster_id) > 64:
            raise invalid("give the cluster_id of a cluster ClusterFaces listed")
        faces = await self.clusters.faces_of(tenant, cluster_id, deadline)
        if not faces:
            raise not_found(f"no cluster {cluster_id!r}")
        if person_id:
            existing = await self._person_faces(tenant, person_id, deadline)
            name = display_name.strip() or existing[0].payload.person_name
        elif display_name.strip():
            person_id, existing, name = uuid.uuid4().hex, [], display_name.strip()
        else:
            raise invalid("give the person_id of someone, or a display_name for a new person")
        joining = [f for f in faces if person_id not in f.payload.not_person_ids]
        for face in joining:
            face.payload.person_id, face.payload.person_name = person_id, name
        referenced = {f.payload.photo_hash for f in existing if f.payload.source == ENROLLMENT}
        references = [
            self._as_reference(f, tenant, person_id, name)
            for f in sorted(joining, key=quality_order)
            if f.payload.photo_hash not in referenced and not f.payload.quality.blurred
        ][:REFERENCES_FROM_CLUSTER]
        await self._store(tenant, [*joining, *references], deadline)
        return await self.person(tenant, person_id, deadline)

    async def rename(self, tenant: str, person_id: str, display_name: str, deadline: Deadline) -> facesearch_pb2.Person:
        name = display_name.strip()
        if not name or len(name) > MAX_NAME_LENGTH:
            raise invalid(f"give a display_name of 1-{MAX_NAME_LENGTH} characters")
        faces = await self._person_faces(tenant, person_id, deadline)
        for face in faces:
            face.payload.person_name = name
        await self._store(tenant, faces, deadline)
        return summary(person_id, faces)

    async def merge(
        self, tenant: str, person_id: str, merged_ids: list[str], deadline: Deadline
    ) -> facesearch_pb2.Person:
        kept = await self._person_faces(tenant, person_id, deadline)
        merged_ids = [m for m in dict.fromkeys(merged_ids) if m != person_id]
        if not merged_ids:
            raise invalid("give merged_person_ids: the people to merge into person_id")
        name = kept[0].payload.person_name
        moved = []
        for merged in merged_ids:
            faces = await self._person_faces(tenant, merged, deadline)
            for face in faces:
                face.payload.person_id, face.payload.person_name = person_id, name
            moved += faces
        await self._store(tenant, moved, deadline)
        await self._carry_marks(tenant, merged_ids, person_id, deadline)
        return summary(person_id, [*kept, *moved])

    async def _carry_marks(self, tenant: str, merged_ids: list[str], person_id: str, deadline: Deadline) -> None:
        """Faces said not to be a merged person are now said not to be the person they became."""
        request = search_pb2.ScrollRequest(
            tenant=tenant,
            model=self.deps.model,
            page_size=1000,
            with_vectors=True,
            filter=search_pb2.FaceFilter(not_person_ids=merged_ids),
        )
        marked = await self.deps.search.scroll_all(request, deadline, limit=MAX_PERSON_FACES)
        for face in marked:
            marks = [person_id if mark in merged_ids else mark for mark in face.payload.not_person_ids]
            del face.payload.not_person_ids[:]
            face.payload.not_person_ids.extend(dict.fromkeys(marks))
        await self._store(tenant, marked, deadline)

    async def assign(self, tenant: str, face_id: str, person_id: str, deadline: Deadline) -> facesearch_pb2.FaceRef:
        """The face becomes the person's (a reference of theirs too), or nobody's."""
        face = await self._face(tenant, face_id, deadline)
        before = face.payload.person_id
        written = [face]
        if person_id:
            existing = await self._person_faces(tenant, person_id, deadline)
            name = existing[0].payload.person_name
            if person_id in face.payload.not_person_ids:
                face.payload.not_person_ids.remove(person_id)  # said to be them after all
            face.payload.person_id, face.payload.person_name = person_id, name
            if not face.payload.quality.blurred:
                written.append(self._as_reference(face, tenant, person_id, name))
        else:
            face.payload.person_id, face.payload.person_name = "", ""
        if before != person_id:
            face.payload.cluster_id, face.payload.cluster_core = "", False  # out of the old person's cluster
        await self._store(tenant, written, deadline)
        if before and before != person_id:
            await self._forget(tenant, [copied_reference_id(tenant, before, face.id)], deadline)
        return face_ref(face)

    async def reject(self, tenant: str, face_id: str, person_id: str, deadline: Deadline) -> facesearch_pb2.FaceRef:
        """Not this person: the face leaves them for good."""
        check_person_id(person_id)
        face = await self._face(tenant, face_id, deadline)
        if person_id not in face.payload.not_person_ids:
            face.payload.not_person_ids.append(person_id)
        if face.payload.person_id == person_id:
            face.payload.person_id, face.payload.person_name = "", ""
            face.payload.cluster_id, face.payload.cluster_core = "", False
        await self._store(tenant, [face], deadline)
        await self._forget(tenant, [copied_reference_id(tenant, person_id, face.id)], deadline)
        return face_ref(face)

    async def hide(self, tenant: str, person_id: str, hidden: bool, deadline: Deadline) -> facesearch_pb2.Person:
        faces = await self._person_faces(tenant, person_id, deadline)
        references = [f for f in faces if f.payload.source == ENROLLMENT]
        if not references:
            raise not_found(f"{person_id!r} has no reference faces: enrol them or name a cluster as them first")
        for face in references:
            face.payload.person_hidden = hidden
        await self._store(tenant, references, deadline)
        return summary(person_id, faces)

    async def delete(self, tenant: str, person_id: str, deadline: Deadline) -> int:
        """Deletes the person's references; their faces of the archive stay, nobody's and in no
        cluster (the next run clusters them again). Returns the references deleted."""
        faces = await self._person_faces(tenant, person_id, deadline)
        references = [f.id for f in faces if f.payload.source == ENROLLMENT]
        archive = [f for f in faces if f.payload.source != ENROLLMENT]
        for face in archive:
            face.payload.person_id, face.payload.person_name = "", ""
            face.payload.cluster_id, face.payload.cluster_core, face.payload.cluster_run = "", False, 0
        await self._store(tenant, archive, deadline)
        await self._forget(tenant, references, deadline)
        return len(references)


def summary(person_id: str, faces: list[search_pb2.FaceRecord]) -> facesearch_pb2.Person:
    """The person as ListPeople shows them, from all their faces."""
    references = [f for f in faces if f.payload.source == ENROLLMENT]
    best = min(references or faces, key=quality_order)
    return facesearch_pb2.Person(
        person_id=person_id,
        display_name=best.payload.person_name,
        reference_faces=len(references),
        archive_faces=len(faces) - len(references),
        hidden=any(f.payload.person_hidden for f in references),
        representative=face_ref(best),
    )
