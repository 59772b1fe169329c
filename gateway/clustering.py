"""One clustering run over a tenant's indexed faces: who is the same, possibly unnamed, person.

The rule is density-based (DBSCAN's): two faces are close when their cosine similarity is
at least the model's cluster threshold (stricter than its match threshold); a face with at
least ``cluster_min_neighbours`` close faces of other photos is a core face; clusters grow
only through core faces (a core face joins the cluster of every close core face), and a
face that is not core joins the cluster of its closest core face, if any, as a border face.
So one stranger who looks like two people cannot chain their clusters together, as linking
every close pair would.

Everything the rule needs is kept with each face in the search service (``cluster_id``,
``cluster_core``, ``cluster_run``: the run that last looked at it), so a run only looks at
the faces no run has seen (``cluster_run`` 0) and their close faces: its cost grows with the
faces added since the last run, not with the archive. Neighbours come from the search
service's nearest-neighbour queries, never an all-pairs matrix. A full run looks at every
face again, in pages, and keeps the id of each cluster that survives it: a new cluster takes
the old id most of its faces had, if no larger one took it first.

Two faces of one photo are different people: a face never joins a cluster that holds a face
of its photo, and two clusters sharing a photo are not merged. A face said not to be a
person (``not_person_ids``) never joins a cluster named as them. Faces that are blurred or
smaller than ``cluster_min_face_size`` are not clustered (they can still be found).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from facesearch.v1 import search_pb2
from gateway.dependencies import Dependencies
from services.runtime.deadlines import Deadline

GALLERY = search_pb2.FACE_SOURCE_GALLERY
PAGE = 1000  # faces a run reads and settles at a time
UPSERT_BATCH = 256
QUERY_BATCH = 64


def new_cluster_id() -> str:
    return f"c{time.time_ns():x}"


def clusterable(payload: search_pb2.FacePayload, min_face_size: float) -> bool:
    return not payload.quality.blurred and payload.quality.face_size >= min_face_size


@dataclass
class RunCounts:
    """What a run has done so far (its progress) and, at the end, what it found."""

    faces_to_do: int = 0
    faces_done: int = 0
    clustered: int = 0  # faces of this run that ended in a cluster
    unclustered: int = 0


class _Sets:
    """Union-find over string keys."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class _Page:
    """The faces one step of a run settles, with what the rule says of them."""

    faces: dict[str, search_pb2.FaceRecord] = field(default_factory=dict)  # id -> face (with vector)
    close: dict[str, list[search_pb2.FaceRecord]] = field(default_factory=dict)  # id -> close faces, closest first


class ClusteringRun:
    """One run for one tenant (``full``: every face; else the faces no run has seen)."""

    def __init__(self, deps: Dependencies, tenant: str, full: bool, progress: Callable[[RunCounts], None]) -> None:
        self.deps = deps
        self.tenant = tenant
        self.full = full
        self.progress = progress
        self.run_id = time.time_ns() // 1000  # microseconds: later runs have larger ids
        settings = deps.settings
        self.threshold = settings.cluster_threshold(deps.model_id)
        self.min_neighbours = settings.cluster_min_neighbours
        self.neighbours = settings.cluster_neighbours
        self.min_face_size = settings.cluster_min_face_size
        self.counts = RunCounts()
        self.ids_taken: set[str] = set()  # cluster ids given out by this (full) run

    # --- what counts as settled ----------------------------------------------------------------

    def settled(self, face: search_pb2.FaceRecord) -> bool:
        """Whether the face's cluster state is this run's to build on (seen by a run since it
        was indexed; in a full run: seen by this run)."""
        run = face.payload.cluster_run
        return run == self.run_id if self.full else run != 0

    # --- the run ---------------------------------------------------------------------------------

    async def run(self, deadline: Deadline) -> RunCounts:
        face_filter = search_pb2.FaceFilter(source=GALLERY)
        if not self.full:
            face_filter.cluster_run = 0
        self.counts.faces_to_do = await self._count(face_filter, deadline)
        self.progress(self.counts)
        request = search_pb2.ScrollRequest(
            tenant=self.tenant, model=self.deps.model, page_size=PAGE, with_vectors=True, filter=face_filter
        )
        while True:
            reply = await self.deps.search.scroll(request, deadline)
            faces = [f for f in reply.faces if self.full or f.payload.cluster_run == 0]
            if faces:
                await self._settle(faces, deadline)
            if not reply.next_page_token:
                return self.counts
            request.page_token = reply.next_page_token

    async def _count(self, face_filter: search_pb2.FaceFilter, deadline: Deadline) -> int:
        request = search_pb2.CountRequest(tenant=self.tenant, model_id=self.deps.model_id, filter=face_filter)
        return await self.deps.search.count(request, deadline)

    async def _close_faces(
        self, faces: list[search_pb2.FaceRecord], deadline: Deadline
    ) -> dict[str, list[search_pb2.FaceRecord]]:
        """The clusterable faces of other photos close to each face, closest first."""
        close: dict[str, list[search_pb2.FaceRecord]] = {}
        for start in range(0, len(faces), QUERY_BATCH):
            chunk = faces[start : start + QUERY_BATCH]
            request = search_pb2.QueryRequest(
                tenant=self.tenant,
                model=self.deps.model,
                top_k=self.neighbours + 1,
                score_threshold=self.threshold,
                vectors=[search_pb2.QueryVector(values=list(f.vector)) for f in chunk],
                filter=search_pb2.FaceFilter(source=GALLERY),
            )
            reply = await self.deps.search.query(request, deadline)
            for face, result in zip(chunk, reply.results, strict=True):
                close[face.id] = [
                    hit.face
                    for hit in result.hits
                    if hit.face.id != face.id
                    and hit.face.payload.photo_id != face.payload.photo_id
                    and clusterable(hit.face.payload, self.min_face_size)
                ][: self.neighbours]
        return close

    async def _with_vectors(self, face_ids: list[str], deadline: Deadline) -> list[search_pb2.FaceRecord]:
        """The stored archive faces of these ids, vectors included (a face deleted meanwhile is
        not among them)."""
        faces: list[search_pb2.FaceRecord] = []
        for start in range(0, len(face_ids), PAGE):
            request = search_pb2.ScrollRequest(
                tenant=self.tenant,
                model=self.deps.model,
                page_size=PAGE,
                with_vectors=True,
                filter=search_pb2.FaceFilter(source=GALLERY, face_ids=face_ids[start : start + PAGE]),
            )
            faces += await self.deps.search.scroll_all(request, deadline, limit=PAGE)
        return faces

    async def _settle(self, faces: list[search_pb2.FaceRecord], deadline: Deadline) -> None:
        """Runs the rule over one page of faces (and the settled faces it changes), and stores
        the outcome."""
        page = _Page()
        skipped = []
        for face in faces:
            if clusterable(face.payload, self.min_face_size):
                page.faces[face.id] = face
            else:
                skipped.append(face)
        page.close = await self._close_faces(list(page.faces.values()), deadline)
        # Settled faces close to this page's faces that were not core may be core now.
        revisit = {
            other.id: other
            for neighbours in page.close.values()
            for other in neighbours
            if other.id not in page.faces and self.settled(other) and not other.payload.cluster_core
        }
        if revisit:
            revisited = await self._with_vectors(list(revisit), deadline)  # query hits come without them
            page.faces.update({face.id: face for face in revisited})
            page.close.update(await self._close_faces(revisited, deadline))
        changed = await self._assign(page, deadline)
        for face in skipped:
            face.payload.cluster_id, face.payload.cluster_core = "", False
        for face in [*skipped, *page.faces.values()]:
            face.payload.cluster_run = self.run_id
        written = {f.id: f for f in [*skipped, *page.faces.values(), *changed]}
        await self._store(list(written.values()), deadline)
        self.counts.faces_done += len(faces)
        asked = {face.id for face in faces}
        mine = [f for f in [*skipped, *page.faces.values()] if f.id in asked]
        self.counts.clustered += sum(1 for f in mine if f.payload.cluster_id)
        self.counts.unclustered += sum(1 for f in mine if not f.payload.cluster_id)
        self.progress(self.counts)

    def _is_core(self, face_id: str, page: _Page) -> bool:
        return len(page.close.get(face_id, [])) >= self.min_neighbours

    async def _assign(self, page: _Page, deadline: Deadline) -> list[search_pb2.FaceRecord]:
        """Sets cluster_id and cluster_core of the page's faces; returns the settled faces outside
        the page whose cluster changed (merged clusters, border faces taken in)."""
        sets = _Sets()
        core = {face_id for face_id in page.faces if self._is_core(face_id, page)}
        outside: dict[str, search_pb2.FaceRecord] = {}
        for face_id in core:
            sets.find(face_id)
            own = page.faces[face_id].payload.cluster_id
            if own and self.settled(page.faces[face_id]) and not self.full:
                sets.union(face_id, f"cluster:{own}")
            for other in page.close[face_id]:
                if other.id in page.faces:
                    if other.id in core:
                        sets.union(face_id, other.id)
                elif self.settled(other) and other.payload.cluster_core and other.payload.cluster_id:
                    sets.union(face_id, f"cluster:{other.payload.cluster_id}")
                    outside.setdefault(other.id, other)
        groups: dict[str, list[str]] = defaultdict(list)  # root -> core face ids of the page
        clusters_of: dict[str, set[str]] = defaultdict(set)  # root -> settled cluster ids joined
        for key in list(sets.parent):
            root = sets.find(key)
            if key.startswith("cluster:"):
                clusters_of[root].add(key.removeprefix("cluster:"))
            else:
                groups[root].append(key)
        changed: list[search_pb2.FaceRecord] = []
        cluster_of_face: dict[str, str] = {}
        for root, members in groups.items():
            cluster_id, merged = await self._cluster_id(members, sorted(clusters_of[root]), page, deadline)
            for face_id in members:
                cluster_of_face[face_id] = cluster_id
            if merged:
                changed += await self._relabel(merged, cluster_id, deadline)
        # Border faces: not core, close to a core face; they join its cluster.
        for face_id in page.faces:
            if face_id in core:
                continue
            cluster_of_face[face_id] = ""
            for other in page.close.get(face_id, []):
                if other.id in core:
                    cluster_of_face[face_id] = cluster_of_face[other.id]
                    break
                if other.id not in page.faces and self.settled(other) and other.payload.cluster_core:
                    cluster_of_face[face_id] = other.payload.cluster_id
                    break
        # Settled faces that are not core and in no cluster, close to a core face of the page.
        for face_id in core:
            for other in page.close[face_id]:
                settled = other.id not in page.faces and self.settled(other)
                if settled and not other.payload.cluster_id and not other.payload.cluster_core:
                    outside.setdefault(other.id, other)
                    cluster_of_face.setdefault(other.id, cluster_of_face[face_id])
        faces = {**outside, **page.faces}
        known = [*faces.values(), *(f for close in page.close.values() for f in close if self.settled(f))]
        people = self._people_of(known)
        await self._keep_photos_apart(cluster_of_face, faces, people, deadline)
        for face_id, cluster_id in cluster_of_face.items():
            face = faces[face_id]
            before = face.payload.cluster_id
            face.payload.cluster_id = cluster_id
            if face_id in page.faces:
                face.payload.cluster_core = face_id in core
            person = people.get(cluster_id)
            if cluster_id and person and not face.payload.person_id:
                face.payload.person_id, face.payload.person_name = person
            if face_id not in page.faces and cluster_id != before:
                changed.append(face)
        return changed

    async def _cluster_id(
        self, members: list[str], joined: list[str], page: _Page, deadline: Deadline
    ) -> tuple[str, list[str]]:
        """The id of the cluster these core faces form (joining the settled clusters ``joined``),
        and the settled clusters to merge into it."""
        if joined:
            keep = joined[0]  # the oldest: ids grow with time
            merged = []
            for other in joined[1:]:
                if await self._share_a_photo(keep, other, deadline):
                    continue  # two people who met in one photo: kept apart
                merged.append(other)
            return keep, merged
        if self.full:  # the old id most of these faces had, if this run has not given it out
            old = Counter(page.faces[m].payload.cluster_id for m in members if page.faces[m].payload.cluster_id)
            for cluster_id, _ in old.most_common():
                if cluster_id not in self.ids_taken:
                    self.ids_taken.add(cluster_id)
                    return cluster_id, []
        cluster_id = new_cluster_id()
        self.ids_taken.add(cluster_id)
        return cluster_id, []

    def _settled_filter(self, **fields) -> search_pb2.FaceFilter:
        """A filter of settled gallery faces (in a full run, a face's cluster from an earlier run
        is not yet this run's)."""
        face_filter = search_pb2.FaceFilter(source=GALLERY, **fields)
        if self.full:
            face_filter.cluster_run = self.run_id
        return face_filter

    async def _cluster_faces(
        self, cluster_ids: list[str], deadline: Deadline, with_vectors: bool
    ) -> list[search_pb2.FaceRecord]:
        request = search_pb2.ScrollRequest(
            tenant=self.tenant,
            model=self.deps.model,
            page_size=PAGE,
            with_vectors=with_vectors,
            filter=self._settled_filter(cluster_ids=cluster_ids),
        )
        return await self.deps.search.scroll_all(request, deadline, limit=10_000_000)

    async def _share_a_photo(self, a: str, b: str, deadline: Deadline) -> bool:
        faces = await self._cluster_faces([a, b], deadline, with_vectors=False)
        photos = defaultdict(set)
        for face in faces:
            photos[face.payload.cluster_id].add(face.payload.photo_id)
        return bool(photos[a] & photos[b])

    async def _relabel(self, merged: list[str], cluster_id: str, deadline: Deadline) -> list[search_pb2.FaceRecord]:
        faces = await self._cluster_faces(merged, deadline, with_vectors=True)
        for face in faces:
            face.payload.cluster_id = cluster_id
        return faces

    @staticmethod
    def _people_of(known: list[search_pb2.FaceRecord]) -> dict[str, tuple[str, str]]:
        """The person each cluster among these faces was named as: (person id, name), the most
        common among its faces that have one."""
        named: dict[str, Counter] = defaultdict(Counter)
        for face in known:
            if face.payload.person_id and face.payload.cluster_id:
                named[face.payload.cluster_id][(face.payload.person_id, face.payload.person_name)] += 1
        return {cluster_id: counts.most_common(1)[0][0] for cluster_id, counts in named.items()}

    async def _keep_photos_apart(
        self,
        cluster_of_face: dict[str, str],
        faces: dict[str, search_pb2.FaceRecord],
        people: dict[str, tuple[str, str]],
        deadline: Deadline,
    ) -> None:
        """Leaves out of its cluster a face whose photo already has a face there (the core and
        closest faces keep their place), or who was said not to be the cluster's person."""
        taken: dict[tuple[str, str], str] = {}  # (cluster, photo) -> face id
        order = sorted(cluster_of_face, key=lambda i: (not faces[i].payload.cluster_core, i))
        for face_id in order:
            cluster_id = cluster_of_face[face_id]
            if not cluster_id:
                continue
            face = faces[face_id]
            person = people.get(cluster_id)
            if person and person[0] in face.payload.not_person_ids:
                cluster_of_face[face_id] = ""
                continue
            key = (cluster_id, face.payload.photo_id)
            if key in taken:
                cluster_of_face[face_id] = ""
                continue
            if face.payload.cluster_id != cluster_id:
                count = await self._count(
                    self._settled_filter(photo_ids=[face.payload.photo_id], cluster_ids=[cluster_id]), deadline
                )
                if count:
                    cluster_of_face[face_id] = ""
                    continue
            taken[key] = face_id

    async def _store(self, faces: list[search_pb2.FaceRecord], deadline: Deadline) -> None:
        """Writes the faces back; those read without their vector (close faces a query gave)
        get it read first."""
        missing = {f.id: f for f in faces if not f.vector}
        for stored in await self._with_vectors(list(missing), deadline):
            missing[stored.id].vector.extend(stored.vector)
        faces = [f for f in faces if f.vector]  # a face deleted meanwhile is not written back
        for start in range(0, len(faces), UPSERT_BATCH):
            request = search_pb2.UpsertRequest(
                tenant=self.tenant, model=self.deps.model, faces=faces[start : start + UPSERT_BATCH]
            )
            await self.deps.search.upsert(request, deadline)
