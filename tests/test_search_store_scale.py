"""Archive-scale store layouts: int8 quantization with rescoring and vectors and HNSW graph on
disk in the edge backend, and what the qdrant backend asks a Qdrant server cluster for.

No Qdrant server can run here, so the cluster tests point qdrant-client at a stand-in: a real
HTTP server on loopback that records every request and answers the least valid JSON. They
check what a server would be sent (the create-collection body, the shard keys on writes and
reads), not what a server would do with it.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from services.search.settings import SearchSettings
from services.search.store.base import INTEGER_FIELDS, KEYWORD_FIELDS, Conditions
from services.search.store.edge import EdgeFaceStore, VectorLayout
from services.search.store.factory import create_store
from services.search.store.qdrant import QdrantCluster, QdrantFaceStore

SIZE, PEOPLE, FACES_PER_PERSON, PROBES = 512, 150, 20, 40
COLLECTION = "faces"
INT8_ON_DISK = VectorLayout(quantization="int8", vectors_on_disk=True, hnsw_on_disk=True)
ACME = Conditions(match_any={"tenant": ("acme",)})


def clustered_vectors(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around identity centres (same-person cosine ~0.75), and probes near some."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(PEOPLE, SIZE))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = 0.6 / np.sqrt(SIZE)
    vectors = np.repeat(centres, FACES_PER_PERSON, axis=0) + rng.normal(
        scale=spread, size=(PEOPLE * FACES_PER_PERSON, SIZE)
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    probes = vectors[rng.choice(len(vectors), PROBES, replace=False)] + rng.normal(scale=spread, size=(PROBES, SIZE))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    return vectors.astype(np.float32), probes.astype(np.float32)


VECTORS, PROBE_VECTORS = clustered_vectors()
IDS = [str(uuid.UUID(int=i + 1)) for i in range(len(VECTORS))]
ROW_OF = {point_id: row for row, point_id in enumerate(IDS)}


def open_store(path: Path, layout: VectorLayout, **options) -> EdgeFaceStore:
    # Segments over 1 MB of vectors get an index (and int8 vectors); it is built only by optimize().
    return EdgeFaceStore(path, layout=layout, indexing_threshold_kb=1000, optimize_after=10**9, **options)


def filled_store(path: Path, layout: VectorLayout) -> EdgeFaceStore:
    store = open_store(path, layout)
    store.ensure_collection(COLLECTION, SIZE)
    for start in range(0, len(VECTORS), 1000):
        rows = slice(start, start + 1000)
        store.upsert(COLLECTION, IDS[rows], VECTORS[rows], [{"tenant": "acme"}] * len(IDS[rows]))
    store.optimize(COLLECTION)
    return store


@pytest.fixture(scope="module")
def quantized_folder(tmp_path_factory) -> Path:
    """A closed edge store with the clustered vectors, int8 quantized, vectors and graph on disk."""
    folder = tmp_path_factory.mktemp("int8-on-disk")
    filled_store(folder, INT8_ON_DISK).close()
    return folder


@pytest.fixture
def quantized(quantized_folder):
    store = open_store(quantized_folder, INT8_ON_DISK)
    store.wait_for_optimizers()
    yield store
    store.close()


def exact_top(probe: np.ndarray, k: int) -> list[str]:
    return [IDS[row] for row in np.argsort(-(VECTORS @ probe), kind="stable")[:k]]


def recall_at(store: EdgeFaceStore, k: int = 10) -> float:
    results = store.query(COLLECTION, PROBE_VECTORS, k, ACME)
    found = [len({h.id for h in hits} & set(exact_top(probe, k))) / k for probe, hits in zip(PROBE_VECTORS, results)]
    return float(np.mean(found))


def largest_score_error(store: EdgeFaceStore, k: int = 10) -> float:
    results = store.query(COLLECTION, PROBE_VECTORS, k, ACME)
    return max(
        abs(h.score - float(VECTORS[ROW_OF[h.id]] @ probe)) for probe, hits in zip(PROBE_VECTORS, results) for h in hits
    )


def indexed_segment(folder: Path) -> Path:
    """The shard's segment that holds an HNSW index."""
    [segment] = [s for s in (folder / COLLECTION / "segments").iterdir() if (s / "vector_index").is_dir()]
    return segment


# --- edge: quantized, on disk --------------------------------------------------------------------


def test_quantized_on_disk_search_finds_the_exact_top_k(quantized):
    assert recall_at(quantized) >= 0.95
    exact = quantized.query(COLLECTION, PROBE_VECTORS[:5], 10, ACME, exact=True)
    assert [[h.id for h in hits] for hits in exact] == [exact_top(p, 10) for p in PROBE_VECTORS[:5]]


def test_scores_are_exact_cosines_after_rescoring(quantized):
    assert largest_score_error(quantized) < 1e-4


def test_the_int8_vectors_are_what_is_searched(quantized):
    """Without rescoring the scores are the int8 approximations, so the exact scores above
    come from rescoring, not from a search that skipped the quantized vectors."""
    quantized.rescore = False
    assert largest_score_error(quantized) > 1e-4


def test_layout_reaches_the_shard_and_its_files(quantized_folder):
    stored = json.loads((quantized_folder / COLLECTION / "edge_config.json").read_text())
    assert stored["quantization_config"] == {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}
    assert stored["vectors"][""]["on_disk"] is True
    assert stored["hnsw_config"]["on_disk"] is True
    segment = indexed_segment(quantized_folder)
    vector_data = json.loads((segment / "segment.json").read_text())["config"]["vector_data"][""]
    assert vector_data["storage_type"] == "Mmap"  # in RAM it would be InRamMmap
    assert vector_data["index"]["options"]["on_disk"] is True
    assert vector_data["quantization_config"]["scalar"]["type"] == "int8"
    quantized_file = segment / "vector_storage" / "quantized.data"
    assert quantized_file.stat().st_size >= len(VECTORS) * SIZE  # one byte a dimension
    assert (segment / "vector_storage" / "matrix.dat").stat().st_size >= len(VECTORS) * SIZE * 4


def test_reopened_store_answers_the_same(quantized_folder):
    first = open_store(quantized_folder, INT8_ON_DISK)
    before = first.query(COLLECTION, PROBE_VECTORS[:10], 10, ACME)
    first.close()
    again = open_store(quantized_folder, INT8_ON_DISK)
    after = again.query(COLLECTION, PROBE_VECTORS[:10], 10, ACME)
    again.close()
    assert [[h.id for h in hits] for hits in after] == [[h.id for h in hits] for hits in before]
    assert [h.score for hits in after for h in hits] == pytest.approx([h.score for hits in before for h in hits])


def test_a_shard_keeps_the_layout_it_was_made_with(tmp_path, caplog):
    """A collection made unquantized in RAM, opened by a store set to int8 on disk, keeps its
    layout (logged), answers exactly, and the next new collection gets the new layout."""
    filled_store(tmp_path, VectorLayout()).close()
    config_file = tmp_path / COLLECTION / "edge_config.json"
    stored_before = json.loads(config_file.read_text())
    with caplog.at_level(logging.WARNING, logger="services.search.store.edge"):
        store = open_store(tmp_path, INT8_ON_DISK)
    try:
        store.wait_for_optimizers()
        assert any(getattr(r, "stored_vs_settings", None) for r in caplog.records)
        assert store._get(COLLECTION).layout == VectorLayout()
        assert largest_score_error(store) < 1e-4
        assert recall_at(store) >= 0.95
        store.ensure_collection("newer", SIZE)
    finally:
        store.close()
    stored_after = json.loads(config_file.read_text())
    assert stored_after.get("quantization_config") is stored_before.get("quantization_config") is None
    assert not stored_after["vectors"][""].get("on_disk")
    newer = json.loads((tmp_path / "newer" / "edge_config.json").read_text())
    assert newer["quantization_config"]["scalar"]["type"] == "int8"
    assert newer["vectors"][""]["on_disk"] is True


def test_erasing_rewrites_the_quantized_vectors_too(tmp_path):
    """A delete erases a face from the int8 vectors as from the originals: the segment that
    held it is rewritten without it (new folder, int8 file one point shorter per deleted face)."""
    store = filled_store(tmp_path, INT8_ON_DISK)
    before = indexed_segment(tmp_path)
    quantized_before = (before / "vector_storage" / "quantized.data").stat().st_size
    gone = 20
    needles = [VECTORS[row, :16].astype("<f4").tobytes() for row in range(gone)]
    assert all(needle in (before / "vector_storage" / "matrix.dat").read_bytes() for needle in needles)
    assert store.delete(COLLECTION, Conditions(match_any={"tenant": ("acme",)}, ids=tuple(IDS[:gone]))) == gone
    store.optimize(COLLECTION)
    store.close()
    after = indexed_segment(tmp_path)
    assert not before.exists() and after != before
    quantized_after = (after / "vector_storage" / "quantized.data").stat().st_size
    assert quantized_after == quantized_before * (len(VECTORS) - gone) // len(VECTORS)
    for file in (p for p in tmp_path.rglob("*") if p.is_file()):
        content = file.read_bytes()
        assert not any(needle in content for needle in needles), file


def test_settings_reach_the_edge_store(tmp_path, monkeypatch):
    defaults = SearchSettings(path=tmp_path / "defaults")
    assert (defaults.quantization, defaults.vectors_on_disk, defaults.hnsw_on_disk) == ("int8", True, False)
    assert (defaults.rescore, defaults.oversampling, defaults.quantization_always_ram) == (True, 2.0, True)
    assert defaults.hnsw_ef == 256  # 128 left recall@10 at 0.89 on 2M int8 faces (bench/results)
    monkeypatch.setenv("FACESEARCH_SEARCH_QUANTIZATION", "none")
    monkeypatch.setenv("FACESEARCH_SEARCH_HNSW_ON_DISK", "true")
    monkeypatch.setenv("FACESEARCH_SEARCH_OVERSAMPLING", "3")
    store = create_store(SearchSettings(path=tmp_path / "edge"))
    try:
        assert store.layout == VectorLayout(quantization="none", vectors_on_disk=True, hnsw_on_disk=True)
        assert store.oversampling == 3.0
    finally:
        store.close()


# --- qdrant: what a server cluster is sent -------------------------------------------------------


class RecordingQdrant(ThreadingHTTPServer):
    """A loopback HTTP server standing in for Qdrant: records (method, path, JSON body) and
    answers each call with the least valid result; it knows of no collection and no shard key."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StandInHandler)
        self.requests: list[tuple[str, str, dict | None]] = []
        self.exists_answers: list[bool] = []  # answers to "does the collection exist?", then False
        self.refuse_create = False  # answer a create-collection 409, as when it exists already
        self.version = importlib.metadata.version("qdrant-client")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, method: str, path: str) -> list[dict | None]:
        return [body for m, p, body in self.requests if m == method and p.split("?")[0] == path]


class _StandInHandler(BaseHTTPRequestHandler):
    server: RecordingQdrant

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append((self.command, self.path, body))
        path = self.path.split("?")[0]
        status = 200
        if path == "/":
            reply = {"title": "qdrant stand-in", "version": self.server.version}
        elif self.command == "PUT" and path.count("/") == 2 and self.server.refuse_create:
            status, reply = 409, {"status": {"error": "Wrong input: Collection already exists!"}, "time": 0.0}
        else:
            reply = {"result": self._result(path, body), "status": "ok", "time": 0.0}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _result(self, path: str, body: dict | None):
        if path == "/collections":
            return {"collections": []}
        if path.endswith("/exists"):
            return {"exists": self.server.exists_answers.pop(0) if self.server.exists_answers else False}
        if path.endswith("/shards") and self.command == "GET":
            return {"shard_keys": []}
        if path.endswith("/points/query/batch"):
            return [{"points": []} for _ in body["searches"]]
        if path.endswith("/points/count"):
            return {"count": 1}
        if path.endswith("/points/scroll"):
            return {"points": [], "next_page_offset": None}
        if path.endswith(("/points", "/points/delete", "/index")):
            return {"operation_id": 1, "status": "completed"}
        return True

    do_GET = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stand_in():
    server = RecordingQdrant()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    # qdrant-client asks for the server's version on a thread of its own; let it have the answer.
    deadline = time.monotonic() + 5
    while not server.bodies("GET", "/") and time.monotonic() < deadline:
        time.sleep(0.01)
    server.shutdown()
    server.server_close()


def test_a_cluster_collection_is_created_sharded_replicated_and_quantized(stand_in):
    cluster = QdrantCluster(shard_number=6, replication_factor=2, write_consistency_factor=2)
    store = QdrantFaceStore(stand_in.url, quantization="int8", vectors_on_disk=True, cluster=cluster)
    store.ensure_collection(COLLECTION, SIZE)
    [body] = stand_in.bodies("PUT", f"/collections/{COLLECTION}")
    assert body["vectors"] == {"size": SIZE, "distance": "Cosine", "on_disk": True}
    assert (body["shard_number"], body["replication_factor"], body["write_consistency_factor"]) == (6, 2, 2)
    assert body.get("sharding_method", "auto") == "auto"
    assert body["quantization_config"] == {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}
    assert body["hnsw_config"]["on_disk"] is False
    indexes = {b["field_name"]: b["field_schema"] for b in stand_in.bodies("PUT", f"/collections/{COLLECTION}/index")}
    assert indexes["tenant"] == {"type": "keyword", "is_tenant": True}
    store.query(COLLECTION, PROBE_VECTORS[:1], 10, ACME)
    store.query(COLLECTION, PROBE_VECTORS[:1], 10, ACME, exact=True)
    approximate, exact = (
        b["searches"][0] for b in stand_in.bodies("POST", f"/collections/{COLLECTION}/points/query/batch")
    )
    assert approximate["params"]["quantization"] == {"ignore": False, "rescore": True, "oversampling": 2.0}
    assert exact["params"]["quantization"]["ignore"] is True
    assert "shard_key" not in approximate
    store.close()


def test_tenant_sharding_names_the_tenant_shard_key_on_every_call(stand_in):
    cluster = QdrantCluster(sharding="tenant", shard_number=2, replication_factor=3, write_consistency_factor=2)
    store = QdrantFaceStore(stand_in.url, cluster=cluster)
    store.ensure_collection(COLLECTION, SIZE)
    [body] = stand_in.bodies("PUT", f"/collections/{COLLECTION}")
    assert body["sharding_method"] == "custom"
    tenants = ["acme", "globex", "acme"]
    store.upsert(COLLECTION, IDS[:3], VECTORS[:3], [{"tenant": t} for t in tenants])
    store.upsert(COLLECTION, IDS[3:4], VECTORS[3:4], [{"tenant": "acme"}])
    created = stand_in.bodies("PUT", f"/collections/{COLLECTION}/shards")
    assert created == [
        {"shard_key": "acme", "shards_number": 2, "replication_factor": 3},
        {"shard_key": "globex", "shards_number": 2, "replication_factor": 3},
    ]
    writes = stand_in.bodies("PUT", f"/collections/{COLLECTION}/points")
    assert [(w["shard_key"], len(w["points"])) for w in writes] == [("acme", 2), ("globex", 1), ("acme", 1)]
    assert all(p["payload"]["tenant"] == w["shard_key"] for w in writes for p in w["points"])

    store.query(COLLECTION, PROBE_VECTORS[:2], 5, ACME)
    store.count(COLLECTION, ACME)
    store.scroll(COLLECTION, ACME, 10, None)
    store.delete(COLLECTION, ACME)
    [query] = stand_in.bodies("POST", f"/collections/{COLLECTION}/points/query/batch")
    assert [s["shard_key"] for s in query["searches"]] == [["acme"], ["acme"]]
    for call in ("count", "scroll", "delete"):
        assert all(
            b["shard_key"] == ["acme"] for b in stand_in.bodies("POST", f"/collections/{COLLECTION}/points/{call}")
        )

    asked = len(stand_in.requests)
    nobody = Conditions(match_any={"tenant": ("initech",)})  # no shard key: nothing to read
    assert store.query(COLLECTION, PROBE_VECTORS[:1], 5, nobody) == [[]]
    assert store.count(COLLECTION, nobody) == 0
    assert [m + " " + p for m, p, _ in stand_in.requests[asked:]] == [f"GET /collections/{COLLECTION}/shards"] * 2
    with pytest.raises(ValueError, match="names its tenant"):
        store.upsert(COLLECTION, IDS[:1], VECTORS[:1], [{}])
    store.close()


def test_a_collection_another_replica_created_meanwhile_is_used(stand_in):
    """Two search service replicas make the first upsert of a model at once: the one whose
    create is refused (it exists now) goes on and asks for the payload indexes."""
    stand_in.exists_answers, stand_in.refuse_create = [False, True], True
    store = QdrantFaceStore(stand_in.url, cluster=QdrantCluster(shard_number=2))
    store.ensure_collection(COLLECTION, SIZE)
    assert len(stand_in.bodies("PUT", f"/collections/{COLLECTION}")) == 1
    assert len(stand_in.bodies("PUT", f"/collections/{COLLECTION}/index")) == len(KEYWORD_FIELDS + INTEGER_FIELDS)
    stand_in.exists_answers = [False, False]
    with pytest.raises(Exception, match="already exists"):
        store.ensure_collection(COLLECTION, SIZE)
    store.close()


def test_cluster_settings_reach_the_qdrant_store(stand_in, monkeypatch):
    for name, value in {
        "BACKEND": "qdrant",
        "QDRANT_URL": stand_in.url,
        "QDRANT_SHARDING": "tenant",
        "QDRANT_SHARD_NUMBER": "4",
        "QDRANT_REPLICATION_FACTOR": "2",
        "QDRANT_WRITE_CONSISTENCY_FACTOR": "2",
    }.items():
        monkeypatch.setenv(f"FACESEARCH_SEARCH_{name}", value)
    store = create_store(SearchSettings())
    assert store.cluster == QdrantCluster("tenant", 4, 2, 2)
    assert (store.quantization, store.vectors_on_disk, store.rescore) == ("int8", True, True)
    store.close()
    with pytest.raises(ValueError, match="write_consistency_factor"):
        QdrantCluster(replication_factor=1, write_consistency_factor=2)
    monkeypatch.setenv("FACESEARCH_SEARCH_QDRANT_WRITE_CONSISTENCY_FACTOR", "3")
    with pytest.raises(ValueError, match="write_consistency_factor"):
        SearchSettings()
