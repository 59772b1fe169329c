"""Moving a tenant's faces to another embedding model, through the gateway: the real search
service and `facesearch migrate`, with fake analysers standing for the detector and two
embedding models (facenet-casia's 512 dimensions and dlib-resnet's 128: the second model's
vectors are the first's projected, so that the same people stay alike). The real models,
on real photos, are moved in tests/test_gateway_migration.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from facesearch.v1 import common_pb2, facesearch_pb2, search_pb2, search_pb2_grpc
from gateway.analysis import AnalysedPhoto, PhotoInput
from gateway.auth import ApiKeys, key_line
from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from sdk.client import FaceSearchClient, FaceSearchError
from services.embedder.settings import EmbedderSettings
from services.runtime.background import BackgroundServer
from services.runtime.deadlines import Deadline
from tests.test_gateway_logic import FakeAnalyser, SearchHooks, face, fake_photo, start_search

OLD, NEW = "facenet-casia", "dlib-resnet"
NEW_DIMENSION = 128
TENANTS = ("moved", "edited", "interrupted", "whole", "refusals", "bystander", "replicas")
SETTINGS = {
    "similarity_thresholds": {OLD: 0.5, NEW: 0.5},
    "cluster_thresholds": {OLD: 0.65, NEW: 0.65},
    "cluster_min_neighbours": 2,
    "cluster_after_new_faces": 0,
    "model_cache_s": 0.0,
}
REPO = Path(__file__).resolve().parents[1]


@dataclass
class ProjectedAnalyser:
    """The fake analyser's faces with their vectors projected to ``NEW_DIMENSION``: another
    model. Photos whose hash is in ``faceless`` come back without faces (a detector that no
    longer finds them); ``delay_s`` slows every call."""

    base: FakeAnalyser = field(default_factory=FakeAnalyser)
    faceless: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    calls: int = 0

    def __post_init__(self) -> None:
        self.projection = np.random.default_rng(7).normal(size=(512, NEW_DIMENSION)).astype(np.float32)

    async def analyse(
        self, photos: list[PhotoInput], deadline: Deadline, *, skip_blurred: bool = True
    ) -> list[AnalysedPhoto]:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        results = await self.base.analyse(photos, deadline, skip_blurred=skip_blurred)
        for result in results:
            if result.photo.content_hash in self.faceless:
                result.faces = []
            for found in result.faces:
                vector = found.vector @ self.projection
                found.vector = (vector / np.linalg.norm(vector)).astype(np.float32)
        return results

    def photos_analysed(self) -> list[str]:
        return self.base.photos_analysed()


class TwoModelGateway(GatewayServer):
    """The gateway embedding with two fake models: the default one and ``NEW``."""

    def __init__(self, settings: GatewaySettings, old: FakeAnalyser, new: ProjectedAnalyser) -> None:
        self.old_analyser, self.new_analyser = old, new
        keys = ApiKeys.parse([key_line(t, f"key-{t}") for t in TENANTS], "test keys")
        super().__init__(settings, EmbedderSettings(), keys)

    def analyser(self, settings, embedder_settings=None):
        return self.old_analyser, common_pb2.EmbeddingModel(id=OLD, version="1", dimension=512)

    def other_analysers(self, settings):
        return [(self.new_analyser, common_pb2.EmbeddingModel(id=NEW, version="1", dimension=NEW_DIMENSION))]


@dataclass
class Suite:
    search: BackgroundServer
    gateway: BackgroundServer
    old: FakeAnalyser
    new: ProjectedAnalyser

    def client(self, tenant: str) -> FaceSearchClient:
        return FaceSearchClient(self.gateway.address, f"key-{tenant}", timeout_s=30)

    def stored(self, tenant: str, model_id: str, dimension: int) -> list[search_pb2.FaceRecord]:
        """Every face of the tenant in a model's collection, read from the search service."""
        with grpc.insecure_channel(self.search.address) as channel:
            stub = search_pb2_grpc.SearchStub(channel)
            faces, token = [], ""
            while True:
                request = search_pb2.ScrollRequest(
                    tenant=tenant,
                    model=common_pb2.EmbeddingModel(id=model_id, dimension=dimension),
                    page_size=500,
                    page_token=token,
                    with_vectors=True,
                )
                reply = stub.Scroll(request)
                faces += reply.faces
                token = reply.next_page_token
                if not token:
                    return faces


def start_two_model_gateway(search_address: str, old: FakeAnalyser, new: ProjectedAnalyser) -> BackgroundServer:
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        log_format="text",
        search_address=search_address,
        detector_address="127.0.0.1:1",
        downstream_retries=2,
        retry_backoff_s=0.05,
        request_timeout_s=30,
        thresholds_file=None,
        embedder_urls={NEW: "127.0.0.1:1"},  # never called: the fake analyser stands for it
        **SETTINGS,
    )
    return BackgroundServer(TwoModelGateway(settings, old, new))


@pytest.fixture(scope="module")
def suite() -> Iterator[Suite]:
    search = start_search(SearchHooks())
    old, new = FakeAnalyser(), ProjectedAnalyser()
    gateway = start_two_model_gateway(search.address, old, new)
    yield Suite(search, gateway, old, new)
    gateway.stop()
    search.stop()


def write_photos(folder: Path, tenant: str) -> dict[str, Path]:
    """An archive on disk: four photos of ann, four of bob, one of both, one of carl."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = {
        **{f"ann-{v}": [face("ann", variant=v)] for v in range(4)},
        **{f"bob-{v}": [face("bob", variant=v)] for v in range(4)},
        "ann-and-bob": [face("ann", variant=9, x=0), face("bob", variant=9, x=300, size=90)],
        "carl": [face("carl")],
    }
    paths = {}
    for name, faces in specs.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_bytes(fake_photo(*faces, note=tenant))
    return paths


def index_archive(client: FaceSearchClient, paths: dict[str, Path]) -> None:
    photos = [facesearch_pb2.Photo(id=name, uri=str(p), content=p.read_bytes()) for name, p in paths.items()]
    results = list(client.index(photos))
    assert all(r.status == facesearch_pb2.PHOTO_STATUS_INDEXED for r in results), results


def cluster(client: FaceSearchClient) -> None:
    client.start_clustering(full=False)
    assert client.wait_for_clustering(timeout_s=60).state == facesearch_pb2.CLUSTERING_STATE_DONE


def found_photos(client: FaceSearchClient, person_id: str) -> set[str]:
    return {m.photo_id for m in client.find_me_all(person_id=person_id)}


def people_fields(face: search_pb2.FaceRecord) -> tuple:
    p = face.payload
    return (
        p.photo_id,
        p.face_index,
        p.source,
        p.person_id,
        p.person_name,
        p.cluster_id,
        p.cluster_core,
        tuple(p.not_person_ids),
        p.person_hidden,
        p.photo_uri,
    )


FACESEARCH = [sys.executable, "-m", "cli.main"]


def facesearch(address: str, key: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """`facesearch ARGS --address ADDRESS` with API key ``key``, run to its end."""
    env = {**os.environ, "FACESEARCH_API_KEY": key}
    return subprocess.run(
        [*FACESEARCH, *args, "--address", address], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
    )


# --- the whole way, with the CLI --------------------------------------------------------------


def test_a_tenant_moves_to_another_model_with_its_people_clusters_and_marks(suite: Suite, tmp_path: Path) -> None:
    tenant = "moved"
    client = suite.client(tenant)
    paths = write_photos(tmp_path / "archive", tenant)
    index_archive(client, paths)
    ann = client.enroll("Ann", [paths["ann-0"]]).person_id  # a reference from a photo of the archive
    carl = client.enroll("Carl", [fake_photo(face("carl", variant=5), note="upload")]).person_id  # no URI
    cluster(client)
    [bob_cluster] = [c for c in client.cluster_faces() if "bob-1" in {f.photo_id for f in c.faces}]
    [ann_cluster] = [c for c in client.cluster_faces() if "ann-1" in {f.photo_id for f in c.faces}]
    bob = client.name_cluster(bob_cluster.cluster_id, "Bob").person_id
    client.name_cluster(ann_cluster.cluster_id, person_id=ann)
    group_ann = next(f for f in client.person_faces(ann) if f.photo_id == "ann-and-bob" and not f.reference)
    client.reject_face(group_ann.face_id, ann)
    client.hide_person(bob)
    before_ann, before_bob = found_photos(client, ann), found_photos(client, bob)
    assert "ann-and-bob" not in before_ann and {"bob-0", "ann-and-bob"} <= before_bob
    old_faces = {f.id: people_fields(f) for f in suite.stored(tenant, OLD, 512)}

    # Carl's reference photo was uploaded, not read from the archive: it cannot be read again.
    refused_run = facesearch(suite.gateway.address, f"key-{tenant}", "migrate", "--to", NEW)
    assert refused_run.returncode == 1, refused_run.stderr
    assert "not switched" in refused_run.stderr and "without a URI" in refused_run.stderr
    assert client.stats().settings.model.id == OLD, "nothing switched"
    assert found_photos(client, ann) == before_ann, "the archive is searched as before meanwhile"
    analysed = len(suite.new.photos_analysed())

    run = facesearch(suite.gateway.address, f"key-{tenant}", "migrate", "--to", NEW, "--accept-losses")
    assert run.returncode == 0, run.stderr
    assert f"switched from {OLD} to {NEW}" in run.stdout
    assert len(suite.new.photos_analysed()) == analysed, "the photos moved by the first run are not sent again"
    assert client.stats().settings.model.id == NEW

    new_faces = {f.id: f for f in suite.stored(tenant, NEW, NEW_DIMENSION)}
    carl_reference = [i for i, fields in old_faces.items() if fields[3] == carl]
    assert set(new_faces) == set(old_faces) - set(carl_reference), "every face but Carl's reference, same ids"
    assert all(people_fields(new_faces[i]) == old_faces[i] for i in new_faces), "all they carried, carried"
    assert all(len(f.vector) == NEW_DIMENSION and f.payload.model_id == NEW for f in new_faces.values())
    assert found_photos(client, ann) == before_ann and found_photos(client, bob) == before_bob
    listed = {p.person_id: p for p in client.list_people(include_hidden=True)}
    assert listed[bob].display_name == "Bob" and listed[bob].hidden
    assert carl not in listed, "Carl's only reference could not be moved: the run said so, and was told to go on"

    models = {m.model.id: m for m in client.list_models()}
    assert models[NEW].in_use and not models[OLD].in_use and models[OLD].faces == len(old_faces)
    with pytest.raises(FaceSearchError) as caught:
        client.drop_model(NEW)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert client.drop_model(OLD) == len(old_faces)
    assert OLD not in {m.model.id for m in client.list_models() if m.faces}
    assert found_photos(client, ann) == before_ann, "the old collection is not needed any more"


def test_edits_made_while_the_faces_were_moved_are_carried_by_the_switch(suite: Suite, tmp_path: Path) -> None:
    tenant = "edited"
    client = suite.client(tenant)
    paths = write_photos(tmp_path / "archive", tenant)
    index_archive(client, paths)
    ann = client.enroll("Ann", [paths["ann-0"]]).person_id
    cluster(client)
    run = facesearch(suite.gateway.address, f"key-{tenant}", "migrate", "--to", NEW, "--no-switch")
    assert run.returncode == 0, run.stderr
    assert client.stats().settings.model.id == OLD
    # After the faces were moved: a rename, a cluster named (references copied from archive faces), a mark.
    client.rename_person(ann, "Ann B.")
    [bob_cluster] = [c for c in client.cluster_faces() if "bob-1" in {f.photo_id for f in c.faces}]
    bob = client.name_cluster(bob_cluster.cluster_id, "Bob").person_id
    group_bob = next(f for f in client.person_faces(bob) if f.photo_id == "ann-and-bob" and not f.reference)
    client.reject_face(group_bob.face_id, bob)
    switched = client.switch_model(NEW)
    assert switched.faces_updated > 0 and switched.photos_missing == 0
    old_faces = {f.id: people_fields(f) for f in suite.stored(tenant, OLD, 512)}
    new_faces = {f.id: people_fields(f) for f in suite.stored(tenant, NEW, NEW_DIMENSION)}
    assert new_faces == old_faces, "the new references and every change are in the new collection"
    assert "ann-and-bob" not in found_photos(client, bob)
    assert {p.display_name for p in client.list_people()} == {"Ann B.", "Bob"}


def test_an_interrupted_migration_ends_as_an_uninterrupted_one(suite: Suite, tmp_path: Path) -> None:
    """`facesearch migrate` killed with SIGKILL halfway and run again stores what one run stores,
    and the archive answers as before while it runs."""
    whole, cut = "whole", "interrupted"
    for tenant in (whole, cut):
        client = suite.client(tenant)
        paths = write_photos(tmp_path / tenant, "same")  # the same bytes in both tenants
        index_archive(client, paths)
        client.enroll("Ann", [paths["ann-0"]])
        cluster(client)
    assert facesearch(suite.gateway.address, f"key-{whole}", "migrate", "--to", NEW).returncode == 0

    client = suite.client(cut)
    [ann] = [p.person_id for p in client.list_people()]
    before = found_photos(client, ann)
    suite.new.delay_s = 0.4
    try:
        calls = suite.new.calls
        env = {**os.environ, "FACESEARCH_API_KEY": f"key-{cut}"}
        args = ["migrate", "--to", NEW, "--batch", "1", "--workers", "1", "--address", suite.gateway.address]
        process = subprocess.Popen([*FACESEARCH, *args], cwd=REPO, env=env)
        deadline = time.monotonic() + 60
        while suite.new.calls < calls + 3 and time.monotonic() < deadline:
            assert found_photos(client, ann) == before, "searching goes on while the faces are moved"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        suite.new.delay_s = 0.0
    moved = {f.payload.photo_id for f in suite.stored(cut, NEW, NEW_DIMENSION)}
    assert 0 < len(moved) < 10, "killed halfway"
    assert client.stats().settings.model.id == OLD
    sent = len(suite.new.photos_analysed())
    again = facesearch(suite.gateway.address, f"key-{cut}", "migrate", "--to", NEW)
    assert again.returncode == 0, again.stderr
    assert len(suite.new.photos_analysed()) - sent <= 10 - len(moved) + 1, "only what was left is sent"

    def comparable(tenant: str) -> list[tuple]:
        faces = suite.stored(tenant, NEW, NEW_DIMENSION)
        return sorted((*people_fields(f)[:3], f.payload.person_name, np.round(f.vector, 5).tobytes()) for f in faces)

    assert comparable(cut) == comparable(whole)
    assert client.stats().settings.model.id == NEW
    assert found_photos(client, ann) == before


# --- the calls one by one -----------------------------------------------------------------------


def test_what_is_refused_and_what_fails_alone(suite: Suite, tmp_path: Path) -> None:
    tenant = "refusals"
    client = suite.client(tenant)
    paths = write_photos(tmp_path / "archive", tenant)
    index_archive(client, paths)

    def code(call) -> grpc.StatusCode:
        with pytest.raises(FaceSearchError) as caught:
            call()
        return caught.value.code

    assert code(lambda: list(client.migration_photos("no-such-model"))) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(lambda: list(client.migration_photos("facenet-vggface2"))) == grpc.StatusCode.FAILED_PRECONDITION
    assert code(lambda: list(client.migration_photos(OLD))) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(lambda: client.migrate_photos(NEW, [])) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(lambda: client.switch_model(NEW, from_model_id=NEW)) == grpc.StatusCode.FAILED_PRECONDITION

    listed = list(client.migration_photos(NEW, page_size=3))
    assert sorted(p.photo_id for p in listed) == sorted(paths) and all(p.photo_uri for p in listed)
    edited = fake_photo(face("ann", variant=0), note="edited since")  # not the bytes stored as ann-0
    suite.new.faceless.add(PhotoInput(paths["bob-0"].read_bytes()).content_hash)
    results = client.migrate_photos(
        NEW,
        [
            facesearch_pb2.Photo(id="ann-0", content=edited),
            facesearch_pb2.Photo(id="ann-1", content=paths["ann-1"].read_bytes()),
            facesearch_pb2.Photo(id="bob-0", content=paths["bob-0"].read_bytes()),
        ],
    )
    assert results[0].error.code == grpc.StatusCode.NOT_FOUND.value[0] and "changed" in results[0].error.message
    assert (results[1].faces_moved, results[1].faces_not_found, results[1].HasField("error")) == (1, 0, False)
    assert (results[2].faces_moved, results[2].faces_not_found) == (0, 1)
    left = {p.photo_id for p in client.migration_photos(NEW)}
    assert left == set(paths) - {"ann-1"}

    refusal = code(lambda: client.switch_model(NEW))
    assert refusal == grpc.StatusCode.FAILED_PRECONDITION
    assert client.stats().settings.model.id == OLD

    # Another tenant sees none of it and stays where it is.
    other = suite.client("bystander")
    assert list(other.migration_photos(NEW)) == []
    switched = client.switch_model(NEW, allow_missing=True)
    assert switched.photos_missing == len(paths) - 1
    assert other.stats().settings.model.id == OLD and client.stats().settings.model.id == NEW


def test_every_replica_follows_a_switch(suite: Suite, tmp_path: Path) -> None:
    tenant = "replicas"
    second = start_two_model_gateway(suite.search.address, suite.old, suite.new)
    try:
        client = suite.client(tenant)
        other = FaceSearchClient(second.address, f"key-{tenant}", timeout_s=30)
        paths = write_photos(tmp_path / "archive", tenant)
        index_archive(client, paths)
        ann = client.enroll("Ann", [paths["ann-0"]]).person_id
        assert facesearch(suite.gateway.address, f"key-{tenant}", "migrate", "--to", NEW).returncode == 0
        assert other.stats().settings.model.id == NEW, "the other replica reads the switch (model_cache_s 0)"
        assert found_photos(other, ann) == found_photos(client, ann) != set()
        other.close()
    finally:
        second.stop()


def test_edits_wait_while_a_switch_is_under_way_and_a_switch_waits_for_edits() -> None:
    from gateway.errors import GatewayError
    from gateway.migration import EditGate

    async def scenario() -> list[str]:
        gate, events = EditGate(), []

        async def edit(name: str, hold_s: float) -> None:
            async with gate.editing("t"):
                events.append(f"{name} in")
                await asyncio.sleep(hold_s)
            events.append(f"{name} out")

        async def switch() -> None:
            async with gate.switching("t"):
                events.append("switch in")
                await asyncio.sleep(0.05)
                with pytest.raises(GatewayError):  # one switch at a time
                    async with gate.switching("t"):
                        pass
            events.append("switch out")

        first = asyncio.create_task(edit("first", 0.05))
        await asyncio.sleep(0.01)
        switching = asyncio.create_task(switch())
        await asyncio.sleep(0.01)
        later = asyncio.create_task(edit("later", 0))
        other = asyncio.create_task(_other_tenant(gate, events))
        await asyncio.gather(first, switching, later, other)
        return events

    async def _other_tenant(gate: EditGate, events: list[str]) -> None:
        async with gate.editing("someone else"):
            events.append("other tenant")

    events = asyncio.run(scenario())
    assert events.index("first out") < events.index("switch in"), "the switch waited for the edit under way"
    assert events.index("switch out") < events.index("later in"), "the later edit waited for the switch"
    assert events.index("other tenant") < events.index("switch in"), "other tenants are not held"


def test_with_the_search_service_down_a_tenant_keeps_the_model_it_was_last_seen_using(tmp_path: Path) -> None:
    """The model choice is read at every call (model_cache_s 0): when the search service cannot
    be reached, the choice read last holds, so a photo fails on its own as before, not its stream."""
    hooks = SearchHooks()
    search = start_search(hooks)
    gateway = start_two_model_gateway(search.address, FakeAnalyser(), ProjectedAnalyser())
    client = FaceSearchClient(gateway.address, "key-moved", timeout_s=30)
    try:
        [indexed] = client.index([facesearch_pb2.Photo(id="a", content=fake_photo(face("ann"), note="outage"))])
        assert indexed.status == facesearch_pb2.PHOTO_STATUS_INDEXED
        hooks.unavailable["GetTenantModel"] = 100  # every attempt answered UNAVAILABLE
        hooks.unavailable["Scroll"] = 100
        [failed] = client.index([facesearch_pb2.Photo(id="b", content=fake_photo(face("bob"), note="outage"))])
        assert failed.status == facesearch_pb2.PHOTO_STATUS_FAILED and "UNAVAILABLE" in failed.message
        hooks.reset()
        [again] = client.index([facesearch_pb2.Photo(id="b", content=fake_photo(face("bob"), note="outage"))])
        assert again.status == facesearch_pb2.PHOTO_STATUS_INDEXED
    finally:
        client.close()
        gateway.stop()
        search.stop()
