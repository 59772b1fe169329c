"""Where a backfill's photos come from: a directory tree, a file listing paths, or an
S3-compatible bucket prefix. Each is walked lazily (never the whole listing in memory), in
a fixed order, and gives photos by kind of file name; a photo keeps its URI.

A photo's key is its id in the archive: its path relative to the directory (as
``facesearch index DIR`` names photos), the line of the listing, or the object key relative
to the prefix. ``Shard`` keeps the photos of one of N shards, by a hash of the key: the same
partition on every machine and every run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class SourcePhoto:
    key: str  # the photo's id in the archive
    uri: str  # where it can be read again (shown with search results)
    read: Callable[[], bytes]


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``i/N`` (0 <= i < N)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"shard {text!r}: give i/N, e.g. 0/4") from None
        if not 0 <= index < count:
            raise ValueError(f"shard {text!r}: need 0 <= i < N")
        return cls(index, count)

    def holds(self, key: str) -> bool:
        if self.count == 1:
            return True
        digest = hashlib.sha256(key.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


def _walk(root: Path) -> Iterator[Path]:
    """Files under ``root``, depth first, each folder's entries in name order."""
    with os.scandir(root) as entries:
        ordered = sorted(entries, key=lambda e: e.name)
    for entry in ordered:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)


def directory(root: Path) -> Iterator[SourcePhoto]:
    for path in _walk(root):
        if is_image(path.name):
            yield SourcePhoto(path.relative_to(root).as_posix(), str(path), path.read_bytes)


def listing(file: Path) -> Iterator[SourcePhoto]:
    """One path per line (relative ones to the listing's folder); blank lines and # comments skipped."""
    with file.open(encoding="utf-8") as lines:
        for line in lines:
            entry = line.strip()
            if not entry or entry.startswith("#") or not is_image(entry):
                continue
            path = Path(entry) if Path(entry).is_absolute() else file.parent / entry
            yield SourcePhoto(entry, str(path), path.read_bytes)


def s3(url: str, client=None) -> Iterator[SourcePhoto]:
    """The objects under ``s3://bucket/prefix``, page by page (``client``: a boto3 S3 client;
    by default one from the environment: AWS_* variables, AWS_ENDPOINT_URL for another
    S3-compatible server)."""
    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if client is None:
        import boto3

        client = boto3.client("s3")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/") or not is_image(key):
                continue

            def read(key: str = key) -> bytes:
                return client.get_object(Bucket=bucket, Key=key)["Body"].read()

            yield SourcePhoto(key[len(prefix) :].lstrip("/") or key, f"s3://{bucket}/{key}", read)


def open_source(source: str, s3_client=None) -> Iterator[SourcePhoto]:
    """The photos of SOURCE: ``s3://bucket/prefix``, a directory, or a file listing paths."""
    if source.startswith("s3://"):
        return s3(source, s3_client)
    path = Path(source)
    if path.is_dir():
        return directory(path)
    if path.is_file():
        return listing(path)
    raise FileNotFoundError(f"no such directory, listing or s3:// prefix: {source}")


def read_uri(uri: str, s3_client=None, root: Path | None = None) -> bytes:
    """The bytes of the photo stored with ``uri``: ``s3://bucket/key`` (``s3_client`` as for
    ``s3``), ``file://`` or a path (a relative one under ``root`` when given)."""
    if not uri:
        raise FileNotFoundError("the photo was stored without a URI")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3")
        return s3_client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
    path = Path(parsed.path) if parsed.scheme == "file" else Path(uri)
    if root is not None and not path.is_absolute():
        path = root / path
    return path.read_bytes()
