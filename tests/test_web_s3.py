"""Photos stored with s3:// URIs (as `facesearch backfill s3://...` stores them), served by the
web app from moto's S3 server on loopback: only keys under an allowed S3 root, streamed with
their type, cached by the object's ETag, thumbnails and views as for files."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import photo_bytes
from tests.test_web import Gateway
from web import media
from web.app import create_app
from web.server import build_app
from web.settings import WebSettings

BUCKET = "archive"


@pytest.fixture(scope="module")
def aws_environment(s3_endpoint):
    """The standard AWS variables pointing at moto (the web app reads its credentials from them)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
        yield


@pytest.fixture(scope="module")
def bucket(aws_environment):
    """The bucket: family/a.jpg, family/b.png, family/turned.jpg, family/notes.txt, and photos
    outside the allowed root (secret/, family-other/)."""
    client = media.s3_client()
    client.create_bucket(Bucket=BUCKET)
    png = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(png, "PNG")
    turned = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # to be turned 90 degrees clockwise to be seen upright
    Image.new("RGB", (400, 200), "blue").save(turned, "JPEG", exif=exif)
    objects = {
        "family/a.jpg": photo_bytes("photoprism", "2.jpg"),
        "family/b.png": png.getvalue(),
        "family/turned.jpg": turned.getvalue(),
        "family/notes.txt": b"not a photo",
        "secret/a.jpg": photo_bytes("photoprism", "4.jpg"),
        "family-other/a.jpg": photo_bytes("photoprism", "4.jpg"),
    }
    for key, body in objects.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    return objects


@pytest.fixture
def gateway(tmp_path):
    stand_in = Gateway(tmp_path)
    stand_in.match_uri = f"s3://{BUCKET}/family/a.jpg"
    return stand_in


@pytest.fixture
def pages(gateway, bucket):
    return TestClient(create_app(gateway, [], s3_roots=[f"s3://{BUCKET}/family"], cache_max_age_s=600))


def test_an_object_under_an_s3_root_is_streamed_with_its_type_and_its_etag(pages, bucket):
    uri = f"s3://{BUCKET}/family/a.jpg"
    photo = pages.get("/media/photo", params={"uri": uri})
    assert photo.status_code == 200, photo.text
    assert photo.headers["content-type"] == "image/jpeg" and photo.content == bucket["family/a.jpg"]
    assert photo.headers["cache-control"] == "private, max-age=600" and photo.headers["etag"]
    again = pages.get("/media/photo", params={"uri": uri}, headers={"If-None-Match": photo.headers["etag"]})
    assert again.status_code == 304 and not again.content
    png = pages.get("/media/photo", params={"uri": f"s3://{BUCKET}/family/b.png"})
    assert png.headers["content-type"] == "image/png" and png.content == bucket["family/b.png"]
    turned = pages.get("/media/photo", params={"uri": f"s3://{BUCKET}/family/turned.jpg"})
    assert turned.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(turned.content)).size == (200, 400)
    assert pages.get("/media/photo", params={"uri": f"s3://{BUCKET}/family/notes.txt"}).status_code == 415


def test_an_object_changed_in_the_bucket_gets_another_etag(pages, bucket):
    uri = f"s3://{BUCKET}/family/changing.png"
    client = media.s3_client()
    client.put_object(Bucket=BUCKET, Key="family/changing.png", Body=bucket["family/b.png"])
    first = pages.get("/media/photo", params={"uri": uri}).headers["etag"]
    client.put_object(Bucket=BUCKET, Key="family/changing.png", Body=bucket["family/a.jpg"])
    changed = pages.get("/media/photo", params={"uri": uri}, headers={"If-None-Match": first})
    assert changed.status_code == 200 and changed.headers["etag"] != first
    assert changed.content == bucket["family/a.jpg"]


def test_views_and_face_thumbnails_of_objects(pages):
    uri = f"s3://{BUCKET}/family/a.jpg"
    view = pages.get("/media/view", params={"uri": uri, "w": 480})
    assert view.status_code == 200 and Image.open(io.BytesIO(view.content)).width == 480
    face = pages.get("/media/face", params={"uri": uri, "box": "100,80,300,320", "s": 96})
    assert face.status_code == 200 and max(Image.open(io.BytesIO(face.content)).size) == 96
    cached = pages.get(
        "/media/face",
        params={"uri": uri, "box": "100,80,300,320", "s": 96},
        headers={"If-None-Match": face.headers["etag"]},
    )
    assert cached.status_code == 304 and face.headers["etag"] != view.headers["etag"]


def test_pages_show_photos_in_the_bucket_boxed(pages):
    page = pages.get("/findme", params={"person": "p1"})
    assert page.status_code == 200 and "cannot show this photo" not in page.text
    assert 'class="box" style="left:' in page.text
    assert "/media/view?uri=s3%3A%2F%2Farchive%2Ffamily%2Fa.jpg" in page.text
    photo = pages.get("/photo", params={"uri": f"s3://{BUCKET}/family/a.jpg", "id": "a.jpg"})
    assert photo.status_code == 200 and 'href="/people/p1">Ada</a>' in photo.text


@pytest.mark.parametrize(
    ("uri", "status"),
    [
        (f"s3://{BUCKET}/secret/a.jpg", 403),
        (f"s3://{BUCKET}/family-other/a.jpg", 403),  # a prefix is a folder
        (f"s3://{BUCKET}/family/../secret/a.jpg", 403),
        (f"s3://{BUCKET}/family/./../secret/a.jpg", 403),
        (f"s3://{BUCKET}/family/..", 403),
        (f"s3://{BUCKET}/familya.jpg", 403),
        ("s3://other-bucket/family/a.jpg", 403),
        (f"s3://{BUCKET}", 400),
        ("s3:///family/a.jpg", 400),
    ],
)
def test_nothing_outside_the_s3_roots_is_served(pages, uri, status):
    for path, extra in (("/media/photo", {}), ("/media/view", {"w": 480}), ("/media/face", {"box": "1,1,9,9"})):
        answer = pages.get(path, params={"uri": uri, **extra})
        assert answer.status_code == status, (path, uri, answer.status_code)
        assert b"\xff\xd8" not in answer.content
    assert pages.get("/photo", params={"uri": uri}).status_code == status


def test_a_missing_object_is_404_and_no_s3_root_serves_nothing(pages, gateway, bucket):
    assert pages.get("/media/photo", params={"uri": f"s3://{BUCKET}/family/gone.jpg"}).status_code == 404
    without = TestClient(create_app(gateway, []))
    refused = without.get("/media/photo", params={"uri": f"s3://{BUCKET}/family/a.jpg"})
    assert refused.status_code == 403 and "no S3 root" in refused.text
    assert "cannot show this photo: no S3 root" in without.get("/findme", params={"person": "p1"}).text


def test_the_settings_give_the_roots_and_the_endpoint(gateway, bucket, s3_endpoint, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # from the settings instead
    settings = WebSettings(
        api_key="key", s3_roots=f"s3://{BUCKET}/secret, s3://{BUCKET}/family/", s3_endpoint_url=s3_endpoint
    )
    assert settings.buckets == [f"s3://{BUCKET}/secret", f"s3://{BUCKET}/family/"]
    pages = TestClient(build_app(settings, gateway))
    assert pages.get("/media/photo", params={"uri": f"s3://{BUCKET}/secret/a.jpg"}).status_code == 200
    with pytest.raises(ValueError, match="give s3://bucket"):
        media.bucket_roots(["/photos"])
