"""`facesearch backfill`: folders, listings and an S3-compatible bucket (moto's server, run
here), checkpoints that survive kill -9, and shards; against the gateway on loopback with
the real search service and the fake analyser of tests/test_gateway_logic.py (photos are
JSON that says which faces they hold, in files named like photos)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from backfill.sources import Shard, directory, listing
from cli.main import main
from facesearch.v1 import common_pb2, search_pb2, search_pb2_grpc
from tests.test_gateway_logic import SearchHooks, face, fake_photo, start_gateway, start_search

REPO = Path(__file__).resolve().parent.parent
MODEL = common_pb2.EmbeddingModel(id="facenet-casia", dimension=512)


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


def archive(root: Path, photos: int) -> Path:
    """A folder tree of fake photos: one face each, every seventh without a face, and a note."""
    for n in range(photos):
        folder = root / f"album-{n % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        faces = [] if n % 7 == 6 else [face(f"person-{n % 5}", variant=n)]
        (folder / f"{n:04d}.jpg").write_bytes(fake_photo(*faces, note=str(n)))
    (root / "notes.txt").write_text("not a photo")
    return root


def stored(search, tenant: str) -> set[tuple[str, str, int]]:
    """(photo id, photo hash, face index) of every face the tenant stored."""
    with grpc.insecure_channel(search.address) as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        faces, token = [], ""
        while True:
            reply = stub.Scroll(search_pb2.ScrollRequest(tenant=tenant, model=MODEL, page_size=1000, page_token=token))
            faces += reply.faces
            token = reply.next_page_token
            if not token:
                break
    return {(f.payload.photo_id, f.payload.photo_hash, f.payload.face_index) for f in faces}


def run_backfill(gateway, tenant: str, *args: str) -> int:
    return main(["backfill", "--address", gateway.server.address, "--api-key", f"key-{tenant}", *args])


def test_a_folder_is_indexed_once_and_a_second_run_sends_nothing(gateway, tmp_path, capsys) -> None:
    root = archive(tmp_path / "photos", 30)
    journal = tmp_path / "journal.sqlite"
    failures = tmp_path / "failures.jsonl"
    assert run_backfill(gateway, "backfill", str(root), "--journal", str(journal), "--failures", str(failures)) == 0
    out = capsys.readouterr().out
    assert "26 indexed, 0 duplicate, 4 no_face, 0 invalid, 0 failed" in out
    assert failures.read_text() == ""
    analysed = len(gateway.analyser.photos_analysed())
    assert run_backfill(gateway, "backfill", str(root), "--journal", str(journal)) == 0
    assert len(gateway.analyser.photos_analysed()) == analysed, "nothing detected again, no-face photos included"
    ids = [p.key for p in directory(root)]
    assert ids[:2] == ["album-0/0000.jpg", "album-0/0003.jpg"] and len(ids) == 30


def test_a_backfill_killed_and_started_again_stores_what_one_run_stores(gateway, search, tmp_path) -> None:
    root = archive(tmp_path / "photos", 60)
    assert run_backfill(gateway, "backfill-whole", str(root), "--journal", str(tmp_path / "whole.sqlite")) == 0
    journal = tmp_path / "killed.sqlite"
    command = [
        sys.executable, "-m", "cli.main", "backfill", str(root), "--address", gateway.server.address,
        "--api-key", "key-backfill-shards", "--journal", str(journal), "--workers", "2", "--batch", "4",
    ]  # fmt: skip
    gateway.analyser.delay_s = 0.15  # slow enough to be killed halfway
    before = Counter(gateway.analyser.photos_analysed())
    try:
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 60
        while time.monotonic() < end and _answered(journal) < 20:
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        gateway.analyser.delay_s = 0
    answered = _answered(journal)
    assert 20 <= answered < 60, "killed halfway"
    assert subprocess.run(command, cwd=REPO, capture_output=True).returncode == 0
    assert stored(search, "backfill-shards") == stored(search, "backfill-whole")
    # What was analysed twice is at most what was in flight: one batch per worker.
    sent = Counter(gateway.analyser.photos_analysed()) - before
    assert sum(sent.values()) - len(sent) <= 2 * 4 * 2  # each analysed photo: one DetectBatch per pass
    assert _answered(journal) == 60


def _answered(journal: Path) -> int:
    if not journal.exists():
        return 0
    try:
        with sqlite3.connect(journal) as db:
            return db.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_shards_split_the_archive_between_them(gateway, search, tmp_path) -> None:
    root = archive(tmp_path / "photos", 40)
    keys = [p.key for p in directory(root)]
    parts = [{k for k in keys if Shard(i, 3).holds(k)} for i in range(3)]
    assert set().union(*parts) == set(keys) and sum(map(len, parts)) == len(keys) and all(parts)
    listing_file = tmp_path / "list.txt"
    listing_file.write_text("# the archive\n" + "\n".join(f"photos/{k}" for k in keys) + "\n\n")
    assert [p.key for p in listing(listing_file)] == [f"photos/{k}" for k in keys]
    for i in range(3):
        journal = str(tmp_path / f"shard-{i}.sqlite")
        assert run_backfill(gateway, "backfill-s3", str(listing_file), "--shard", f"{i}/3", "--journal", journal) == 0
    with_faces = {f"photos/{k}" for k in keys if int(Path(k).stem) % 7 != 6}
    assert {photo_id for photo_id, _, _ in stored(search, "backfill-s3")} == with_faces
    assert run_backfill(gateway, "backfill-s3", str(listing_file), "--shard", "3/3") == 2, "a usage error"


def test_a_bucket_prefix_is_read_lazily_page_by_page(gateway, search, s3_endpoint, tmp_path, monkeypatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = boto3.client("s3")
    client.create_bucket(Bucket="archive")
    root = archive(tmp_path / "photos", 12)
    for key in [p.key for p in directory(root)]:
        client.put_object(Bucket="archive", Key=f"family/{key}", Body=(root / key).read_bytes())
    client.put_object(Bucket="archive", Key="family/readme.txt", Body=b"not a photo")
    client.put_object(Bucket="archive", Key="other/0001.jpg", Body=fake_photo(face("stranger")))
    from backfill.sources import s3

    assert [p.key for p in s3("s3://archive/family")] == [p.key for p in directory(root)]
    assert (
        run_backfill(gateway, "backfill-bucket", "s3://archive/family", "--journal", str(tmp_path / "s3.sqlite")) == 0
    )
    ids = {photo_id for photo_id, _, _ in stored(search, "backfill-bucket")}
    assert "album-0/0000.jpg" in ids and not any(i.startswith("other") for i in ids)
