"""The archive's photos as the web app serves them: a photo URI resolved to a file inside one of
the archive roots the operator configured (anything else refused), and the bytes sent for it
(the photo as it is, a smaller copy, or a face cut out of it)."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image, ImageOps, UnidentifiedImageError

# Formats sent as they are, by Pillow's name for them; any other is sent as a JPEG copy.
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
MAX_PIXELS = 80_000_000  # larger photos are not decoded here (the detector has the same kind of bar)
MAX_SIDE = 100_000  # wider than any photo: resized() to it only turns the photo upright
FACE_MARGIN = 0.25  # of the box's side, around a face thumbnail


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
    elif parts.scheme and len(parts.scheme) > 1:  # s3://..., http://...: not a file here
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


def open_image(photo: ArchivePhoto) -> Image.Image:
    try:
        image = Image.open(photo.path)
    except (OSError, UnidentifiedImageError):
        raise Refused(415, "the file is not an image") from None
    if image.width * image.height > MAX_PIXELS:
        raise Refused(413, "the photo is too large to show")
    return image


def content_type(photo: ArchivePhoto) -> str | None:
    """The photo's content type when it is sent as it is; None when it needs converting."""
    with open_image(photo) as image:
        if image.getexif().get(0x0112, 1) not in (0, 1):  # rotated by its EXIF orientation: send it upright
            return None
        return CONTENT_TYPES.get(image.format or "")


def upright(image: Image.Image) -> Image.Image:
    """As the detector sees it: its EXIF orientation applied, in RGB."""
    image = ImageOps.exif_transpose(image) or image
    return image.convert("RGB")


def photo_size(photo: ArchivePhoto) -> tuple[int, int]:
    """Width and height once upright: the space of the detector's face boxes."""
    with open_image(photo) as image:
        width, height = image.size
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            return height, width
        return width, height


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def resized(photo: ArchivePhoto, width: int) -> bytes:
    """An upright JPEG copy at most ``width`` pixels wide."""
    with open_image(photo) as image:
        image.draft("RGB", (width, width * 4))
        picture = upright(image)
    picture.thumbnail((width, max(1, width * picture.height // max(1, picture.width))))
    return jpeg(picture)


def face(photo: ArchivePhoto, box: tuple[float, float, float, float], size: int) -> bytes:
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
