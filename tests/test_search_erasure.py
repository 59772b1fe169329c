"""Deleting erases: after a delete by photo, by person or of a whole tenant, the deleted
faces' vectors and payload strings are in no file of the store's folder within the bound
(``erase_after_s`` and the rewrite), the other faces are all there and found, and so they
stay after a restart. Run against every backend that keeps its faces on disk: edge, and
qdrant-client's local mode in a folder."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from services.search.faces import FaceIndex, NewFace, Selector, collection_name
from services.search.store.base import Conditions, FaceStore
from services.search.store.edge import EdgeFaceStore
from services.search.store.qdrant import QdrantFaceStore

MODEL, SIZE = "facenet-casia", 512
KEPT_TENANT, GONE_TENANT = "tenant-keeps-faces", "tenant-erased-whole"
GONE_PHOTO, GONE_PERSON, GONE_NAME = "photo-erased-by-id", "person-erased-by-id", "Wilhelmina Quaxby"
ERASE_AFTER_S = 0.5
NEEDLE_MAX = 4 * SIZE
BOUND_S = 20.0  # erase_after_s and the rewrite of a few small segments, on a loaded machine

BACKENDS: dict[str, Callable[[Path], FaceStore]] = {
    "edge": lambda folder: EdgeFaceStore(folder, erase_after_s=ERASE_AFTER_S),
    "qdrant-local": lambda folder: QdrantFaceStore(path=str(folder)),
}


def encodings(vector: np.ndarray) -> list[bytes]:
    """The bytes of a vector as a store may write them: float32 little-endian (the engine's
    vector files), and the pickled floats of qdrant-client's local mode (big-endian doubles)."""
    return [
        vector.astype("<f4").tobytes(),
        b"".join(b"G" + struct.pack(">d", float(v)) for v in vector[:16]),
    ]


class Files:
    """The bytes of every file under a folder, as they are now (without the zeros that fill
    the end of a file allocated ahead, a needle's length kept: searching them is slow)."""

    def __init__(self, folder: Path) -> None:
        self.contents = {}
        for parent, _, names in os.walk(folder):  # a folder removed meanwhile is passed over
            for name in names:
                path = Path(parent, name)
                try:
                    content = path.read_bytes()
                except FileNotFoundError:  # removed since it was listed: its bytes are gone
                    continue
                self.contents[str(path.relative_to(folder))] = content[: len(content.rstrip(b"\0")) + NEEDLE_MAX]

    def holding(self, needle: bytes) -> list[str]:
        return [name for name, content in self.contents.items() if needle in content]

    def hold_vector(self, vector: np.ndarray) -> bool:
        return any(self.holding(needle) for needle in encodings(vector))

    def hold_string(self, text: str) -> bool:
        return bool(self.holding(text.encode()))


def faces(rng: np.random.Generator, count: int, **payload: str) -> list[NewFace]:
    vectors = rng.normal(size=(count, SIZE)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        NewFace(vector=v, payload={"photo_hash": f"{payload.get('photo_id', 'kept')}-{i}", **payload})
        for i, v in enumerate(vectors)
    ]


@pytest.fixture(params=list(BACKENDS))
def backend(request) -> Callable[[Path], FaceStore]:
    return BACKENDS[request.param]


def test_deleted_faces_leave_no_bytes_on_disk_and_the_others_stay(backend, tmp_path):
    folder = tmp_path / "store"
    store = backend(folder)
    index = FaceIndex(store, {MODEL: SIZE})
    rng = np.random.default_rng(11)
    kept = [f for n in range(4) for f in faces(rng, 5, photo_id=f"kept-photo-{n}", person_id=f"kept-person-{n}")]
    by_photo = faces(rng, 3, photo_id=GONE_PHOTO, person_id="kept-person-0")
    by_person = faces(rng, 3, photo_id="kept-photo-0", person_id=GONE_PERSON, person_name=GONE_NAME)
    for n, face in enumerate(by_person):
        face.payload["photo_hash"] = f"person-photo-{n}"
    tenant_faces = faces(rng, 4, photo_id="photo-of-erased-tenant", person_name="Bartholomew Fjordvik")
    index.upsert(KEPT_TENANT, MODEL, SIZE, kept + by_photo + by_person)
    index.upsert(GONE_TENANT, MODEL, SIZE, tenant_faces)
    gone = by_photo + by_person + tenant_faces
    strings = [GONE_PHOTO, GONE_PERSON, GONE_NAME, GONE_TENANT, "photo-of-erased-tenant", "Bartholomew Fjordvik"]
    # The search sees what the store writes: every face and string is on disk before the deletes.
    files = Files(folder)
    assert all(files.hold_vector(f.vector) for f in kept + gone)
    assert all(files.hold_string(s) for s in strings)

    assert index.delete(KEPT_TENANT, MODEL, Selector(photo_id=GONE_PHOTO)) == 3
    assert index.delete(KEPT_TENANT, MODEL, Selector(person_id=GONE_PERSON)) == 3
    assert index.delete(GONE_TENANT, MODEL, Selector(whole_tenant=True)) == 4
    started = time.monotonic()

    def erased() -> bool:
        files = Files(folder)
        left = [s for s in strings if files.hold_string(s)] + [
            f"vector {i}" for i, f in enumerate(gone) if files.hold_vector(f.vector)
        ]
        assert not left or time.monotonic() - started < BOUND_S, f"still on disk: {left}"
        return not left

    while not erased():
        time.sleep(0.2)
    print(
        f"{type(store).__name__}: deleted faces gone from the files {time.monotonic() - started:.1f} s after deleting",
    )

    def check_kept(index: FaceIndex) -> None:
        files = Files(folder)
        assert all(files.hold_vector(f.vector) for f in kept)
        assert index.count(KEPT_TENANT, MODEL) == len(kept) and index.count(GONE_TENANT, MODEL) == 0
        hits = index.query(KEPT_TENANT, MODEL, SIZE, [f.vector.tolist() for f in kept], top_k=1)
        assert [h[0].payload["photo_hash"] for h in hits] == [f.payload["photo_hash"] for f in kept]
        assert all(h[0].score == pytest.approx(1.0, abs=1e-4) for h in hits)

    check_kept(index)
    store.close()
    reopened = backend(folder)
    try:
        check_kept(FaceIndex(reopened, {MODEL: SIZE}))
        assert erased()
    finally:
        reopened.close()


def test_an_edge_shard_with_a_write_ahead_log_is_rewritten_without_what_it_deleted(tmp_path):
    # A shard as earlier versions made it: a write-ahead log, deletes that only mark points.
    folder = tmp_path / "store"
    name = collection_name(MODEL, SIZE)
    shard = qe.EdgeShard.create(
        str(folder / name), qe.EdgeConfig(vectors={"": qe.EdgeVectorParams(size=SIZE, distance=qe.Distance.Cosine)})
    )
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(6, SIZE)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    points = [
        qe.Point(f"00000000-0000-0000-0000-00000000000{i}", v.tolist(), {"tenant": "t", "photo_id": f"old-photo-{i}"})
        for i, v in enumerate(vectors)
    ]
    shard.update(qe.UpdateOperation.upsert_points(points))
    shard.update(qe.UpdateOperation.delete_points([points[0].id]))
    shard.flush()
    shard.close()
    files = Files(folder)
    assert files.hold_vector(vectors[0]) and files.hold_string("old-photo-0")

    store = EdgeFaceStore(folder, erase_after_s=ERASE_AFTER_S)
    try:
        store.wait_for_optimizers()
        files = Files(folder)
        assert not files.hold_vector(vectors[0]) and not files.hold_string("old-photo-0")
        assert [p.name for p in folder.iterdir()] == [name]
        faces, _ = store.scroll(name, Conditions(match_any={"tenant": ("t",)}), 10, None, with_vectors=True)
        assert sorted(f.payload["photo_id"] for f in faces) == [f"old-photo-{i}" for i in range(1, 6)]
        assert all(files.hold_vector(v) for v in vectors[1:])
    finally:
        store.close()
