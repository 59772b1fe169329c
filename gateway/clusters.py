"""The tenant's clusters: clustering runs in the background, their status, and the stored
clusters listed page by page (ClusterFaces, StartClustering, GetClusteringStatus).

One run at a time per tenant and gateway process; a run starts on request (StartClustering)
or by itself once ``cluster_after_new_faces`` faces were indexed through this gateway since
its last run. The status of the current or last run is kept in memory; the clusters
themselves are in the faces' payloads (``gateway.clustering``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict

from facesearch.v1 import facesearch_pb2, search_pb2
from gateway import paging
from gateway.clustering import GALLERY, ClusteringRun, RunCounts
from gateway.dependencies import Dependencies
from gateway.errors import invalid
from services.runtime.deadlines import Deadline
from services.runtime.page_tokens import PageTokens, query_fingerprint

log = logging.getLogger(__name__)

RUNNING = facesearch_pb2.CLUSTERING_STATE_RUNNING
DONE = facesearch_pb2.CLUSTERING_STATE_DONE
FAILED = facesearch_pb2.CLUSTERING_STATE_FAILED
DEFAULT_PAGE_SIZE = 50
DEFAULT_FACES_PER_CLUSTER = 12
MAX_LISTED_FACES = 1_000_000  # clustered faces read to list the clusters


def face_ref(face: search_pb2.FaceRecord) -> facesearch_pb2.FaceRef:
    payload = face.payload
    return facesearch_pb2.FaceRef(
        photo_id=payload.photo_id,
        face_index=payload.face_index,
        box=payload.box,
        face_id=face.id,
        photo_uri=payload.photo_uri,
        reference=payload.source == search_pb2.FACE_SOURCE_ENROLLMENT,
    )


def quality_order(face: search_pb2.FaceRecord) -> tuple:
    """Best first: sharp before blurred, then larger, then sharper."""
    quality = face.payload.quality
    return (quality.blurred, -quality.face_size, -quality.blur_variance, face.id)


class Clusters:
    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps
        self.status: dict[str, facesearch_pb2.ClusteringStatus] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.indexed_since_run: dict[str, int] = defaultdict(int)
        self.tokens = PageTokens("ClusterFaces", deps.settings.page_key())

    # --- runs ------------------------------------------------------------------------------------

    def current(self, tenant: str) -> facesearch_pb2.ClusteringStatus:
        return self.status.get(tenant, facesearch_pb2.ClusteringStatus())

    def running(self, tenant: str) -> bool:
        task = self.tasks.get(tenant)
        return task is not None and not task.done()

    def start(self, tenant: str, full: bool) -> facesearch_pb2.ClusteringStatus:
        """Starts a run unless one is going on (then its status is the answer)."""
        if self.running(tenant):
            return self.current(tenant)
        status = facesearch_pb2.ClusteringStatus(state=RUNNING, full=full)
        self.status[tenant] = status
        self.indexed_since_run[tenant] = 0
        self.tasks[tenant] = asyncio.get_running_loop().create_task(self._run(tenant, full, status))
        return status

    def faces_indexed(self, tenant: str, count: int) -> None:
        """Counts faces stored by indexing; starts a run once there are enough."""
        after = self.deps.settings.cluster_after_new_faces
        if count <= 0 or after <= 0:
            return
        self.indexed_since_run[tenant] += count
        if self.indexed_since_run[tenant] >= after:
            self.start(tenant, full=False)

    async def wait(self, tenant: str) -> facesearch_pb2.ClusteringStatus:
        """The status once the tenant's current run (if any) is over."""
        task = self.tasks.get(tenant)
        if task is not None:
            await asyncio.shield(task)
        return self.current(tenant)

    async def _run(self, tenant: str, full: bool, status: facesearch_pb2.ClusteringStatus) -> None:
        started = time.monotonic()

        def progress(counts: RunCounts) -> None:
            status.faces_to_do, status.faces_done = counts.faces_to_do, counts.faces_done
            status.seconds = time.monotonic() - started

        try:
            run = ClusteringRun(self.deps, tenant, full, progress)
            status.run = run.run_id
            counts = await run.run(Deadline.after(self.deps.settings.cluster_run_timeout_s))
            status.clustered_faces, status.unclustered_faces = counts.clustered, counts.unclustered
            status.clusters = len(await self._sizes(tenant, Deadline.after(self.deps.settings.request_timeout_s)))
            status.state = DONE
            log.info("clustering run %s of tenant %s: %s", status.run, tenant, counts)
        except Exception as error:  # the run's failure is its status; the gateway goes on
            log.exception("clustering run of tenant %s failed", tenant)
            status.state, status.error = FAILED, f"{error.__class__.__name__}: {error}"[:500]
        finally:
            status.seconds = time.monotonic() - started

    # --- listing ---------------------------------------------------------------------------------

    async def _clustered(self, tenant: str, deadline: Deadline) -> list[search_pb2.FaceRecord]:
        request = search_pb2.ScrollRequest(
            tenant=tenant, model=self.deps.model, page_size=1000, filter=search_pb2.FaceFilter(source=GALLERY)
        )
        faces = await self.deps.search.scroll_all(request, deadline, limit=MAX_LISTED_FACES)
        return [face for face in faces if face.payload.cluster_id]

    async def _sizes(self, tenant: str, deadline: Deadline) -> dict[str, int]:
        sizes: dict[str, int] = defaultdict(int)
        for face in await self._clustered(tenant, deadline):
            sizes[face.payload.cluster_id] += 1
        return sizes

    async def page(
        self, tenant: str, request: facesearch_pb2.ClusterFacesRequest, deadline: Deadline
    ) -> facesearch_pb2.ClusterFacesResponse:
        """The stored clusters, largest first, one page of them."""
        min_size = request.min_cluster_size or 2
        limit = self.deps.settings.max_page_size
        if min_size < 1:
            raise invalid(f"min_cluster_size must be at least 1, got {min_size}")
        size = paging.page_size(request.page_size, DEFAULT_PAGE_SIZE, limit)
        per_cluster = paging.page_size(request.faces_per_cluster, DEFAULT_FACES_PER_CLUSTER, limit, "faces_per_cluster")
        query = query_fingerprint("ClusterFaces", tenant, min_size, request.include_named)
        start = paging.page_start(self.tokens, request.page_token, query)
        members: dict[str, list[search_pb2.FaceRecord]] = defaultdict(list)
        for face in await self._clustered(tenant, deadline):
            members[face.payload.cluster_id].append(face)
        clusters = []
        for cluster_id, faces in members.items():
            named = [f for f in faces if f.payload.person_id]
            if len(faces) < min_size or (named and not request.include_named):
                continue
            clusters.append((cluster_id, faces, named))
        clusters.sort(key=lambda c: (-len(c[1]), c[0]))
        chosen, token = paging.one_page(clusters, start, size, self.tokens, query)
        listed = []
        for cluster_id, faces, named in chosen:
            counts = Counter((f.payload.person_id, f.payload.person_name) for f in named)
            person = counts.most_common(1)[0][0] if counts else ("", "")
            listed.append(
                facesearch_pb2.FaceCluster(
                    cluster_id=cluster_id,
                    faces=[face_ref(f) for f in sorted(faces, key=quality_order)[:per_cluster]],
                    person_id=person[0],
                    display_name=person[1],
                    face_count=len(faces),
                )
            )
        return facesearch_pb2.ClusterFacesResponse(clusters=listed, next_page_token=token, status=self.current(tenant))

    async def faces_of(self, tenant: str, cluster_id: str, deadline: Deadline) -> list[search_pb2.FaceRecord]:
        """Every face of the cluster, with vectors."""
        request = search_pb2.ScrollRequest(
            tenant=tenant,
            model=self.deps.model,
            page_size=1000,
            with_vectors=True,
            filter=search_pb2.FaceFilter(source=GALLERY, cluster_ids=[cluster_id]),
        )
        return await self.deps.search.scroll_all(request, deadline, limit=MAX_LISTED_FACES)
