"""The indexing progress in Stats (gateway/progress.py): a real gateway with the fake analyser
of tests/test_gateway_logic.py and the real search service, an IndexPhotos stream held open
half-way, and what the tenant and another tenant read meanwhile and once it closed (through
the SDK and `facesearch stats`); then the
progress alone, on a clock of the test's: the rate over the last minute and forgetting idle
tenants."""

from __future__ import annotations

import threading
import time

import pytest

from cli.main import main
from facesearch.v1 import facesearch_pb2
from gateway.progress import IndexingProgress
from tests.test_gateway_logic import (
    OTHER_TENANT,
    SearchHooks,
    face,
    failing_photo,
    fake_photo,
    start_gateway,
    start_search,
)

TENANT = "backfill"


@pytest.fixture(scope="module")
def search():
    server = start_search(SearchHooks())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(search):
    started = start_gateway(search.address, cluster_after_new_faces=0)
    yield started
    started.server.stop()


def wait_for(read, done, timeout_s: float = 10):
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def photo(n: int, content: bytes) -> facesearch_pb2.Photo:
    return facesearch_pb2.Photo(id=f"{n:03d}.jpg", uri=f"/archive/{n:03d}.jpg", content=content)


def test_an_open_stream_shows_in_stats_half_way_and_its_counts_stay_once_closed(gateway, capsys) -> None:
    first_half = [photo(n, fake_photo(face(f"person-{n}"))) for n in range(6)]
    first_half.append(photo(6, fake_photo()))  # no face
    first_half.append(photo(7, first_half[0].content))  # the same bytes as the first
    second_half = [photo(n, fake_photo(face(f"person-{n}"), note="second")) for n in range(8, 12)]
    second_half.append(photo(12, failing_photo("INVALID_ARGUMENT", "not an image")))
    half_way, go_on = threading.Event(), threading.Event()

    def photos():
        yield from first_half
        half_way.set()
        go_on.wait(30)
        yield from second_half

    results = []
    with gateway.client(TENANT) as client, gateway.client(OTHER_TENANT) as other:
        before = client.stats().indexing
        assert before.streams_open == 0 and before.run.photos_done == 0 and not before.HasField("last_photo_at")
        stream = threading.Thread(target=lambda: results.extend(client.index(photos())))
        stream.start()
        try:
            assert half_way.wait(10)
            during = wait_for(lambda: client.stats().indexing, lambda p: p.run.photos_done == len(first_half))
            assert during.streams_open == 1
            assert during.run.streams == 1 and during.run.photos_received == len(first_half)
            assert during.run.photos_done == len(first_half)
            assert (during.run.photos_no_face, during.run.photos_duplicate, during.run.photos_failed) == (1, 1, 0)
            assert during.run.faces_stored == 6
            assert during.photos_per_second > 0 and during.HasField("last_photo_at")
            assert abs(during.last_photo_at.ToDatetime().timestamp() - time.time()) < 30
            elsewhere = other.stats().indexing
            assert elsewhere.streams_open == 0 and elsewhere.run.photos_received == 0
            assert elsewhere.total.photos_done == 0 and not elsewhere.HasField("last_photo_at")
        finally:
            go_on.set()
            stream.join(30)
        assert len(results) == len(first_half) + len(second_half)
        after = wait_for(lambda: client.stats().indexing, lambda p: p.streams_open == 0)
        assert after.streams_open == 0, "the stream closed"
        done = len(first_half) + len(second_half)
        assert after.run.photos_received == after.run.photos_done == done
        assert (after.run.photos_no_face, after.run.photos_duplicate, after.run.photos_failed) == (1, 1, 1)
        assert after.run.faces_stored == 10 and after.total == after.run
        assert other.stats().indexing.total.photos_done == 0

        assert main(["stats", "--address", gateway.server.address, "--api-key", f"key-{TENANT}"]) == 0
        printed = capsys.readouterr().out
        assert "indexing on this gateway replica: 0 stream(s) open" in printed and "last photo finished: 20" in printed
        assert (
            "this run: 1 stream(s), 13 photos received, 13 done (1 failed, 1 duplicates, 1 without a face), "
            "10 faces stored" in printed
        )

        # The next run starts from zero; the totals go on.
        assert [r.status for r in client.index([photo(20, fake_photo(face("late")))])] == [
            facesearch_pb2.PHOTO_STATUS_INDEXED
        ]
        later = wait_for(lambda: client.stats().indexing, lambda p: p.streams_open == 0)
        assert later.run.photos_done == 1 and later.run.streams == 1
        assert later.total.photos_done == done + 1 and later.total.streams == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def indexed(faces: int = 1) -> facesearch_pb2.PhotoResult:
    return facesearch_pb2.PhotoResult(status=facesearch_pb2.PHOTO_STATUS_INDEXED, faces_stored=faces)


def test_the_rate_is_over_the_last_minute() -> None:
    clock = Clock()
    progress = IndexingProgress(monotonic=clock, wall_clock=clock)
    progress.stream_opened("t")
    for _ in range(10):
        clock.now += 1
        progress.photo_done("t", indexed())
    assert progress.of("t").photos_per_second == pytest.approx(1.0), "10 photos over the run's 10 s"
    clock.now += 100
    for _ in range(30):
        clock.now += 1
        progress.photo_done("t", indexed())
    assert progress.of("t").photos_per_second == pytest.approx(0.5), "30 photos in the last 60 s"
    clock.now += 61
    assert progress.of("t").photos_per_second == 0
    assert progress.of("t").last_photo_at.seconds == 1140


def test_idle_tenants_are_forgotten_and_open_streams_are_not() -> None:
    clock = Clock()
    progress = IndexingProgress(monotonic=clock, wall_clock=clock, forget_after_s=3600)
    for n in range(1000):
        progress.stream_opened(f"tenant-{n}")
        progress.photo_done(f"tenant-{n}", indexed())
        progress.stream_closed(f"tenant-{n}")
    progress.stream_opened("still-indexing")
    assert progress.tenants() == 1001
    clock.now += 3601
    assert progress.of("tenant-1").total.photos_done == 0, "forgotten"
    assert progress.tenants() == 1
    assert progress.of("still-indexing").streams_open == 1
