"""The same contract, run against every store backend: edge (Qdrant's engine
in-process, on disk) and qdrant (qdrant-client's local mode, the same client
calls as against a Qdrant server). Exact numpy search is the reference."""

from __future__ import annotations

import numpy as np
import pytest

from services.search.faces import FaceFilter, FaceIndex, InvalidRequest, NewFace, Selector, point_id
from services.search.store.edge import EdgeFaceStore, VectorLayout
from services.search.store.qdrant import QdrantFaceStore

MODEL, SIZE = "facenet-casia", 512
MODELS = {MODEL: SIZE, "other-model": 128}
PEOPLE, FACES_PER_PERSON = 12, 6


def face_like_vectors(rng: np.random.Generator, people: int, per_person: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors clustered by identity, with same-person spread like real face embeddings."""
    centres = rng.normal(size=(people, SIZE))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(people), per_person)
    vectors = centres[labels] + rng.normal(scale=0.5 / np.sqrt(SIZE), size=(len(labels), SIZE)) * 1.0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), labels


# The archive layout: int8 vectors searched first and rescored, originals and graph on disk;
# every upsert starts an index build, so the queries meet quantized segments.
INT8_ON_DISK = VectorLayout(quantization="int8", vectors_on_disk=True, hnsw_on_disk=True)
STORES = {
    "edge": lambda folder: EdgeFaceStore(folder),
    "edge-int8-on-disk": lambda folder: EdgeFaceStore(
        folder, layout=INT8_ON_DISK, optimize_after=1, indexing_threshold_kb=1
    ),
    "qdrant": lambda _folder: QdrantFaceStore(path=":memory:"),
    "qdrant-int8-on-disk": lambda _folder: QdrantFaceStore(
        path=":memory:", quantization="int8", vectors_on_disk=True, hnsw_on_disk=True
    ),
}


@pytest.fixture(params=list(STORES))
def index(request, tmp_path):
    store = STORES[request.param](tmp_path / "store")
    yield FaceIndex(store, MODELS, max_batch=100)
    store.close()


@pytest.fixture
def gallery(index):
    """Tenant "acme" gets every face; tenant "globex" a copy of the first person's."""
    rng = np.random.default_rng(7)
    vectors, labels = face_like_vectors(rng, PEOPLE, FACES_PER_PERSON)
    faces = [
        NewFace(
            vector=vector,
            payload={
                "photo_id": f"photo-{i // 2}",
                "photo_hash": f"hash-{i // 2}",
                "face_index": i % 2,
                "person_id": f"person-{label}",
                "source": "enrollment" if i % FACES_PER_PERSON == 0 else "gallery",
                "box": [1.0, 2.0, 3.0, 4.0],
                "confidence": 0.99,
            },
        )
        for i, (vector, label) in enumerate(zip(vectors, labels))
    ]
    ids = index.upsert("acme", MODEL, SIZE, faces)
    index.upsert("globex", MODEL, SIZE, faces[:FACES_PER_PERSON])
    return vectors, labels, ids


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(-(vectors @ query), kind="stable")[:k])


def test_query_returns_the_exact_nearest_faces_best_first(index, gallery):
    vectors, labels, ids = gallery
    queries = vectors[[0, 13, 40]] + 0.01
    results = index.query("acme", MODEL, SIZE, queries.tolist(), top_k=8)
    for query, hits in zip(queries, results):
        query = query / np.linalg.norm(query)
        assert [h.id for h in hits] == [ids[i] for i in exact_top(vectors, query, 8)]
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert scores[0] == pytest.approx(float(vectors[exact_top(vectors, query, 1)[0]] @ query), abs=1e-4)
    same_person = {h.payload["person_id"] for h in results[0][:FACES_PER_PERSON]}
    assert same_person == {f"person-{labels[0]}"}


def test_payload_round_trips(index, gallery):
    _, _, ids = gallery
    [hits] = index.query("acme", MODEL, SIZE, [gallery[0][3].tolist()], top_k=1, with_vectors=True)
    payload = hits[0].payload
    assert hits[0].id == ids[3] == point_id("acme", "hash-1", 1)
    assert payload["tenant"] == "acme" and payload["model_id"] == MODEL
    assert payload["photo_id"] == "photo-1" and payload["box"] == [1.0, 2.0, 3.0, 4.0]
    assert payload["indexed_at"]
    np.testing.assert_allclose(hits[0].vector, gallery[0][3], atol=1e-5)


def test_tenants_never_see_each_others_faces(index, gallery):
    vectors, _, _ = gallery
    far_person = vectors[-1]
    [hits] = index.query("globex", MODEL, SIZE, [far_person.tolist()], top_k=50)
    assert len(hits) == FACES_PER_PERSON
    assert {h.payload["tenant"] for h in hits} == {"globex"}
    assert index.count("acme", MODEL) == PEOPLE * FACES_PER_PERSON
    assert index.count("globex", "") == FACES_PER_PERSON
    assert index.count("initech", MODEL) == 0


def test_upserting_the_same_photo_again_changes_nothing(index, gallery):
    vectors, _, ids = gallery
    again = NewFace(vector=vectors[0], payload={"photo_id": "photo-0", "photo_hash": "hash-0", "face_index": 0})
    assert index.upsert("acme", MODEL, SIZE, [again]) == [ids[0]]
    assert index.count("acme", MODEL) == PEOPLE * FACES_PER_PERSON


def test_filters_by_person_photo_and_source(index, gallery):
    vectors, _, _ = gallery
    q = [vectors[0].tolist()]
    [by_person] = index.query("acme", MODEL, SIZE, q, top_k=50, face_filter=FaceFilter(person_ids=("person-3",)))
    assert {h.payload["person_id"] for h in by_person} == {"person-3"} and len(by_person) == FACES_PER_PERSON
    [by_photo] = index.query("acme", MODEL, SIZE, q, top_k=50, face_filter=FaceFilter(photo_ids=("photo-5", "photo-6")))
    assert sorted(h.payload["photo_id"] for h in by_photo) == ["photo-5"] * 2 + ["photo-6"] * 2
    assert index.count("acme", MODEL, FaceFilter(source="enrollment")) == PEOPLE
    assert index.count("acme", MODEL, FaceFilter(person_ids=("person-1",), source="gallery")) == FACES_PER_PERSON - 1


def test_filters_by_photo_hash_and_face_position(index, gallery):
    vectors, _, _ = gallery
    by_hash = FaceFilter(photo_hashes=("hash-2", "hash-9"))
    [hits] = index.query("acme", MODEL, SIZE, [vectors[0].tolist()], top_k=50, face_filter=by_hash)
    assert sorted(h.payload["photo_hash"] for h in hits) == ["hash-2"] * 2 + ["hash-9"] * 2
    # Face 0 of every photo: one face per photo, which is how photos are counted.
    photos = len(vectors) // 2
    assert index.count("acme", MODEL, FaceFilter(face_index=0)) == photos
    assert index.count("acme", MODEL, FaceFilter(face_index=1, photo_hashes=("hash-3",))) == 1
    with pytest.raises(InvalidRequest, match="face_index"):
        index.count("acme", MODEL, FaceFilter(face_index=-1))


def test_metadata_and_person_name_round_trip(index):
    vector = np.ones(SIZE, np.float32) / np.sqrt(SIZE)
    payload = {"photo_hash": "h", "person_id": "p-1", "person_name": "Ada", "metadata": {"album": "2019"}}
    index.upsert("acme", MODEL, SIZE, [NewFace(vector=vector, payload=payload)])
    [hits] = index.query("acme", MODEL, SIZE, [vector.tolist()], top_k=1)
    assert hits[0].payload["person_name"] == "Ada" and hits[0].payload["metadata"] == {"album": "2019"}


def test_filters_by_a_person_a_face_was_said_not_to_be(index):
    rng = np.random.default_rng(3)
    faces = []
    for i, marks in enumerate([["p-1"], ["p-2", "p-1"], [], ["p-3"]]):
        vector = rng.normal(size=SIZE).astype(np.float32)
        payload = {"photo_hash": f"m{i}", "not_person_ids": marks}
        faces.append(NewFace(vector=vector / np.linalg.norm(vector), payload=payload))
    index.upsert("acme", MODEL, SIZE, faces)
    marked = index.scroll("acme", MODEL, SIZE, FaceFilter(not_person_ids=("p-1",)), page_size=10).faces
    assert sorted(f.payload["photo_hash"] for f in marked) == ["m0", "m1"]
    either = index.scroll("acme", MODEL, SIZE, FaceFilter(not_person_ids=("p-2", "p-3")), page_size=10).faces
    assert sorted(f.payload["photo_hash"] for f in either) == ["m1", "m3"]


def test_score_threshold_cuts_the_list(index, gallery):
    vectors, _, _ = gallery
    [hits] = index.query("acme", MODEL, SIZE, [vectors[0].tolist()], top_k=50, score_threshold=0.5)
    assert hits and all(h.score >= 0.5 for h in hits)
    assert len(hits) == int(np.sum(vectors @ vectors[0] >= 0.5))


def test_scroll_pages_through_everything_once(index, gallery):
    seen, token = [], ""
    while True:
        page = index.scroll("acme", MODEL, SIZE, page_size=7, page_token=token)
        seen += [f.id for f in page.faces]
        if not page.next_token:
            break
        token = page.next_token
    assert len(seen) == len(set(seen)) == PEOPLE * FACES_PER_PERSON
    with pytest.raises(InvalidRequest, match="page_token"):
        index.scroll("acme", MODEL, SIZE, page_token="not-a-token")


def test_scroll_refuses_tokens_it_did_not_issue_for_the_same_listing(index, gallery):
    token = index.scroll("acme", MODEL, SIZE, page_size=5).next_token
    assert token
    for tenant, face_filter in [("globex", None), ("acme", FaceFilter(source="gallery"))]:
        with pytest.raises(InvalidRequest, match="page_token belongs to another Scroll query"):
            index.scroll(tenant, MODEL, SIZE, face_filter, page_size=5, page_token=token)
    altered = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    other_key = FaceIndex(index.store, MODELS, page_token_key=b"another key").scroll("acme", MODEL, SIZE, page_size=5)
    for bad in [altered, token[:-3], other_key.next_token, "0"]:
        with pytest.raises(InvalidRequest, match="page_token is not one Scroll issued"):
            index.scroll("acme", MODEL, SIZE, page_size=5, page_token=bad)
    assert index.scroll("acme", MODEL, SIZE, page_size=5, page_token=token).faces, "its own token is accepted"
    shared = [FaceIndex(index.store, MODELS, page_token_key=b"one key for replicas") for _ in range(2)]
    token = shared[0].scroll("acme", MODEL, SIZE, page_size=5).next_token
    assert shared[1].scroll("acme", MODEL, SIZE, page_size=5, page_token=token).faces


def test_delete_by_ids_photo_person_and_tenant(index, gallery):
    _, _, ids = gallery
    total = PEOPLE * FACES_PER_PERSON
    assert index.delete("globex", MODEL, Selector(ids=(ids[10],))) == 0, "another tenant's id deletes nothing"
    assert index.delete("acme", MODEL, Selector(ids=(ids[10], ids[11]))) == 2
    assert index.delete("acme", "", Selector(photo_id="photo-0")) == 2
    assert index.delete("acme", MODEL, Selector(person_id="person-4")) == FACES_PER_PERSON
    assert index.count("acme", MODEL) == total - 2 - 2 - FACES_PER_PERSON
    assert index.count("acme", MODEL, FaceFilter(photo_ids=("photo-0",))) == 0
    assert index.delete("acme", "", Selector(whole_tenant=True)) == total - 10
    assert index.count("acme", "") == 0
    assert index.count("globex", MODEL) == FACES_PER_PERSON


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda i, v: i.upsert("acme", MODEL, SIZE, [NewFace(v[:100], {"photo_hash": "x"})]), "dimension 100"),
        (lambda i, _: i.upsert("acme", MODEL, SIZE, [NewFace(np.full(SIZE, np.nan), {"photo_hash": "x"})]), "NaN"),
        (lambda i, _: i.upsert("acme", MODEL, SIZE, [NewFace(np.full(SIZE, np.inf), {"photo_hash": "x"})]), "infinite"),
        (lambda i, v: i.upsert("", MODEL, SIZE, [NewFace(v, {"photo_hash": "x"})]), "tenant is required"),
        (lambda i, v: i.upsert("acme", "nope", SIZE, [NewFace(v, {"photo_hash": "x"})]), "unknown model"),
        (lambda i, v: i.upsert("acme", MODEL, 128, [NewFace(v, {"photo_hash": "x"})]), "dimension 512"),
        (
            lambda i, v: i.upsert("acme", MODEL, SIZE, [NewFace(v, {"photo_hash": f"h{n}"}) for n in range(101)]),
            "limit of 100",
        ),
        (lambda i, v: i.upsert("acme", MODEL, SIZE, [NewFace(v, {})]), "photo hash"),
        (lambda i, v: i.upsert("acme", MODEL, SIZE, [NewFace(v, {"photo_hash": "x", "tenant": "globex"})]), "tenant"),
        (lambda i, v: i.query("", MODEL, SIZE, [v.tolist()]), "tenant is required"),
        (lambda i, v: i.query("acme", MODEL, SIZE, [v[:10].tolist()]), "dimension 10"),
        (lambda i, _: i.query("acme", MODEL, SIZE, []), "no query vectors"),
        (lambda i, _: i.delete("acme", MODEL, Selector()), "say what to delete"),
        (lambda i, _: i.count("acme", "nope"), "unknown model"),
    ],
)
def test_bad_requests_are_rejected_and_write_nothing(index, gallery, call, words):
    vector = gallery[0][0]
    before = index.count("acme", "")
    with pytest.raises(InvalidRequest, match=words):
        call(index, vector)
    assert index.count("acme", "") == before


def test_a_batch_with_one_bad_vector_writes_nothing(index, gallery):
    good = NewFace(gallery[0][0] * -1, {"photo_hash": "new-photo"})
    bad = NewFace(np.full(SIZE, np.nan), {"photo_hash": "new-photo", "face_index": 1})
    before = index.count("acme", MODEL)
    with pytest.raises(InvalidRequest):
        index.upsert("acme", MODEL, SIZE, [good, bad])
    assert index.count("acme", MODEL) == before


def test_edge_store_keeps_its_faces_across_restarts_and_builds_the_index(tmp_path):
    rng = np.random.default_rng(3)
    vectors, _ = face_like_vectors(rng, 40, 10)
    store = EdgeFaceStore(tmp_path, optimize_after=300, indexing_threshold_kb=100)
    index = FaceIndex(store, MODELS, max_batch=1000)
    ids = index.upsert("acme", MODEL, SIZE, [NewFace(v, {"photo_hash": f"h{i}"}) for i, v in enumerate(vectors)])
    store.wait_for_optimizers()
    store.close()
    reopened = EdgeFaceStore(tmp_path)
    index = FaceIndex(reopened, MODELS)
    assert index.count("acme", MODEL) == len(vectors)
    [hits] = index.query("acme", MODEL, SIZE, [vectors[123].tolist()], top_k=1)
    assert hits[0].id == ids[123]
    info = reopened._collections[f"faces-{MODEL}-{SIZE}"].shard.info()
    assert info.indexed_vectors_count >= 300, "the HNSW index was built in the background"
    reopened.close()


def test_concurrent_first_upserts_of_a_model_lose_nothing(monkeypatch) -> None:
    """The search service runs store calls on a thread pool: the first upserts of a model,
    made at once, must neither create its collection twice nor lose each other's points.
    (Collection creation is slowed down so that the threads meet in it every time.)"""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    store = QdrantFaceStore(path=":memory:")
    create = store.client.create_collection

    def slow_create(*args, **kwargs):
        time.sleep(0.05)
        return create(*args, **kwargs)

    monkeypatch.setattr(store.client, "create_collection", slow_create)
    index = FaceIndex(store, MODELS, max_batch=100)
    vectors, _ = face_like_vectors(np.random.default_rng(11), 4, 8)
    batches = [
        [NewFace(vectors[b * 8 + i], {"photo_id": f"p{b}-{i}", "photo_hash": f"h{b}-{i}"}) for i in range(8)]
        for b in range(4)
    ]
    start = threading.Barrier(len(batches))

    def upsert(batch):
        start.wait()
        return index.upsert("acme", MODEL, SIZE, batch)

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        list(pool.map(upsert, batches))
    assert index.count("acme", MODEL) == 32
    store.close()
