"""The web pages' request handlers (web/app.py) against a stand-in for the gateway client: what
each page shows, what bad uploads get (a clear message and the right HTTP status), and how
photos are served from the archive roots (content types, caching, nothing outside them)."""

from __future__ import annotations

import asyncio
import io
import os

import grpc
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from facesearch.v1 import common_pb2, facesearch_pb2
from sdk.client import FaceSearchError
from tests.conftest import photo_bytes
from web import media
from web.app import create_app

BOX = common_pb2.BoundingBox(x_min=100, y_min=80, x_max=300, y_max=320)


class Gateway:
    """Answers as the gateway would, and keeps the calls it got."""

    def __init__(self, archive) -> None:
        self.calls: list[tuple] = []
        self.archive = archive
        self.find_me_error: FaceSearchError | None = None
        self.match_uri = str(archive / "a.jpg")
        uri = str(archive / "a.jpg")
        self.faces = [
            facesearch_pb2.FaceRef(photo_id="a.jpg", photo_uri=uri, face_id=f"face-{i}", box=BOX) for i in range(3)
        ]
        self.people = [
            facesearch_pb2.Person(person_id="p1", display_name="Ada", archive_faces=3, representative=self.faces[0]),
            facesearch_pb2.Person(person_id="p2", display_name="Bob", hidden=True),
            facesearch_pb2.Person(person_id="p3", display_name="Cleo", archive_faces=2),
        ]
        self.indexing = facesearch_pb2.IndexingProgress()

    def stats(self):
        return facesearch_pb2.StatsResponse(photos=12, faces=30, people=2, indexing=self.indexing)

    def clustering_status(self):
        return facesearch_pb2.ClusteringStatus(
            state=facesearch_pb2.CLUSTERING_STATE_RUNNING, faces_to_do=30, faces_done=10
        )

    def list_people(self, *, include_hidden=False):
        return [p for p in self.people if include_hidden or not p.hidden]

    def find_me(self, references=(), *, person_id="", limit=50, page_token=""):
        self.calls.append(("find_me", list(references), person_id, limit, page_token))
        if self.find_me_error:
            raise self.find_me_error
        match = facesearch_pb2.PhotoMatch(photo_id="a.jpg", photo_uri=self.match_uri, box=BOX, similarity=0.8)
        return facesearch_pb2.FindMeResponse(
            matches=[match],
            next_page_token="" if page_token else "next-token",
            settings=facesearch_pb2.MatchSettings(similarity_threshold=0.43),
        )

    def find_people(self, person_ids, *, match_all=False, limit=50, page_token=""):
        self.calls.append(("find_people", list(person_ids), match_all, limit, page_token))
        match = facesearch_pb2.PhotoMatch(
            photo_id="a.jpg", photo_uri=self.match_uri, box=BOX, similarity=0.7, person_ids=list(person_ids)
        )
        return facesearch_pb2.FindMeResponse(
            matches=[match],
            next_page_token="" if page_token else "next-token",
            settings=facesearch_pb2.MatchSettings(similarity_threshold=0.43),
        )

    def person_faces(self, person_id):
        return self.faces

    def cluster_faces(self, **_options):
        return [facesearch_pb2.FaceCluster(cluster_id="c1", faces=self.faces, face_count=3)]

    def start_clustering(self, *, full=False):
        self.calls.append(("start_clustering", full))
        return self.clustering_status()

    def name_cluster(self, cluster_id, display_name="", *, person_id=""):
        self.calls.append(("name_cluster", cluster_id, display_name, person_id))
        return facesearch_pb2.Person(person_id="p9", display_name=display_name)

    def reject_face(self, face_id, person_id):
        self.calls.append(("reject_face", face_id, person_id))
        return facesearch_pb2.FaceRef(face_id=face_id)

    def rename_person(self, person_id, name):
        self.calls.append(("rename_person", person_id, name))

    def hide_person(self, person_id, hidden=True):
        self.calls.append(("hide_person", person_id, hidden))

    def merge_people(self, person_id, others):
        self.calls.append(("merge_people", person_id, list(others)))

    def identify(self, photo, *, top_k=3):
        candidate = facesearch_pb2.Candidate(person_id="p1", display_name="Ada", similarity=0.9)
        return facesearch_pb2.IdentifyResponse(
            faces=[facesearch_pb2.IdentifiedFace(face=common_pb2.Face(box=BOX), candidates=[candidate])]
        )


@pytest.fixture
def archive(tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(photo_bytes("photoprism", "2.jpg"))
    png = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(png, "PNG")
    (folder / "b.png").write_bytes(png.getvalue())
    (tmp_path / "secret.jpg").write_bytes(photo_bytes("photoprism", "4.jpg"))
    os.symlink(tmp_path / "secret.jpg", folder / "link.jpg")
    return folder


@pytest.fixture
def gateway(archive):
    return Gateway(archive)


@pytest.fixture
def pages(gateway, archive):
    return TestClient(create_app(gateway, [archive], max_upload_bytes=200_000, cache_max_age_s=600))


def upload(pages, content: bytes, name: str = "me.jpg"):
    return pages.post("/findme", files={"selfie": (name, content, "image/jpeg")})


def test_the_home_page_shows_the_counts_and_progress_and_needs_nothing_from_elsewhere(pages):
    page = pages.get("/")
    assert page.status_code == 200
    assert 'data-stat="photos">12<' in page.text and 'data-stat="faces_done">10<' in page.text
    assert "running" in page.text and '<option value="p1">Ada</option>' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text, "no font, script or style from elsewhere"
    assert pages.get("/api/status").json()["faces_to_do"] == 30


def running_indexing(streams_open: int = 2) -> facesearch_pb2.IndexingProgress:
    progress = facesearch_pb2.IndexingProgress(
        streams_open=streams_open,
        run=facesearch_pb2.IndexingCounts(
            streams=2, photos_received=400, photos_done=340, photos_failed=3, photos_duplicate=10, photos_no_face=20
        ),
        total=facesearch_pb2.IndexingCounts(photos_done=900),
        photos_per_second=5.14,
    )
    progress.last_photo_at.FromJsonString("2026-05-04T10:20:30Z")
    return progress


def test_the_indexing_progress_is_on_the_home_page_and_polled_as_json(pages, gateway):
    assert "No indexing running; none since the gateway started." in pages.get("/").text
    idle = pages.get("/progress")
    assert idle.status_code == 200 and idle.headers["cache-control"] == "no-store"
    assert idle.json()["streams_open"] == 0 and idle.json()["last_photo_at"] is None
    gateway.indexing = running_indexing()
    progress = pages.get("/progress").json()
    assert progress["summary"] == (
        "Indexing: 2 streams, 340 of 400 photos received done (3 failed, 10 duplicates, 20 without a face), "
        "5.1 photos/s, last at 2026-05-04 10:20:30 UTC"
    )
    assert (progress["streams_open"], progress["photos_done"], progress["photos_received"]) == (2, 340, 400)
    assert progress["last_photo_at"] == "2026-05-04T10:20:30Z" and progress["total_photos_done"] == 900
    page = pages.get("/")
    assert '<p id="indexing" data-indexing>Indexing: 2 streams, 340 of 400 photos' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"] and "<script>" not in page.text
    assert '"/progress"' in pages.get("/static/app.js").text, "the page's own script polls it"
    gateway.indexing = running_indexing(streams_open=0)
    assert (
        "No indexing running; last finished 2026-05-04 10:20:30 UTC (340 photos in the last run)."
        in pages.get("/").text
    )


def test_the_progress_says_when_the_gateway_cannot_answer(pages, gateway):
    def down():
        raise FaceSearchError(grpc.StatusCode.UNAVAILABLE, "connection refused")

    gateway.stats = down
    assert pages.get("/progress").status_code == 503
    page = pages.get("/")
    assert page.status_code == 200 and "cannot answer now" in page.text and "data-indexing" not in page.text


def test_photos_with_several_people_all_or_any_page_after_page(pages, gateway):
    home = pages.get("/").text
    assert 'action="/findme/people"' in home and home.count('type="checkbox" name="person"') == 2, "hidden Bob left out"
    assert "<legend>Tick two people or more</legend>" in home and 'name="match" value="all" checked' in home
    page = pages.get("/findme/people", params={"person": ["p1", "p3"], "match": "all"})
    assert page.status_code == 200 and "Photos of Ada and Cleo" in page.text
    assert gateway.calls[-1] == ("find_people", ["p1", "p3"], True, 24, "")
    assert "with Ada, Cleo" in page.text and 'class="box"' in page.text
    assert 'href="/findme/people?person=p1&amp;person=p3&amp;match=all&amp;page=next-token"' in page.text
    second = pages.get("/findme/people", params={"person": ["p1", "p3"], "match": "all", "page": "next-token"})
    assert gateway.calls[-1][-1] == "next-token" and "More photos" not in second.text
    assert 'href="/findme/people?person=p1&amp;person=p3&amp;match=all">Back to the first page' in second.text
    anyone = pages.get("/findme/people", params={"person": ["p3", "p1", "p3"], "match": "any"})
    assert "Photos of Cleo or Ada" in anyone.text and gateway.calls[-1][1:3] == (["p3", "p1"], False)


def test_photos_with_several_people_need_two_of_them(pages, gateway):
    for params in ({"person": "p1"}, {}, {"person": ["p1", "p1"]}):
        page = pages.get("/findme/people", params=params)
        assert page.status_code == 400 and "Tick two people or more" in page.text and 'role="alert"' in page.text
    assert pages.get("/findme/people", params={"person": ["p1", "p3"], "match": "most"}).status_code == 400
    assert not [c for c in gateway.calls if c[0] == "find_people"]


def test_a_selfie_finds_the_photos_boxed_and_the_next_page_sends_it_again(pages, gateway):
    selfie = photo_bytes("photoprism", "2.jpg")[:150_000]  # under the limit; still decodes as a JPEG header
    selfie = _small_jpeg()
    page = upload(pages, selfie)
    assert page.status_code == 200, page.text
    assert 'class="box" style="left:' in page.text and "/media/view?uri=" in page.text
    assert gateway.calls[-1][1] == [selfie] and gateway.calls[-1][4] == ""
    assert 'name="page" value="next-token"' in page.text
    import re

    b64 = re.search(r'name="selfie_b64" value="([^"]+)"', page.text).group(1)
    second = pages.post("/findme", data={"selfie_b64": b64, "page": "next-token"})
    assert second.status_code == 200 and gateway.calls[-1][1] == [selfie] and gateway.calls[-1][4] == "next-token"
    assert "More photos" not in second.text


def test_a_person_is_found_page_after_page(pages, gateway):
    page = pages.get("/findme", params={"person": "p1"})
    assert page.status_code == 200 and "Photos of Ada" in page.text
    assert "page=next-token" in page.text and gateway.calls[-1][2] == "p1"
    assert "More photos" not in pages.get("/findme", params={"person": "p1", "page": "next-token"}).text


def test_an_upload_that_is_not_an_image_is_415_with_a_message(pages, gateway):
    page = upload(pages, b"%PDF-1.4 not a photo", "cv.pdf")
    assert page.status_code == 415 and "not a photo" in page.text and 'role="alert"' in page.text
    assert not gateway.calls, "never sent to the gateway"


def test_an_upload_too_large_is_413(pages, gateway):
    page = upload(pages, b"\xff\xd8" + b"0" * 300_000)
    assert page.status_code == 413 and "too large" in page.text and "MB" in page.text
    assert not gateway.calls


def test_an_upload_declared_too_large_is_refused_before_it_is_read(gateway, archive):
    app = create_app(gateway, [archive], max_upload_bytes=200_000)
    sent = []

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/findme",
        "raw_path": b"/findme",
        "query_string": b"",
        "headers": [(b"content-length", b"1000000000"), (b"content-type", b"multipart/form-data; boundary=x")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and b"too large" in b"".join(m.get("body", b"") for m in sent[1:])


def test_an_empty_upload_is_400(pages):
    page = upload(pages, b"")
    assert page.status_code == 400 and "Choose a photo" in page.text


def test_a_photo_without_a_face_is_422_with_a_message(pages, gateway):
    gateway.find_me_error = FaceSearchError(grpc.StatusCode.INVALID_ARGUMENT, "reference 1: no face found")
    page = upload(pages, _small_jpeg())
    assert page.status_code == 422 and "No face found in your photo" in page.text
    assert 'data-stat="photos"' in page.text, "the home page again, with the message"


def test_the_gateway_down_is_503(pages, gateway):
    gateway.find_me_error = FaceSearchError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    assert upload(pages, _small_jpeg()).status_code == 503


def test_people_rename_hide_merge(pages, gateway):
    page = pages.get("/people")
    assert "Ada" in page.text and "Bob" not in page.text and "/media/face?" in page.text
    assert "Bob" in pages.get("/people", params={"hidden": "true"}).text
    renamed = pages.post("/people/p1/rename", data={"name": " Ada L. ", "back": "/people"}, follow_redirects=False)
    assert renamed.status_code == 303 and renamed.headers["location"] == "/people"
    assert gateway.calls[-1] == ("rename_person", "p1", "Ada L.")
    for elsewhere in ("https://evil.example/", "//evil.example/", "/\\evil.example/", "people"):
        away = pages.post("/people/p1/hide", data={"hidden": "true", "back": elsewhere}, follow_redirects=False)
        assert away.headers["location"] == "/people", ("back only to a page of this site", elsewhere)
    assert gateway.calls[-1] == ("hide_person", "p1", True)
    pages.post("/people/p2/hide", data={"hidden": "false"}, follow_redirects=False)
    assert gateway.calls[-1] == ("hide_person", "p2", False)
    merged = pages.post("/people/merge", data={"into": "p1", "person": ["p1", "p2"]}, follow_redirects=False)
    assert merged.status_code == 303 and gateway.calls[-1] == ("merge_people", "p1", ["p2"])
    assert pages.post("/people/merge", data={"into": "p1"}).status_code == 400


def test_the_clusters_page_lists_them_with_the_clustering_progress(pages, gateway):
    page = pages.get("/clusters")
    assert page.status_code == 200 and 'href="/clusters/c1"' in page.text and "10 of 30 faces" in page.text
    started = pages.post("/clusters/run", data={"full": "true"}, follow_redirects=False)
    assert started.status_code == 303 and gateway.calls[-1] == ("start_clustering", True)


def test_a_cluster_named_leaves_out_the_unticked_faces(pages, gateway):
    page = pages.get("/clusters/c1")
    assert page.status_code == 200 and page.text.count('class="keep"') == 3
    form = {"name": "Cleo", "face": ["face-0", "face-1", "face-2"], "keep": ["face-0", "face-2"]}
    named = pages.post("/clusters/c1/name", data=form, follow_redirects=False)
    assert named.status_code == 303 and named.headers["location"] == "/people/p9"
    assert gateway.calls[-2:] == [("name_cluster", "c1", "Cleo", ""), ("reject_face", "face-1", "p9")]
    assert pages.get("/clusters/nope").status_code == 404
    assert pages.post("/clusters/c1/name", data={"name": " "}).status_code == 400


def test_not_this_person_on_a_person_page(pages, gateway):
    page = pages.get("/people/p1")
    assert page.text.count('action="/faces/') == 3 and "Not Ada" in page.text
    said = pages.post("/faces/face-1/not", data={"person": "p1", "back": "/people/p1"}, follow_redirects=False)
    assert said.status_code == 303 and gateway.calls[-1] == ("reject_face", "face-1", "p1")
    assert pages.get("/people/nobody").status_code == 404


def test_a_photo_page_shows_its_faces_and_who_they_are(pages, archive):
    page = pages.get("/photo", params={"uri": str(archive / "a.jpg"), "id": "a.jpg"})
    assert page.status_code == 200 and 'href="/people/p1">Ada</a>' in page.text and 'class="box"' in page.text


def test_photos_are_served_with_their_type_and_caching_headers(pages, archive):
    photo = pages.get("/media/photo", params={"uri": str(archive / "a.jpg")})
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    assert photo.content == (archive / "a.jpg").read_bytes()
    assert photo.headers["cache-control"] == "private, max-age=600" and photo.headers["etag"]
    png = pages.get("/media/photo", params={"uri": f"file://{archive / 'b.png'}"})
    assert png.headers["content-type"] == "image/png"
    again = pages.get(
        "/media/photo", params={"uri": str(archive / "a.jpg")}, headers={"If-None-Match": photo.headers["etag"]}
    )
    assert again.status_code == 304 and not again.content
    view = pages.get("/media/view", params={"uri": str(archive / "a.jpg"), "w": 480})
    assert view.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(view.content)).width == 480
    face = pages.get("/media/face", params={"uri": str(archive / "a.jpg"), "box": "100,80,300,320", "s": 96})
    assert face.status_code == 200 and max(Image.open(io.BytesIO(face.content)).size) == 96
    assert face.headers["etag"] != view.headers["etag"]
    assert pages.get("/media/view", params={"uri": str(archive / "a.jpg"), "w": 5000}).status_code == 400
    assert pages.get("/media/face", params={"uri": str(archive / "a.jpg"), "box": "1,2"}).status_code == 400


def test_a_photo_turned_by_its_exif_orientation_is_sent_upright(pages, archive):
    turned = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # to be turned 90 degrees clockwise to be seen upright
    Image.new("RGB", (400, 200), "blue").save(turned, "JPEG", exif=exif)
    (archive / "turned.jpg").write_bytes(turned.getvalue())
    photo = pages.get("/media/photo", params={"uri": str(archive / "turned.jpg")})
    assert photo.headers["content-type"] == "image/jpeg" and photo.content != turned.getvalue()
    assert Image.open(io.BytesIO(photo.content)).size == (200, 400)
    # The boxes on the pages are placed in the upright photo, where the detector found the faces.
    assert media.photo_size(media.resolve(str(archive / "turned.jpg"), media.archive_roots([archive]))) == (200, 400)


@pytest.mark.parametrize(
    "uri",
    [
        "{archive}/../secret.jpg",
        "{archive}/../../../../etc/passwd",
        "file://{archive}/../secret.jpg",
        "file://{archive}/%2e%2e/secret.jpg",
        "{archive}/link.jpg",  # a link inside the archive to a file outside it
        "/etc/passwd",
        "a.jpg",  # relative
    ],
)
def test_nothing_outside_the_archive_roots_is_served(pages, archive, uri):
    uri = uri.format(archive=archive)
    for path, extra in (("/media/photo", {}), ("/media/view", {"w": 480}), ("/media/face", {"box": "1,1,9,9"})):
        answer = pages.get(path, params={"uri": uri, **extra})
        assert answer.status_code == 403, (path, uri, answer.status_code)
        assert "secret" not in answer.text and b"\xff\xd8" not in answer.content
    assert pages.get("/photo", params={"uri": uri}).status_code == 403


def test_a_missing_photo_is_404_and_one_without_a_uri_is_shown_as_such(pages, archive, gateway):
    assert pages.get("/media/photo", params={"uri": str(archive / "gone.jpg")}).status_code == 404
    gateway.match_uri = ""
    page = pages.get("/findme", params={"person": "p1"})
    assert page.status_code == 200 and "cannot show this photo: this photo has no URI" in page.text
    gateway.match_uri = str(archive)  # a folder
    assert "cannot show this photo: not a file" in pages.get("/findme", params={"person": "p1"}).text


def test_no_archive_root_serves_nothing(gateway, archive):
    pages = TestClient(create_app(gateway, []))
    assert pages.get("/media/photo", params={"uri": str(archive / "a.jpg")}).status_code == 403
    assert "cannot show this photo" in pages.get("/findme", params={"person": "p1"}).text


def _small_jpeg() -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(photo_bytes("photoprism", "2.jpg"))).convert("RGB").resize((320, 240)).save(out, "JPEG")
    return out.getvalue()
