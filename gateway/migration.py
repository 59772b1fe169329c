"""Moving a tenant's faces to another embedding model without losing what people said.

The vectors of one model mean nothing to another, so every stored face is embedded
again: the photo it came from is sent again (``facesearch migrate`` reads it from its
URI), the detector finds its faces and makes the new model's crops, the new model embeds
them, and each stored face found again (the same box) is written into the new model's
collection under its own id with everything it carried: person and name, reference or
archive face, cluster and core flag, "not this person" marks, hidden flag, metadata.
Nothing is deleted from the old collection, and the tenant's calls keep using it: the
archive stays searchable while it is copied.

``SwitchModel`` then brings the copy up to date (names, clusters and marks changed in the
old collection since, references added from photos already moved) and makes the new
collection the tenant's, in one step: the search service's compare-and-set, while this
replica's edits of the tenant's people wait (``EditGate``). Every step is idempotent
(the same ids, upserts), so a migration interrupted anywhere is finished by running it
again: ``ListMigrationPhotos`` gives only what is still missing.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from facesearch.v1 import common_pb2, facesearch_pb2, search_pb2
from gateway.analysis import FoundFace, PhotoInput
from gateway.errors import GatewayError, invalid
from gateway.operations import Operations
from gateway.paging import page_size
from gateway.tenant_models import TenantModels
from services.embedder import models
from services.runtime.deadlines import Deadline
from services.runtime.page_tokens import InvalidPageToken, PageTokens, query_fingerprint

GALLERY = search_pb2.FACE_SOURCE_GALLERY
ENROLLMENT = search_pb2.FACE_SOURCE_ENROLLMENT
# A face found again is the stored one when their boxes overlap this much (intersection over union).
SAME_FACE_OVERLAP = 0.5
SYNC_PAGE = 500
UPSERT_BATCH = 256
MAX_FACES_PER_PHOTO = 10_000
# The phases of ListMigrationPhotos: photos of archive faces, then photos only references come from.
ARCHIVE_PHASE, REFERENCE_PHASE = "a", "r"
# What people said about a face: brought up to date when it changed in the old collection.
PEOPLE_FIELDS = ("person_id", "person_name", "cluster_id", "cluster_core", "cluster_run", "person_hidden", "source")


def failed_precondition(message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.FAILED_PRECONDITION, message)


class EditGate:
    """While a tenant's model is being switched, this replica's edits of its people wait,
    and a switch waits for the edits under way."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._editing: Counter[str] = Counter()
        self._switching: set[str] = set()

    @asynccontextmanager
    async def editing(self, tenant: str) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: tenant not in self._switching)
            self._editing[tenant] += 1
        try:
            yield
        finally:
            async with self._changed:
                self._editing[tenant] -= 1
                if not self._editing[tenant]:
                    del self._editing[tenant]
                self._changed.notify_all()

    @asynccontextmanager
    async def switching(self, tenant: str) -> AsyncIterator[None]:
        async with self._changed:
            if tenant in self._switching:
                raise failed_precondition("the tenant's model is being switched already")
            self._switching.add(tenant)
            await self._changed.wait_for(lambda: not self._editing[tenant])
        try:
            yield
        finally:
            async with self._changed:
                self._switching.discard(tenant)
                self._changed.notify_all()


@dataclass
class SyncCounts:
    updated: int = 0  # faces of the new collection brought up to date
    missing_photos: int = 0  # photos of the old collection with faces not in the new


class Migration:
    def __init__(self, operations: dict[str, Operations], tenant_models: TenantModels) -> None:
        self.operations = operations  # by model id: the models this gateway embeds with
        self.tenant_models = tenant_models
        self.gate = EditGate()
        any_deps = next(iter(operations.values())).deps
        self.search = any_deps.search
        self.settings = any_deps.settings
        self.tokens = PageTokens("ListMigrationPhotos", self.settings.page_key())

    # --- models ----------------------------------------------------------------------------------

    def model(self, model_id: str) -> common_pb2.EmbeddingModel:
        """A model whose collection can be read: one this gateway embeds with, or any registered."""
        if model_id in self.operations:
            return self.operations[model_id].deps.model
        try:
            registered = models.by_id(model_id)
        except ValueError as error:
            raise invalid(str(error)) from None
        return common_pb2.EmbeddingModel(id=registered.id, dimension=registered.dimension)

    def target(self, model_id: str) -> Operations:
        if not model_id:
            raise invalid("to_model_id is required")
        if model_id not in self.operations:
            self.model(model_id)  # an unknown id says so
            raise failed_precondition(
                f"this gateway cannot embed with {model_id} (it embeds with {', '.join(self.operations)}): "
                "serve the model and give its Triton address in the gateway's embedder_urls"
            )
        return self.operations[model_id]

    async def _pair(
        self, tenant: str, to_id: str, from_id: str, deadline: Deadline
    ) -> tuple[common_pb2.EmbeddingModel, Operations]:
        target = self.target(to_id)
        from_id = from_id or await self.tenant_models.in_use(tenant, deadline)
        if from_id == to_id:
            raise invalid(f"the faces would be moved from {to_id} to itself")
        return self.model(from_id), target

    async def list_models(self, tenant: str, deadline: Deadline) -> list[facesearch_pb2.TenantModelCollection]:
        in_use = await self.tenant_models.in_use(tenant, deadline)
        answer = []
        for model_id in dict.fromkeys([in_use, *self.operations, *(m.id for m in models.MODELS)]):
            try:
                faces = await self.search.count(search_pb2.CountRequest(tenant=tenant, model_id=model_id), deadline)
            except GatewayError as error:
                if error.code != grpc.StatusCode.INVALID_ARGUMENT:  # a model the search service does not keep
                    raise
                continue
            if faces or model_id == in_use or model_id in self.operations:
                answer.append(
                    facesearch_pb2.TenantModelCollection(
                        model=self.model(model_id),
                        in_use=model_id == in_use,
                        available=model_id in self.operations,
                        faces=faces,
                    )
                )
        return answer

    # --- what is left to move ------------------------------------------------------------------

    async def photos_to_move(
        self, tenant: str, request: facesearch_pb2.ListMigrationPhotosRequest, deadline: Deadline
    ) -> facesearch_pb2.ListMigrationPhotosResponse:
        """One page of the photos with faces in the old collection and none in the new: first
        those of archive faces (one face per photo, face_index 0), then those only references
        come from. A page may hold fewer photos than asked, even none, with a next token."""
        old, target = await self._pair(tenant, request.to_model_id, request.from_model_id, deadline)
        size = page_size(request.page_size, 100, self.settings.max_page_size)
        query = query_fingerprint(tenant, old.id, target.deps.model_id)
        phase, offset = ARCHIVE_PHASE, ""
        if request.page_token:
            try:
                position = self.tokens.read(request.page_token, query)
            except InvalidPageToken as error:
                raise invalid(str(error)) from None
            phase, offset = str(position)[:1], str(position)[1:]
        face_filter = (
            search_pb2.FaceFilter(source=GALLERY, face_index=0)
            if phase == ARCHIVE_PHASE
            else search_pb2.FaceFilter(source=ENROLLMENT)
        )
        scroll = search_pb2.ScrollRequest(
            tenant=tenant, model=old, filter=face_filter, page_size=size, page_token=offset
        )
        reply = await self.search.scroll(scroll, deadline)
        hashes = list(dict.fromkeys(f.payload.photo_hash for f in reply.faces if f.payload.photo_hash))
        moved = await self._hashes_with_faces(tenant, target.deps.model, hashes, deadline)
        missing = [h for h in hashes if h not in moved]
        if phase == REFERENCE_PHASE and missing:  # listed with the archive faces already
            in_archive = await self._hashes_with_faces(tenant, old, missing, deadline, GALLERY)
            missing = [h for h in missing if h not in in_archive]
        stored = await self._faces_by_hash(tenant, old, missing, deadline)
        photos = [_migration_photo(stored[h]) for h in missing if stored.get(h)]
        if reply.next_page_token:
            next_token = self.tokens.issue(phase + reply.next_page_token, query)
        elif phase == ARCHIVE_PHASE:
            next_token = self.tokens.issue(REFERENCE_PHASE, query)
        else:
            next_token = ""
        return facesearch_pb2.ListMigrationPhotosResponse(photos=photos, next_page_token=next_token)

    async def _hashes_with_faces(
        self,
        tenant: str,
        model: common_pb2.EmbeddingModel,
        hashes: list[str],
        deadline: Deadline,
        source: int = search_pb2.FACE_SOURCE_UNSPECIFIED,
    ) -> set[str]:
        return set(await self._faces_by_hash(tenant, model, hashes, deadline, source=source))

    async def _faces_by_hash(
        self,
        tenant: str,
        model: common_pb2.EmbeddingModel,
        hashes: Iterable[str],
        deadline: Deadline,
        with_vectors: bool = False,
        source: int = search_pb2.FACE_SOURCE_UNSPECIFIED,
    ) -> dict[str, list[search_pb2.FaceRecord]]:
        """The stored faces of these photos (of ``source`` only, when given), by photo hash."""
        hashes = list(hashes)
        grouped: dict[str, list[search_pb2.FaceRecord]] = defaultdict(list)
        if not hashes:
            return grouped
        request = search_pb2.ScrollRequest(
            tenant=tenant,
            model=model,
            page_size=min(1000, self.settings.max_page_size),
            filter=search_pb2.FaceFilter(photo_hashes=hashes, source=source),
            with_vectors=with_vectors,
        )
        for face in await self.search.scroll_all(request, deadline, limit=len(hashes) * MAX_FACES_PER_PHOTO):
            grouped[face.payload.photo_hash].append(face)
        return grouped

    # --- moving photos -------------------------------------------------------------------------

    async def move_photos(
        self, tenant: str, request: facesearch_pb2.MigratePhotosRequest, photos: list[PhotoInput], deadline: Deadline
    ) -> list[facesearch_pb2.MigratedPhoto]:
        old, target = await self._pair(tenant, request.to_model_id, request.from_model_id, deadline)
        if not photos:
            raise invalid("no photos to move")
        if len(photos) > self.settings.max_photos_per_request:
            raise invalid(f"{len(photos)} photos in one call, over the limit of {self.settings.max_photos_per_request}")
        analysed = await target.deps.analyser.analyse(photos, deadline, skip_blurred=False)
        stored = await self._faces_by_hash(tenant, old, {p.content_hash for p in photos}, deadline)
        results, records, moved_hashes = [], [], set()
        for photo in analysed:
            result = facesearch_pb2.MigratedPhoto(photo_id=photo.photo.id)
            old_faces = stored.get(photo.photo.content_hash, [])
            if photo.error is not None:
                code, message = photo.error
                result.error.CopyFrom(common_pb2.ItemError(code=code.value[0], message=message))
            elif not old_faces:
                result.error.CopyFrom(
                    common_pb2.ItemError(
                        code=grpc.StatusCode.NOT_FOUND.value[0],
                        message=f"no faces of {old.id} come from these bytes: the photo changed since it was "
                        "stored, or its faces were deleted",
                    )
                )
            else:
                pairs = same_faces(old_faces, photo.faces)
                result.faces_moved = len(pairs)
                result.faces_not_found = len(old_faces) - len(pairs)
                if photo.photo.content_hash not in moved_hashes:
                    moved_hashes.add(photo.photo.content_hash)
                    records += [moved_face(stored_face, found.vector.tolist()) for stored_face, found in pairs]
            results.append(result)
        await self._upsert(tenant, target.deps.model, records, deadline)
        return results

    async def _upsert(
        self,
        tenant: str,
        model: common_pb2.EmbeddingModel,
        records: list[search_pb2.FaceRecord],
        deadline: Deadline,
    ) -> None:
        for start in range(0, len(records), UPSERT_BATCH):
            chunk = records[start : start + UPSERT_BATCH]
            await self.search.upsert(search_pb2.UpsertRequest(tenant=tenant, model=model, faces=chunk), deadline)

    # --- switching -----------------------------------------------------------------------------

    async def switch(
        self, tenant: str, request: facesearch_pb2.SwitchModelRequest, deadline: Deadline
    ) -> facesearch_pb2.SwitchModelResponse:
        target = self.target(request.to_model_id)
        async with self.gate.switching(tenant):
            choice = await self.tenant_models.choice(tenant, deadline, fresh=True)
            if request.from_model_id and request.from_model_id != choice.model_id:
                raise failed_precondition(f"the tenant's model is {choice.model_id}, not {request.from_model_id}")
            if choice.model_id == target.deps.model_id:
                raise failed_precondition(f"the tenant's model is {choice.model_id} already")
            old_operations = self.operations.get(choice.model_id)
            if old_operations is not None and old_operations.clusters.running(tenant):
                raise failed_precondition("a clustering run of the tenant is under way: switch when it is over")
            counts = await self.bring_up_to_date(tenant, self.model(choice.model_id), target.deps.model, deadline)
            if counts.missing_photos and not request.allow_missing:
                raise failed_precondition(
                    f"{counts.missing_photos} photos have faces in {choice.model_id} that are not in "
                    f"{target.deps.model_id}: move them first (facesearch migrate), or allow_missing"
                )
            chosen = await self.tenant_models.switch(tenant, target.deps.model, choice, deadline)
        return facesearch_pb2.SwitchModelResponse(
            model=chosen.model,
            previous_model_id=choice.model_id,
            faces_updated=counts.updated,
            photos_missing=counts.missing_photos,
        )

    async def bring_up_to_date(
        self, tenant: str, old: common_pb2.EmbeddingModel, new: common_pb2.EmbeddingModel, deadline: Deadline
    ) -> SyncCounts:
        """Makes every face of the old collection whose photo was moved match in the new one:
        what people said about it copied over, and faces added since from a moved photo (a
        reference made from an archive face) added with the vector of the same face there."""
        counts = SyncCounts()
        token = ""
        while True:
            scroll = search_pb2.ScrollRequest(tenant=tenant, model=old, page_size=SYNC_PAGE, page_token=token)
            reply = await self.search.scroll(scroll, deadline)
            await self._sync_page(tenant, list(reply.faces), new, deadline, counts)
            token = reply.next_page_token
            if not token:
                return counts

    async def _sync_page(
        self,
        tenant: str,
        old_faces: list[search_pb2.FaceRecord],
        new: common_pb2.EmbeddingModel,
        deadline: Deadline,
        counts: SyncCounts,
    ) -> None:
        if not old_faces:
            return
        by_hash = await self._faces_by_hash(
            tenant, new, {f.payload.photo_hash for f in old_faces}, deadline, with_vectors=True
        )
        records, missing = [], set()
        for old_face in old_faces:
            there = by_hash.get(old_face.payload.photo_hash, [])
            twin = next((f for f in there if f.id == old_face.id), None)
            if twin is not None:
                if _people_fields(twin.payload) != _people_fields(old_face.payload):
                    records.append(moved_face(old_face, list(twin.vector), quality=twin.payload.quality))
                continue
            pairs = [f for f in there if box_overlap(f.payload.box, old_face.payload.box) >= SAME_FACE_OVERLAP]
            if pairs:  # the same face, stored again under another id (a reference made from it)
                same = max(pairs, key=lambda f: box_overlap(f.payload.box, old_face.payload.box))
                records.append(moved_face(old_face, list(same.vector), quality=same.payload.quality))
            else:
                missing.add(old_face.payload.photo_hash)
        counts.updated += len(records)
        counts.missing_photos += len(missing)
        await self._upsert(tenant, new, records, deadline)

    # --- dropping --------------------------------------------------------------------------------

    async def drop(self, tenant: str, model_id: str, deadline: Deadline) -> int:
        model = self.model(model_id)
        if model.id == await self.tenant_models.in_use(tenant, deadline):
            raise failed_precondition(f"{model.id} is the tenant's model in use: switch to another one first")
        request = search_pb2.DeleteRequest(tenant=tenant, model_id=model.id, whole_tenant=True)
        return (await self.search.delete(request, deadline)).deleted


def same_faces(
    stored: list[search_pb2.FaceRecord], found: list[FoundFace]
) -> list[tuple[search_pb2.FaceRecord, FoundFace]]:
    """Each stored face with the face found again at its place, if any. A photo's archive
    faces are different faces, and so are one person's references in it: within each of
    these groups two stored faces never take the same found face (the best overlaps first);
    an archive face and a reference copied from it take the same one."""
    groups: dict[tuple, list[search_pb2.FaceRecord]] = defaultdict(list)
    for face in stored:
        groups[(face.payload.source, face.payload.person_id if face.payload.source == ENROLLMENT else "")].append(face)
    return [pair for group in groups.values() for pair in _one_to_one(group, found)]


def _one_to_one(
    stored: list[search_pb2.FaceRecord], found: list[FoundFace]
) -> list[tuple[search_pb2.FaceRecord, FoundFace]]:
    candidates = sorted(
        (
            (box_overlap(face.payload.box, new.face.box), i, j)
            for i, face in enumerate(stored)
            for j, new in enumerate(found)
        ),
        reverse=True,
    )
    pairs, used_stored, used_found = [], set(), set()
    for overlap, i, j in candidates:
        if overlap < SAME_FACE_OVERLAP:
            break
        if i in used_stored or j in used_found:
            continue
        used_stored.add(i)
        used_found.add(j)
        pairs.append((stored[i], found[j]))
    return pairs


def moved_face(
    stored: search_pb2.FaceRecord, vector: list[float], quality: common_pb2.FaceQuality | None = None
) -> search_pb2.FaceRecord:
    """The stored face with the new model's vector: the same id and everything it carried
    (its quality as measured on the new model's crop, when given)."""
    payload = search_pb2.FacePayload()
    payload.CopyFrom(stored.payload)
    payload.model_id = ""  # the search service writes the collection's own
    if quality is not None:
        payload.quality.CopyFrom(quality)
    return search_pb2.FaceRecord(id=stored.id, vector=vector, payload=payload)


def box_overlap(a: common_pb2.BoundingBox, b: common_pb2.BoundingBox) -> float:
    """Intersection over union of two boxes."""
    width = min(a.x_max, b.x_max) - max(a.x_min, b.x_min)
    height = min(a.y_max, b.y_max) - max(a.y_min, b.y_min)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a.x_max - a.x_min) * (a.y_max - a.y_min) + (b.x_max - b.x_min) * (b.y_max - b.y_min) - inter
    return inter / union if union > 0 else 0.0


def _people_fields(payload: search_pb2.FacePayload) -> tuple:
    return (
        *(getattr(payload, name) for name in PEOPLE_FIELDS),
        tuple(payload.not_person_ids),
        tuple(sorted(payload.metadata.items())),
        payload.photo_id,
        payload.photo_uri,
    )


def _migration_photo(faces: list[search_pb2.FaceRecord]) -> facesearch_pb2.MigrationPhoto:
    archive = [f for f in faces if f.payload.source == GALLERY]
    shown = (archive or faces)[0].payload
    uri = next((f.payload.photo_uri for f in (*archive, *faces) if f.payload.photo_uri), "")
    return facesearch_pb2.MigrationPhoto(
        photo_id=shown.photo_id,
        photo_uri=uri,
        photo_hash=shown.photo_hash,
        faces=len(faces),
        references_only=not archive,
    )
