"""The gateway's own logic, in seconds: the whole FaceSearch service on loopback against
the real search service (qdrant-client's in-memory engine) and a fake face analyser
whose photos are JSON that says which faces they hold, so that photos of the same
person, edited photos and group photos can be written down in a line."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from facesearch.v1 import common_pb2, facesearch_pb2, facesearch_pb2_grpc
from gateway.analysis import AnalysedPhoto, FoundFace, PhotoInput
from gateway.auth import ApiKeys, key_line
from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from sdk.client import FaceSearchClient, FaceSearchError
from services.embedder.settings import EmbedderSettings
from services.runtime.background import BackgroundServer
from services.runtime.deadlines import Deadline
from services.runtime.ports import free_ports
from services.runtime.server import ServiceBinding
from services.search.server import build_server as build_search
from services.search.settings import SearchSettings

MODEL_ID, DIMENSION = "facenet-casia", 512
SEARCH_METHODS = ("Upsert", "Query", "Delete", "Count", "Scroll", "GetTenantModel", "SetTenantModel")
TENANTS = (
    "dedup",
    "edited",
    "failures",
    "paging",
    "people",
    "clusters",
    "verify",
    "deadline",
    "retry",
    "metrics",
    "references",
    "incremental",
    "revisit",
    "merge-marks",
    "people-ops",
    "find-people",
    "backfill",
    "backfill-whole",
    "backfill-shards",
    "backfill-s3",
    "backfill-bucket",
)
OTHER_TENANT = "other"
# gRPC sends a call's timeout rounded up (to a few significant digits): a server may see a little more.
TIMEOUT_ROUNDING_S = 0.2


# --- fake photos and the fake analyser ------------------------------------------------------


def face(
    person: str,
    variant: int = 0,
    size: float = 100,
    x: float = 0,
    y: float = 0,
    blurred: bool = False,
    blend: tuple[str, ...] = (),
) -> dict:
    """One face of a fake photo: ``variant`` is another photo of the same person; ``blend``
    names people whose directions are added to the person's in equal parts."""
    return {"person": person, "variant": variant, "size": size, "x": x, "y": y, "blurred": blurred, "blend": blend}


def fake_photo(*faces: dict, note: str = "") -> bytes:
    """The bytes of a fake photo holding these faces (``note`` makes other bytes of the same faces)."""
    return json.dumps({"faces": list(faces), "note": note}).encode()


def failing_photo(code: str, message: str) -> bytes:
    """A photo the fake analyser fails on its own, as the detector fails a photo it cannot read."""
    return json.dumps({"error": code, "message": message}).encode()


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big"))


def person_vector(person: str, variant: int) -> np.ndarray:
    """A unit vector near the person's own direction: variants of one person have a
    cosine similarity of about 0.8, different people about 0."""
    centre = _rng(person).normal(size=DIMENSION)
    vector = centre / np.linalg.norm(centre) + _rng(person, variant).normal(scale=0.022, size=DIMENSION)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@dataclass
class AnalyserCall:
    hashes: list[str]
    remaining_s: float


@dataclass
class FakeAnalyser:
    """The FaceAnalyser interface over fake photos; records what it was asked."""

    delay_s: float = 0.0
    calls: list[AnalyserCall] = field(default_factory=list)

    async def analyse(
        self, photos: list[PhotoInput], deadline: Deadline, *, skip_blurred: bool = True
    ) -> list[AnalysedPhoto]:
        self.calls.append(AnalyserCall([p.content_hash for p in photos], deadline.remaining()))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slow detector that does not look at the deadline
        return [self._analyse(photo, skip_blurred) for photo in photos]

    @staticmethod
    def _analyse(photo: PhotoInput, skip_blurred: bool) -> AnalysedPhoto:
        result = AnalysedPhoto(photo)
        try:
            spec = json.loads(photo.content)
        except ValueError:
            result.error = (grpc.StatusCode.INVALID_ARGUMENT, "the photo is not an image")
            return result
        if "error" in spec:
            result.error = (grpc.StatusCode[spec["error"]], spec["message"])
            return result
        for spec_face in sorted(spec["faces"], key=lambda f: -f["size"]):  # largest first, as the detector
            if spec_face["blurred"] and skip_blurred:
                result.blurred_skipped += 1
                continue
            x, y, size = spec_face["x"], spec_face["y"], spec_face["size"]
            found = common_pb2.Face(
                index=len(result.faces),
                box=common_pb2.BoundingBox(x_min=x, y_min=y, x_max=x + size, y_max=y + size),
                confidence=0.99,
                quality=common_pb2.FaceQuality(blur_variance=200.0, face_size=size, blurred=spec_face["blurred"]),
            )
            vector = person_vector(spec_face["person"], spec_face["variant"])
            for other in spec_face.get("blend", ()):
                vector = vector + person_vector(other, spec_face["variant"])
            result.faces.append(FoundFace(found, (vector / np.linalg.norm(vector)).astype(np.float32)))
        return result

    def photos_analysed(self) -> list[str]:
        return [content_hash for call in self.calls for content_hash in call.hashes]


# --- the search service, with hooks to slow it down or make it unavailable ------------------


@dataclass
class SearchHooks:
    """What the search service does before answering: per method, how many calls it
    answers UNAVAILABLE (then counts down) and how long it waits; and what it saw."""

    unavailable: dict[str, int] = field(default_factory=dict)
    delay_s: dict[str, float] = field(default_factory=dict)
    calls: list[tuple[str, float | None]] = field(default_factory=list)  # (method, its time_remaining())

    def reset(self) -> None:
        self.unavailable.clear()
        self.delay_s.clear()
        self.calls.clear()

    def attempts(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)

    def remaining(self, method: str) -> list[float | None]:
        return [left for name, left in self.calls if name == method]


class HookedSearch:
    """The real SearchService, each call going through the hooks first."""

    def __init__(self, servicer: object, hooks: SearchHooks) -> None:
        self._servicer = servicer
        self._hooks = hooks

    def __getattr__(self, name: str):
        method = getattr(self._servicer, name)
        if name not in SEARCH_METHODS:
            return method
        hooks = self._hooks

        async def hooked(request, context):
            hooks.calls.append((name, context.time_remaining()))
            if hooks.unavailable.get(name, 0) > 0:
                hooks.unavailable[name] -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the test made search unavailable")
            if hooks.delay_s.get(name):
                await asyncio.sleep(hooks.delay_s[name])
            return await method(request, context)

        return hooked


def start_search(hooks: SearchHooks, port: int = 0) -> BackgroundServer:
    settings = SearchSettings(host="127.0.0.1", port=port, log_format="text", backend="qdrant", qdrant_path=":memory:")
    server = build_search(settings)
    server.bindings = [
        ServiceBinding(b.name, HookedSearch(b.servicer, hooks), b.add_to_server) for b in server.bindings
    ]
    return BackgroundServer(server)


# --- the gateway ------------------------------------------------------------------------------


class FakeAnalyserGateway(GatewayServer):
    """The gateway with the fake analyser in place of the detector and the embedder."""

    def __init__(self, settings: GatewaySettings, analyser: FakeAnalyser) -> None:
        self.fake_analyser = analyser
        keys = ApiKeys.parse([key_line(t, f"key-{t}") for t in (*TENANTS, OTHER_TENANT)], "test keys")
        super().__init__(settings, EmbedderSettings(), keys)

    def analyser(self, settings: GatewaySettings) -> tuple[FakeAnalyser, common_pb2.EmbeddingModel]:
        return self.fake_analyser, common_pb2.EmbeddingModel(id=MODEL_ID, version="test", dimension=DIMENSION)


@dataclass
class Gateway:
    server: BackgroundServer
    analyser: FakeAnalyser

    def client(self, tenant: str, timeout_s: float = 20) -> FaceSearchClient:
        return FaceSearchClient(self.server.address, f"key-{tenant}", timeout_s=timeout_s)

    def metric(self, name: str, **labels: str) -> float:
        value = self.server.server.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def start_gateway(search_address: str, **overrides) -> Gateway:
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        log_format="text",
        search_address=search_address,
        detector_address="127.0.0.1:1",  # never called: the fake analyser stands for it
        **{
            "downstream_retries": 2,
            "retry_backoff_s": 0.05,
            "request_timeout_s": 20,
            "thresholds_file": None,
            **overrides,
        },
    )
    analyser = FakeAnalyser()
    return Gateway(BackgroundServer(FakeAnalyserGateway(settings, analyser)), analyser)


@pytest.fixture(scope="module")
def hooks() -> SearchHooks:
    return SearchHooks()


@pytest.fixture(scope="module")
def search(hooks: SearchHooks) -> Iterator[BackgroundServer]:
    server = start_search(hooks)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(search: BackgroundServer) -> Iterator[Gateway]:
    started = start_gateway(search.address)
    yield started
    started.server.stop()


@pytest.fixture
def connect(gateway: Gateway, hooks: SearchHooks) -> Iterator[Callable[..., FaceSearchClient]]:
    """Clients of the module's gateway; the search hooks are reset after each test."""
    clients: list[FaceSearchClient] = []

    def make(tenant: str, timeout_s: float = 20) -> FaceSearchClient:
        clients.append(gateway.client(tenant, timeout_s))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
    hooks.reset()
    gateway.analyser.delay_s = 0


def statuses(results) -> list[str]:
    return [facesearch_pb2.PhotoStatus.Name(r.status).removeprefix("PHOTO_STATUS_") for r in results]


def photo(content: bytes, photo_id: str) -> facesearch_pb2.Photo:
    return facesearch_pb2.Photo(id=photo_id, content=content)


def refused(call: Callable[[], object]) -> FaceSearchError:
    with pytest.raises(FaceSearchError) as caught:
        call()
    return caught.value


# --- IndexPhotos ------------------------------------------------------------------------------


def test_the_same_bytes_are_indexed_once_in_a_stream_and_in_later_ones(gateway, connect) -> None:
    client = connect("dedup")
    a, b = fake_photo(face("ann"), note="dedup"), fake_photo(face("bob"), note="dedup")
    first = list(client.index([photo(a, "a"), photo(b, "b"), photo(a, "copy-of-a")]))
    assert statuses(first) == ["INDEXED", "INDEXED", "DUPLICATE"]
    assert "earlier in this stream" in first[2].message and "'a'" in first[2].message
    later = list(client.index([photo(a, "a"), photo(b, "copy-of-b")]))
    assert statuses(later) == ["DUPLICATE", "DUPLICATE"]
    assert "indexed before" in later[1].message and "'b'" in later[1].message
    stats = client.stats()
    assert (stats.photos, stats.faces) == (2, 2)
    analysed = gateway.analyser.photos_analysed()
    assert analysed.count(first[0].content_hash) == 1, "a duplicate is not even analysed"


def test_an_edited_photo_replaces_its_faces(connect) -> None:
    client = connect("edited")
    [original] = client.index([photo(fake_photo(face("ann"), face("bob", x=200)), "holiday")])
    assert original.faces_stored == 2
    [edited] = client.index([photo(fake_photo(face("ann"), note="bob cropped out"), "holiday")])
    assert edited.status == facesearch_pb2.PHOTO_STATUS_INDEXED and edited.faces_stored == 1
    assert client.stats().faces == 1
    assert client.find_me([fake_photo(face("bob", variant=1))]).matches == [], "bob's old face is gone"
    assert [m.photo_id for m in client.find_me([fake_photo(face("ann", variant=1))]).matches] == ["holiday"]


def test_photos_failing_on_their_own_do_not_fail_the_others(connect) -> None:
    client = connect("failures")
    results = list(
        client.index(
            [
                photo(b"not an image", "corrupt"),
                photo(fake_photo(face("ann")), "good"),
                photo(failing_photo("UNAVAILABLE", "the detector lost this one"), "lost"),
                photo(fake_photo(), "empty-scene"),
                photo(fake_photo(face("bob"), face("crowd", size=30, blurred=True)), "with-crowd"),
            ]
        )
    )
    assert [r.photo_id for r in results] == ["corrupt", "good", "lost", "empty-scene", "with-crowd"]
    assert statuses(results) == ["INVALID", "INDEXED", "FAILED", "NO_FACE", "INDEXED"]
    assert results[2].message == "the detector lost this one"
    assert (results[4].faces_found, results[4].faces_stored) == (2, 1) and "1 blurred" in results[4].message
    assert client.stats().faces == 2


def test_a_search_outage_fails_the_batch_and_its_photos_can_be_sent_again(hooks, connect) -> None:
    client = connect("failures")
    hooks.unavailable["Scroll"] = 10  # more than the retries
    [failed] = client.index([photo(fake_photo(face("cid")), "during-outage")])
    assert failed.status == facesearch_pb2.PHOTO_STATUS_FAILED and "UNAVAILABLE" in failed.message
    hooks.unavailable.clear()
    [again] = client.index([photo(fake_photo(face("cid")), "during-outage")])
    assert again.status == facesearch_pb2.PHOTO_STATUS_INDEXED


def test_indexing_counts_each_photo_and_face_once_in_the_metrics(gateway, connect) -> None:
    client = connect("metrics")
    names = [
        ("facesearch_gateway_photos_total", {"status": status})
        for status in ("indexed", "duplicate", "no_face", "invalid", "failed")
    ]
    names.append(("facesearch_gateway_faces_stored_total", {}))
    before = [gateway.metric(name, **labels) for name, labels in names]
    two_faces = fake_photo(face("ann"), face("bob", x=200))
    list(
        client.index(
            [
                photo(two_faces, "two"),
                photo(two_faces, "two-again"),
                photo(fake_photo(face("cid")), "one"),
                photo(fake_photo(), "none"),
                photo(b"junk", "junk"),
                photo(failing_photo("INTERNAL", "lost"), "lost"),
            ]
        )
    )
    client.enroll("Dee", [fake_photo(face("dee"))])
    after = [gateway.metric(name, **labels) for name, labels in names]
    # indexed 2, duplicate 1, no face 1, invalid 1, failed 1; faces: 2 + 1 indexed, 1 enrolled
    assert [round(a - b) for a, b in zip(after, before, strict=True)] == [2, 1, 1, 1, 1, 4]


# --- FindMe -----------------------------------------------------------------------------------


@pytest.fixture
def paging_archive(connect) -> FaceSearchClient:
    """Ann in 7 photos (one with Bob), Bob in 2 more, Cid in 1."""
    client = connect("paging")
    if client.stats().photos:
        return client
    photos = [photo(fake_photo(face("ann", variant=v)), f"ann-{v}") for v in range(6)]
    photos += [photo(fake_photo(face("ann", variant=6), face("bob", variant=0, x=200)), "ann-and-bob")]
    photos += [photo(fake_photo(face("bob", variant=v)), f"bob-{v}") for v in (1, 2)]
    photos += [photo(fake_photo(face("cid")), "cid")]
    assert set(statuses(client.index(photos))) == {"INDEXED"}
    return client


def test_findme_pages_are_stable_and_cover_the_ranking(paging_archive) -> None:
    client, reference = paging_archive, [fake_photo(face("ann", variant=99))]
    everything = client.find_me(reference, limit=100)
    assert len(everything.matches) == 7 and not everything.next_page_token
    paged, token = [], ""
    while True:
        reply = client.find_me(reference, limit=3, page_token=token)
        assert len(reply.matches) <= 3
        paged += reply.matches
        token = reply.next_page_token
        if not token:
            break
    assert [m.photo_id for m in paged] == [m.photo_id for m in everything.matches]
    assert [m.similarity for m in paged] == sorted((m.similarity for m in paged), reverse=True)


def test_findme_refuses_tokens_of_another_query(paging_archive, connect) -> None:
    client = paging_archive
    ann, bob = [fake_photo(face("ann", variant=99))], [fake_photo(face("bob", variant=99))]
    token = client.find_me(ann, limit=2).next_page_token
    assert token
    for call in [
        lambda: client.find_me(bob, limit=2, page_token=token),
        lambda: client.find_me(ann, threshold=0.6, limit=2, page_token=token),
        lambda: client.find_me([*ann, *bob], limit=2, page_token=token),
        lambda: connect(OTHER_TENANT).find_me(ann, limit=2, page_token=token),
    ]:
        error = refused(call)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.message == "page_token belongs to another FindMe query"
    assert client.find_me(ann, limit=2, page_token=token).matches, "the token still works for its own query"


def tampered(token: str) -> list[str]:
    """The token with one character changed at each end and in the middle, and cut short."""
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    versions = []
    for position in (0, len(raw) // 2, len(raw) - 1):
        changed = bytearray(raw)
        changed[position] ^= 0x01
        versions.append(base64.urlsafe_b64encode(bytes(changed)).decode().rstrip("="))
    return [*versions, token[:-4]]


def forged_offset_tokens(offset: int) -> list[str]:
    """Tokens a client could write without the key: plain offsets, and JSON offsets in base64."""
    as_json = json.dumps({"offset": offset, "query": "anything"}).encode()
    return [str(offset), base64.urlsafe_b64encode(as_json).decode().rstrip("="), "garbage", "é"]


def test_findme_refuses_altered_and_forged_tokens(paging_archive) -> None:
    client, ann = paging_archive, [fake_photo(face("ann", variant=99))]
    token = client.find_me(ann, limit=2).next_page_token
    for bad in [*tampered(token), *forged_offset_tokens(2)]:
        error = refused(lambda bad=bad: client.find_me(ann, limit=2, page_token=bad))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert error.message == "page_token is not one FindMe issued", bad


def test_replicas_with_the_same_key_accept_each_others_tokens(search, paging_archive) -> None:
    ann = [fake_photo(face("ann", variant=99))]
    key = "a shared page token key"
    one, two, stranger = (start_gateway(search.address, page_token_key=k) for k in (key, key, "another page token key"))
    try:
        with one.client("paging") as a, two.client("paging") as b, stranger.client("paging") as c:
            first = a.find_me(ann, limit=4)
            second = b.find_me(ann, limit=4, page_token=first.next_page_token)
            assert len(first.matches) + len(second.matches) == 7 and not second.next_page_token
            error = refused(lambda: c.find_me(ann, limit=4, page_token=first.next_page_token))
            assert error.message == "page_token is not one FindMe issued"
    finally:
        for gateway in (one, two, stranger):
            gateway.server.stop()


# --- ListPeople -------------------------------------------------------------------------------


def list_people_page(gateway: Gateway, tenant: str, size: int, token: str = "") -> facesearch_pb2.ListPeopleResponse:
    """One ListPeople page (the client's list_people reads them all)."""
    request = facesearch_pb2.ListPeopleRequest(page_size=size, page_token=token)
    with grpc.insecure_channel(gateway.server.address) as channel:
        stub = facesearch_pb2_grpc.FaceSearchStub(channel)
        try:
            return stub.ListPeople(request, metadata=(("authorization", f"Bearer key-{tenant}"),), timeout=10)
        except grpc.RpcError as error:
            raise FaceSearchError(error.code(), error.details()) from None


def test_list_people_pages_through_everyone_once(gateway, connect) -> None:
    client = connect("people")
    names = ["Eve", "ann", "Bob", "dan", "Cid"]
    for number, name in enumerate(names):
        enrolled = client.enroll(name, [fake_photo(face(f"person-{number}"))])
        assert enrolled.reference_faces == 1
    pages, token = [], ""
    while True:
        reply = list_people_page(gateway, "people", 2, token)
        pages.append([p.display_name for p in reply.people])
        token = reply.next_page_token
        if not token:
            break
    assert pages == [["ann", "Bob"], ["Cid", "dan"], ["Eve"]]
    assert [p.display_name for p in client.list_people()] == ["ann", "Bob", "Cid", "dan", "Eve"]


def test_list_people_refuses_forged_altered_and_foreign_tokens(gateway, connect) -> None:
    client = connect("people")
    if len(client.list_people()) < 3:
        for number in range(3):
            client.enroll(f"Person {number}", [fake_photo(face(f"listed-{number}"))])
    token = list_people_page(gateway, "people", 1).next_page_token
    assert token
    for bad in [*forged_offset_tokens(1), *forged_offset_tokens(10**9), *tampered(token)]:
        error = refused(lambda bad=bad: list_people_page(gateway, "people", 1, bad))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert error.message == "page_token is not one ListPeople issued", bad
    error = refused(lambda: list_people_page(gateway, OTHER_TENANT, 1, token))
    assert (error.code, error.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token belongs to another ListPeople query",
    )
    assert list_people_page(gateway, "people", 1, token).people, "the token still works for its own tenant"


# --- Verify -----------------------------------------------------------------------------------


def test_verify_compares_the_largest_usable_face_of_a_group_photo(connect) -> None:
    client = connect("verify")
    group = fake_photo(
        face("tiny", size=20, x=0),  # under min_face_size
        face("ann", size=180, x=100),
        face("bob", size=90, x=400),
        face("blurred", size=300, x=600, blurred=True),
    )
    same = client.verify(group, fake_photo(face("ann", variant=1)))
    assert same.same_person
    box = same.face_a.box
    assert (box.x_min, box.x_max, same.face_a.quality.face_size) == (100, 280, 180)
    assert not client.verify(group, fake_photo(face("bob", variant=1))).same_person


# --- several references of one person ---------------------------------------------------------


def test_a_person_of_several_references_is_matched_by_the_mean_of_their_similarities(connect) -> None:
    # Two references of one person that look nothing alike (directions "u" and "w"): a photo
    # halfway between them (cosine 0.56 to either) is the person; one like a single reference
    # (0.79 to it, 0.0 to the other) is not, though it would pass with that reference alone.
    client = connect("references")
    person = client.enroll("Ulla", [fake_photo(face("u")), fake_photo(face("w"), note="second")]).person_id
    results = list(
        client.index(
            [
                photo(fake_photo(face("u", variant=5, blend=("w",))), "between"),
                photo(fake_photo(face("u", variant=5)), "like-one-reference"),
                photo(fake_photo(face("stranger")), "stranger"),
            ]
        )
    )
    assert statuses(results) == ["INDEXED"] * 3
    found = client.find_me(person_id=person, threshold=0.5).matches
    assert [m.photo_id for m in found] == ["between"]
    assert found[0].similarity == pytest.approx((0.5561 + 0.5694) / 2, abs=0.002)
    everything = {m.photo_id: m.similarity for m in client.find_me(person_id=person, threshold=-1).matches}
    assert everything["like-one-reference"] == pytest.approx((0.7907 + 0.0) / 2, abs=0.05)
    # The same rule for reference photos given with the call, and for Identify.
    given = client.find_me([fake_photo(face("u"), note="a"), fake_photo(face("w"), note="b")], threshold=0.5)
    assert [m.photo_id for m in given.matches] == ["between"]
    [between] = client.identify(fake_photo(face("u", variant=7, blend=("w",))), threshold=0.5).faces
    assert [(c.person_id, round(c.similarity, 2)) for c in between.candidates] == [(person, 0.56)]
    [one_side] = client.identify(fake_photo(face("u", variant=7)), threshold=0.5).faces
    assert one_side.unknown and not one_side.candidates


# --- deadlines --------------------------------------------------------------------------------


def test_downstream_calls_get_what_is_left_of_the_callers_deadline(gateway, hooks, connect) -> None:
    """The gateway allows 20 s; a caller that allows 2 s has every call made for it end within those 2 s."""
    client = connect("deadline", timeout_s=2)
    client.find_me([fake_photo(face("ann"))])
    [query] = hooks.remaining("Query")
    assert query is not None and 1.0 < query <= 2.0 + TIMEOUT_ROUNDING_S
    assert 1.0 < gateway.analyser.calls[-1].remaining_s <= 2.0 + TIMEOUT_ROUNDING_S
    hooks.calls.clear()
    connect("deadline", timeout_s=60).find_me([fake_photo(face("ann"))])
    [query] = hooks.remaining("Query")
    assert query is not None and 19.0 < query <= 20.0 + TIMEOUT_ROUNDING_S, "cut to request_timeout_s"
    assert 19.0 < gateway.analyser.calls[-1].remaining_s <= 20.0


@pytest.fixture(scope="module")
def hurried(search: BackgroundServer) -> Iterator[Gateway]:
    """A gateway that allows each request 0.5 s."""
    started = start_gateway(search.address, request_timeout_s=0.5)
    yield started
    started.server.stop()


def test_the_gateway_answers_deadline_exceeded_itself_when_search_is_slow(hurried, hooks, connect) -> None:
    hooks.delay_s["Query"] = 3
    with hurried.client("deadline", timeout_s=10) as client:
        started = time.monotonic()
        error = refused(lambda: client.find_me([fake_photo(face("ann"))]))
        took = time.monotonic() - started
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # The gateway's answer (the client's own deadline is 10 s and says "Deadline Exceeded"):
    # the search call timing out, or the gateway's own time running out at the same moment.
    assert error.message.startswith(("search Query", "deadline exceeded")), error.message
    assert took < 2.0
    [query] = hooks.remaining("Query")
    assert query is not None and query <= 0.5 + TIMEOUT_ROUNDING_S


def test_the_gateway_answers_deadline_exceeded_when_its_own_work_is_slow(hurried) -> None:
    hurried.analyser.delay_s = 3
    try:
        with hurried.client("deadline", timeout_s=10) as client:
            started = time.monotonic()
            error = refused(lambda: client.verify(fake_photo(face("ann")), fake_photo(face("ann", variant=1))))
            took = time.monotonic() - started
    finally:
        hurried.analyser.delay_s = 0
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED and "deadline exceeded" in error.message
    assert took < 2.0


# --- retries ----------------------------------------------------------------------------------


def test_unavailable_is_retried_by_the_channel_within_the_retry_limit(hooks, connect) -> None:
    client = connect("retry")
    hooks.unavailable["Scroll"] = 2  # the gateway retries twice
    assert client.list_people() == []
    assert hooks.attempts("Scroll") == 3
    hooks.calls.clear()
    hooks.unavailable["Scroll"] = 3
    error = refused(client.list_people)
    assert error.code == grpc.StatusCode.UNAVAILABLE and error.message.startswith("search Scroll")
    assert hooks.attempts("Scroll") == 3, "two retries, no more"


def test_a_search_service_restarted_within_the_retry_window_is_not_noticed() -> None:
    """Four retries 0.2 s apart, doubling, wait about 3 s in all; search is back after 0.3 s."""
    [port] = free_ports(1)
    hooks = SearchHooks()
    search = start_search(hooks, port)
    gateway = start_gateway(f"127.0.0.1:{port}", downstream_retries=4, retry_backoff_s=0.2)
    restarted: list[BackgroundServer] = []
    try:
        with gateway.client("retry", timeout_s=20) as client:
            assert client.stats().photos == 0
            search.stop()

            def restart() -> None:
                time.sleep(0.3)
                restarted.append(start_search(hooks, port))

            thread = threading.Thread(target=restart)
            thread.start()
            try:
                assert client.stats().photos == 0
            finally:
                thread.join()
    finally:
        gateway.server.stop()
        for server in restarted:
            server.stop()
