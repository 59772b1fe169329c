"""The archive's photos as the web app serves them: a photo URI resolved to a file inside one of
the archive roots, or to an object under one of the S3 roots, that the operator configured
(anything else refused), and the bytes sent for it (the photo as it is, a smaller copy, or a
face cut out of it)."""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats sent as they are, by Pillow's name for them; any other is sent as a JPEG copy.
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
MAX_PIXELS = 80_000_000  # larger photos are not decoded here (the detector has the same kind of bar)
MAX_SIDE = 100_000  # wider than any photo: resized() to it only turns the photo upright
FACE_MARGIN = 0.25  # of the box's side, around a face thumbnail
MAX_OBJECT_BYTES = 256 * 1024 * 1024  # larger S3 objects are not read
# The first bytes of an S3 object: enough for an image's size, format and EXIF orientation.
HEADER_BYTES = 256 * 1024
CHUNK_BYTES = 256 * 1024


class Refused(Exception):
    """A URI that is not served: outside the archive roots, or no such photo."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ArchivePhoto:
    path: Path
    size: int
    mtime_ns: int

    @property
    def etag(self) -> str:
        return hashlib.sha256(f"{self.path}:{self.size}:{self.mtime_ns}".encode()).hexdigest()[:32]

    def read(self) -> bytes:
        return self.path.read_bytes()


@dataclass(frozen=True)
class BucketRoot:
    """``s3://bucket/prefix``: the objects of the bucket whose keys lie under the prefix."""

    bucket: str
    prefix: str  # empty (the whole bucket) or ending with "/"

    def holds(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket and key.startswith(self.prefix)


@dataclass(frozen=True)
class BucketPhoto:
    """An object of an S3-compatible bucket, as its HEAD answered."""

    bucket: str
    key: str
    size: int
    object_etag: str
    client: Any = field(compare=False, repr=False)

    @property
    def etag(self) -> str:
        return hashlib.sha256(f"s3://{self.bucket}/{self.key}:{self.object_etag}".encode()).hexdigest()[:32]

    def body(self, byte_range: str = "") -> Any:
        """The object's streaming body (of ``byte_range``, e.g. ``bytes=0-99``, when given)."""
        options = {"Range": byte_range} if byte_range else {}
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key, IfMatch=self.object_etag, **options)["Body"]
        except (BotoCoreError, ClientError) as error:  # changed or gone since the HEAD, or the bucket is down
            raise _bucket_refusal(error) from None

    def read(self) -> bytes:
        return self.body().read()


Photo = ArchivePhoto | BucketPhoto


def bucket_roots(roots: Sequence[str]) -> tuple[BucketRoot, ...]:
    """The ``s3://bucket/prefix`` roots; a prefix is a folder (``s3://b/family`` holds
    ``family/...``, not ``family-other/...``). ``ValueError`` for anything else."""
    found = []
    for root in roots:
        if not root.startswith("s3://"):
            raise ValueError(f"S3 root {root!r}: give s3://bucket or s3://bucket/prefix")
        bucket, _, prefix = root.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if not bucket or any(part in (".", "..") for part in prefix.split("/") if prefix):
            raise ValueError(f"S3 root {root!r}: give s3://bucket or s3://bucket/prefix")
        found.append(BucketRoot(bucket, prefix + "/" if prefix else ""))
    return tuple(found)


def s3_client(endpoint_url: str = "", region: str = "") -> Any:
    """A boto3 S3 client: its credentials, and its endpoint and region unless given here, from
    the standard AWS configuration (AWS_* variables, ~/.aws, an instance role; AWS_ENDPOINT_URL
    for another S3-compatible server)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config)


def _bucket_refusal(error: Exception) -> Refused:
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return Refused(503, "the bucket cannot be read now")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status in (404, 412) or response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchBucket", "404"):
        return Refused(404, "no such photo in the bucket")
    if status == 403:
        return Refused(502, "the web app may not read this photo from the bucket")
    return Refused(503, "the bucket cannot be read now")


def resolve_object(uri: str, roots: Sequence[BucketRoot], client: Any) -> BucketPhoto:
    """The object an ``s3://bucket/key`` URI names, when its key lies under one of ``roots``
    (a key with a ``.`` or ``..`` part never does); ``Refused`` otherwise."""
    if not roots:
        raise Refused(403, "no S3 root is configured: photos in buckets are not served (FACESEARCH_WEB_S3_ROOTS)")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key or "\x00" in key:
        raise Refused(400, "not a valid s3:// URI")
    if any(part in (".", "..") for part in key.split("/")) or not any(r.holds(bucket, key) for r in roots):
        raise Refused(403, "outside the S3 roots")
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError) as error:
        raise _bucket_refusal(error) from None
    if head["ContentLength"] > MAX_OBJECT_BYTES:
        raise Refused(413, "the photo is too large to show")
    return BucketPhoto(bucket, key, head["ContentLength"], head.get("ETag", ""), client)


@dataclass
class Archive:
    """Where photos are served from: folders, and S3 prefixes read with ``client`` (made
    when first needed by ``make_client``)."""

    roots: tuple[Path, ...]
    buckets: tuple[BucketRoot, ...] = ()
    make_client: Any = s3_client
    _client: Any = field(default=None, repr=False)

    def client(self) -> Any:
        if self._client is None:
            self._client = self.make_client()
        return self._client

    def resolve(self, uri: str) -> Photo:
        if uri.startswith("s3://"):
            return resolve_object(uri, self.buckets, self.client())
        return resolve(uri, self.roots)


def archive_roots(roots: Sequence[str | Path]) -> tuple[Path, ...]:
    """The roots as given (made absolute) and with their links resolved: a URI may name a photo
    through either."""
    found: list[Path] = []
    for root in roots:
        given = Path(os.path.normpath(Path(root).expanduser().absolute()))
        for form in (given, given.resolve()):
            if form not in found:
                found.append(form)
    return tuple(found)


def resolve(uri: str, roots: Sequence[Path]) -> ArchivePhoto:
    """The file a photo URI names (a path, or a file:// URI), when it lies inside one of
    ``roots`` once every link and ``..`` is resolved; ``Refused`` otherwise."""
    if not uri:
        raise Refused(404, "this photo has no URI: it was indexed without one")
    if not roots:
        raise Refused(403, "no archive root is configured: photos are not served (FACESEARCH_WEB_ARCHIVE_ROOTS)")
    parts = urlsplit(uri)
    if parts.scheme == "file":
        text = unquote(parts.path)
    elif parts.scheme and len(parts.scheme) > 1:  # http://...: not a file here (s3:// is Archive's)
        raise Refused(404, f"photos at {parts.scheme}:// URIs are not served here")
    else:
        text = uri
    if "\x00" in text:
        raise Refused(400, "not a valid path")
    path = Path(text)  # a relative path lies in no root
    if not any(Path(os.path.normpath(path)).is_relative_to(root) for root in roots):
        raise Refused(403, "outside the archive roots")
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise Refused(404, "no such photo in the archive") from None
    if not any(real.is_relative_to(root) for root in roots):  # a link out of the archive
        raise Refused(403, "outside the archive roots")
    if not real.is_file():
        raise Refused(404, "not a file")
    stat = real.stat()
    return ArchivePhoto(real, stat.st_size, stat.st_mtime_ns)


def open_image(photo: Photo) -> Image.Image:
    try:
        image = Image.open(photo.path if isinstance(photo, ArchivePhoto) else io.BytesIO(photo.read()))
    except (OSError, UnidentifiedImageError):
        raise Refused(415, "the file is not an image") from None
    if image.width * image.height > MAX_PIXELS:
        raise Refused(413, "the photo is too large to show")
    return image


def _sent_as(image: Image.Image) -> str | None:
    if image.getexif().get(0x0112, 1) not in (0, 1):  # rotated by its EXIF orientation: send it upright
        return None
    return CONTENT_TYPES.get(image.format or "")


def content_type(photo: ArchivePhoto) -> str | None:
    """The photo's content type when it is sent as it is; None when it needs converting."""
    with open_image(photo) as image:
        return _sent_as(image)


def object_stream(photo: BucketPhoto) -> tuple[str, Iterator[bytes]] | None:
    """The object's content type and its bytes, read from the bucket as they are sent, when
    it is sent as it is (told by its first bytes); None when it needs converting."""
    body = photo.body()
    header = body.read(HEADER_BYTES)
    try:
        with Image.open(io.BytesIO(header)) as image:
            kind = _sent_as(image)
    except (OSError, UnidentifiedImageError, SyntaxError):
        kind = None  # not an image that the first bytes tell: converted (or refused) from the whole
    if kind is None:
        body.close()
        return None

    def chunks() -> Iterator[bytes]:
        try:
            yield header
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    return kind, chunks()


def upright(image: Image.Image) -> Image.Image:
    """As the detector sees it: its EXIF orientation applied, in RGB."""
    image = ImageOps.exif_transpose(image) or image
    return image.convert("RGB")


def photo_size(photo: Photo) -> tuple[int, int]:
    """Width and height once upright: the space of the detector's face boxes."""
    if isinstance(photo, BucketPhoto):
        return _object_size(photo)
    with open_image(photo) as image:
        return _upright_size(image)


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
        return height, width
    return width, height


@functools.lru_cache(maxsize=4096)
def _object_size(photo: BucketPhoto) -> tuple[int, int]:
    """From the object's first bytes (all of it when they do not tell); kept per object version."""
    try:
        with Image.open(io.BytesIO(photo.body(f"bytes=0-{HEADER_BYTES - 1}").read())) as image:
            return _upright_size(image)
    except (OSError, UnidentifiedImageError, SyntaxError):
        with open_image(photo) as image:
            return _upright_size(image)


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def resized(photo: Photo, width: int) -> bytes:
    """An upright JPEG copy at most ``width`` pixels wide."""
    with open_image(photo) as image:
        image.draft("RGB", (width, width * 4))
        picture = upright(image)
    picture.thumbnail((width, max(1, width * picture.height // max(1, picture.width))))
    return jpeg(picture)


def face(photo: Photo, box: tuple[float, float, float, float], size: int) -> bytes:
    """A square JPEG of ``size`` pixels around the face at ``box`` (upright pixel coordinates)."""
    x_min, y_min, x_max, y_max = box
    with open_image(photo) as image:
        picture = upright(image)
    side = max(x_max - x_min, y_max - y_min) * (1 + 2 * FACE_MARGIN)
    centre_x, centre_y = (x_min + x_max) / 2, (y_min + y_max) / 2
    left, top = max(0, centre_x - side / 2), max(0, centre_y - side / 2)
    right, bottom = min(picture.width, centre_x + side / 2), min(picture.height, centre_y + side / 2)
    if right - left < 1 or bottom - top < 1:
        raise Refused(400, "the box is outside the photo")
    crop = picture.crop((int(left), int(top), int(right), int(bottom)))
    crop.thumbnail((size, size))
    return jpeg(crop)
