"""ClusterFaces: groups the tenant's indexed faces by person, named or not.

Each face is linked to its nearest neighbours at or above the threshold (found by the
search service, so this scales with its index, not with faces squared); the connected
groups are the clusters. A cluster is named after the enrolled person its mean
vector matches, if any. Faces of one photo are different people, so a link between
two faces of the same photo is never made.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from facesearch.v1 import facesearch_pb2, search_pb2
from gateway.dependencies import Dependencies
from gateway.errors import invalid
from services.runtime.deadlines import Deadline

GALLERY = search_pb2.FACE_SOURCE_GALLERY
ENROLLMENT = search_pb2.FACE_SOURCE_ENROLLMENT
NEIGHBOURS = 20


class Clusterer:
    def __init__(self, deps: Dependencies, max_faces: int) -> None:
        self.deps = deps
        self.max_faces = max_faces

    async def cluster(
        self, tenant: str, threshold: float, min_size: int, deadline: Deadline
    ) -> list[facesearch_pb2.FaceCluster]:
        min_size = min_size or 2
        if min_size < 1:
            raise invalid(f"min_cluster_size must be at least 1, got {min_size}")
        request = search_pb2.ScrollRequest(
            tenant=tenant,
            model=self.deps.model,
            page_size=1000,
            with_vectors=True,
            filter=search_pb2.FaceFilter(source=GALLERY),
        )
        faces = await self.deps.search.scroll_all(request, deadline, limit=self.max_faces + 1)
        if len(faces) > self.max_faces:
            raise invalid(f"the tenant has more than {self.max_faces} faces; clustering is limited to that many")
        if not faces:
            return []
        position = {face.id: i for i, face in enumerate(faces)}
        vectors = np.asarray([list(face.vector) for face in faces], dtype=np.float32)
        neighbours = await self.deps.query(tenant, vectors, NEIGHBOURS, threshold, GALLERY, deadline)
        links = [
            (i, j)
            for i, hits in enumerate(neighbours)
            for j in (position.get(hit.face.id) for hit in hits)
            if j is not None and faces[j].payload.photo_id != faces[i].payload.photo_id
        ]
        ends = np.asarray(links, dtype=np.int64).reshape(-1, 2)
        graph = coo_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(len(faces), len(faces)))
        _, labels = connected_components(graph, directed=False)
        groups: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault(int(label), []).append(i)
        kept = sorted((g for g in groups.values() if len(g) >= min_size), key=lambda g: (-len(g), g[0]))
        centres = np.stack([vectors[g].mean(axis=0) for g in kept]) if kept else np.zeros((0, vectors.shape[1]))
        names = await self.deps.query(tenant, centres, 1, threshold, ENROLLMENT, deadline) if kept else []
        return [
            facesearch_pb2.FaceCluster(
                cluster_id=f"cluster-{number}",
                faces=[
                    facesearch_pb2.FaceRef(
                        photo_id=faces[i].payload.photo_id,
                        face_index=faces[i].payload.face_index,
                        box=faces[i].payload.box,
                    )
                    for i in group
                ],
                person_id=named[0].face.payload.person_id if named else "",
            )
            for number, (group, named) in enumerate(zip(kept, names, strict=True), start=1)
        ]
