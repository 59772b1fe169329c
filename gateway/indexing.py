"""IndexPhotos, DeletePhoto and Stats: the tenant's archive of photos.

A photo is known by the SHA-256 of its bytes: the same bytes are never stored
twice (skipped as DUPLICATE, in the same stream or a later one). A photo id that
comes back with different bytes (the photo was edited) has its old faces replaced.
Stored faces are numbered 0.. in the detector's order (largest first), so face 0
stands for the photo when photos are counted.

Photos without a face leave nothing in the store, so a later run detects them again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

import grpc

from facesearch.v1 import facesearch_pb2, search_pb2
from gateway.analysis import MAX_ID_LENGTH, AnalysedPhoto, PhotoInput
from gateway.dependencies import Dependencies, face_record
from gateway.errors import GatewayError, invalid, not_found, shown
from gateway.progress import IndexingProgress
from services.runtime.deadlines import Deadline

log = logging.getLogger(__name__)
GALLERY = search_pb2.FACE_SOURCE_GALLERY
UPSERT_BATCH = 512
# A stream's photos are batched as they arrive: a batch waits this long for more.
BATCH_LINGER_S = 0.02


class Indexer:
    def __init__(self, deps: Dependencies, progress: IndexingProgress | None = None) -> None:
        self.deps = deps
        self.progress = progress or IndexingProgress()

    async def index_stream(
        self, tenant: str, photos: AsyncIterator[PhotoInput], batch_deadline: Callable[[], Deadline]
    ) -> AsyncIterator[facesearch_pb2.PhotoResult]:
        """One result per photo, in the order the photos came; batches overlap.

        A stream may run for hours (a backfill): each batch gets its own deadline from
        ``batch_deadline`` (what is left of the caller's, at most the request timeout)."""
        batch_size = self.deps.settings.detect_batch_size
        queue: asyncio.Queue[PhotoInput | None] = asyncio.Queue(maxsize=batch_size * 2)
        # Content hash -> photo id of the photos in batches not finished yet; once a batch
        # is stored, the store itself knows its photos.
        seen: dict[str, str] = {}

        async def read() -> None:
            try:
                async for photo in photos:
                    self.progress.photo_received(tenant)
                    await queue.put(photo)
            finally:
                await queue.put(None)

        self.progress.stream_opened(tenant)
        reader = asyncio.create_task(read())
        pending: deque[asyncio.Task[list[facesearch_pb2.PhotoResult]]] = deque()
        next_batch: asyncio.Task[tuple[list[PhotoInput], bool]] | None = None
        finished = False
        try:
            while True:
                if next_batch is None and not finished and len(pending) < self.deps.settings.index_concurrency:
                    next_batch = asyncio.create_task(_next_batch(queue, batch_size))
                waiting = [task for task in (next_batch, pending[0] if pending else None) if task is not None]
                if not waiting:
                    return
                # Wait for more photos or the oldest batch, whichever comes first: a client
                # that sends one photo and waits for its result is answered at once.
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if next_batch in done:
                    batch, finished = next_batch.result()
                    next_batch = None
                    if batch:
                        task = self._index_batch(tenant, batch, seen, batch_deadline())
                        pending.append(asyncio.create_task(task))
                while pending and pending[0].done():
                    for result in pending.popleft().result():
                        if seen.get(result.content_hash) == result.photo_id:
                            del seen[result.content_hash]
                        self.deps.metrics.photo(result)
                        self.progress.photo_done(tenant, result)
                        yield result
        finally:
            self.progress.stream_closed(tenant)
            for task in (reader, next_batch, *pending):
                if task is not None:
                    task.cancel()

    async def _index_batch(
        self, tenant: str, photos: list[PhotoInput], seen: dict[str, str], deadline: Deadline
    ) -> list[facesearch_pb2.PhotoResult]:
        results: dict[int, facesearch_pb2.PhotoResult] = {}
        fresh: list[tuple[int, PhotoInput]] = []
        for position, photo in enumerate(photos):
            if photo.content_hash in seen:
                results[position] = _duplicate(photo, seen[photo.content_hash], "earlier in this stream")
            else:
                seen[photo.content_hash] = photo.id
                fresh.append((position, photo))
        try:
            stored = await self._stored_photos(tenant, [p.content_hash for _, p in fresh], deadline)
            todo = []
            for position, photo in fresh:
                if photo.content_hash in stored:
                    results[position] = _duplicate(photo, stored[photo.content_hash], "indexed before")
                else:
                    todo.append((position, photo))
            analysed = await self.deps.analyser.analyse([p for _, p in todo], deadline)
            await self._replace_edited(tenant, [a for a in analysed if a.error is None], deadline)
            await self._store(tenant, analysed, deadline)
            for (position, _), photo in zip(todo, analysed, strict=True):
                results[position] = _result(photo)
        except (GatewayError, TimeoutError) as error:
            # A service failed for the whole batch, or its time ran out: these photos can be sent again.
            reason = (
                f"{error.code.name}: {error.message}"
                if isinstance(error, GatewayError)
                else f"DEADLINE_EXCEEDED: {error or 'the batch ran out of time'}"
            )
            for position, photo in fresh:
                if position not in results:
                    seen.pop(photo.content_hash, None)
                    results[position] = facesearch_pb2.PhotoResult(
                        photo_id=photo.id,
                        content_hash=photo.content_hash,
                        status=facesearch_pb2.PHOTO_STATUS_FAILED,
                        message=reason,
                    )
        return [results[position] for position in range(len(photos))]

    async def _stored_photos(self, tenant: str, hashes: list[str], deadline: Deadline) -> dict[str, str]:
        """The content hashes already indexed for the tenant, with their photo ids."""
        if not hashes:
            return {}
        request = search_pb2.ScrollRequest(
            tenant=tenant,
            model=self.deps.model,
            page_size=len(hashes),
            filter=search_pb2.FaceFilter(photo_hashes=hashes, face_index=0, source=GALLERY),
        )
        faces = await self.deps.search.scroll_all(request, deadline, limit=len(hashes))
        return {f.payload.photo_hash: f.payload.photo_id for f in faces}

    async def _replace_edited(self, tenant: str, photos: list[AnalysedPhoto], deadline: Deadline) -> None:
        """Removes the faces of earlier, different bytes stored under these photo ids."""
        ids = [p.photo.id for p in photos]
        if not ids:
            return
        request = search_pb2.ScrollRequest(
            tenant=tenant,
            model=self.deps.model,
            page_size=1000,
            filter=search_pb2.FaceFilter(photo_ids=ids, source=GALLERY),
        )
        hashes = {p.photo.id: p.photo.content_hash for p in photos}
        stale = [
            f.id
            for f in await self.deps.search.scroll_all(request, deadline, limit=100_000)
            if f.payload.photo_hash != hashes.get(f.payload.photo_id)
        ]
        if stale:
            log.info("replacing edited photos", extra={"tenant": tenant, "faces": len(stale)})
            await self.deps.search.delete(
                search_pb2.DeleteRequest(tenant=tenant, ids=search_pb2.FaceIds(ids=stale)), deadline
            )

    async def _store(self, tenant: str, photos: list[AnalysedPhoto], deadline: Deadline) -> None:
        records = [
            face_record(photo, found, face_index=index, source=GALLERY)
            for photo in photos
            if photo.error is None
            for index, found in enumerate(photo.faces)
        ]
        for start in range(0, len(records), UPSERT_BATCH):
            request = search_pb2.UpsertRequest(
                tenant=tenant, model=self.deps.model, faces=records[start : start + UPSERT_BATCH]
            )
            await self.deps.search.upsert(request, deadline)

    async def delete_photo(self, tenant: str, photo_id: str, deadline: Deadline) -> int:
        """Deletes every face stored from the photo: gallery faces and enrolment references,
        under this id and under any other id the same bytes were stored with in the tenant
        (a photo enrolled without an id is known by its SHA-256, the same photo indexed from
        a folder by its path: deleting either deletes both)."""
        if not photo_id:
            raise invalid("photo_id is required")
        if len(photo_id) > MAX_ID_LENGTH:
            raise invalid(f"photo_id is longer than {MAX_ID_LENGTH} characters")
        same_bytes = await self._faces_of_same_bytes(tenant, photo_id, deadline)
        reply = await self.deps.search.delete(search_pb2.DeleteRequest(tenant=tenant, photo_id=photo_id), deadline)
        deleted = reply.deleted
        if same_bytes:
            request = search_pb2.DeleteRequest(tenant=tenant, ids=search_pb2.FaceIds(ids=same_bytes))
            deleted += (await self.deps.search.delete(request, deadline)).deleted
        if deleted == 0:
            raise not_found(f"no photo {shown(photo_id)} is indexed")
        return deleted

    async def _faces_of_same_bytes(self, tenant: str, photo_id: str, deadline: Deadline) -> list[str]:
        """The ids of the faces stored under other photo ids from the bytes stored as ``photo_id``."""
        scroll = self.deps.search.scroll_all
        request = search_pb2.ScrollRequest(
            tenant=tenant, model=self.deps.model, page_size=1000, filter=search_pb2.FaceFilter(photo_ids=[photo_id])
        )
        hashes = sorted({f.payload.photo_hash for f in await scroll(request, deadline, limit=100_000)} - {""})
        if not hashes:
            return []
        request = search_pb2.ScrollRequest(
            tenant=tenant, model=self.deps.model, page_size=1000, filter=search_pb2.FaceFilter(photo_hashes=hashes)
        )
        return [f.id for f in await scroll(request, deadline, limit=100_000) if f.payload.photo_id != photo_id]

    async def stats(self, tenant: str, deadline: Deadline) -> tuple[int, int]:
        """(photos with at least one stored face, gallery faces) of the model in use."""
        count = self.deps.search.count
        photos, faces = await asyncio.gather(
            count(
                search_pb2.CountRequest(
                    tenant=tenant,
                    model_id=self.deps.model_id,
                    filter=search_pb2.FaceFilter(source=GALLERY, face_index=0),
                ),
                deadline,
            ),
            count(
                search_pb2.CountRequest(
                    tenant=tenant, model_id=self.deps.model_id, filter=search_pb2.FaceFilter(source=GALLERY)
                ),
                deadline,
            ),
        )
        return photos, faces


async def _next_batch(queue: asyncio.Queue[PhotoInput | None], size: int) -> tuple[list[PhotoInput], bool]:
    """Up to ``size`` photos: waits for the first, then takes what arrives within the linger."""
    first = await queue.get()
    if first is None:
        return [], True
    batch = [first]
    loop = asyncio.get_running_loop()
    until = loop.time() + BATCH_LINGER_S
    while len(batch) < size:
        try:
            photo = await asyncio.wait_for(queue.get(), max(0.0, until - loop.time()))
        except TimeoutError:
            break
        if photo is None:
            return batch, True
        batch.append(photo)
    return batch, False


def _duplicate(photo: PhotoInput, first_id: str, when: str) -> facesearch_pb2.PhotoResult:
    same_id = "" if first_id == photo.id else f" as photo {shown(first_id)}"
    return facesearch_pb2.PhotoResult(
        photo_id=photo.id,
        content_hash=photo.content_hash,
        status=facesearch_pb2.PHOTO_STATUS_DUPLICATE,
        message=f"the same bytes were {when}{same_id}",
    )


def _result(photo: AnalysedPhoto) -> facesearch_pb2.PhotoResult:
    result = facesearch_pb2.PhotoResult(photo_id=photo.photo.id, content_hash=photo.photo.content_hash)
    if photo.error is not None:
        code, message = photo.error
        result.status = (
            facesearch_pb2.PHOTO_STATUS_INVALID
            if code == grpc.StatusCode.INVALID_ARGUMENT
            else facesearch_pb2.PHOTO_STATUS_FAILED
        )
        result.message = message
    elif not photo.faces:
        result.status = facesearch_pb2.PHOTO_STATUS_NO_FACE
        skipped = f" ({photo.blurred_skipped} blurred face(s) left out)" if photo.blurred_skipped else ""
        result.message = "no usable face found" + skipped
    else:
        result.status = facesearch_pb2.PHOTO_STATUS_INDEXED
        result.faces_stored = len(photo.faces)
        if photo.blurred_skipped:
            result.message = f"{photo.blurred_skipped} blurred face(s) left out"
    result.faces_found = len(photo.faces) + photo.blurred_skipped
    return result
