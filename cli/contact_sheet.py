"""An HTML contact sheet of FindMe results: a thumbnail of each photo with the matching
face boxed and its score, so a person can look rather than read. One self-contained
file (thumbnails inlined as JPEG data URIs)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from facesearch.v1 import common_pb2, facesearch_pb2

THUMBNAIL_SIDE = 320
BOX_COLOUR = (255, 196, 0)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #f4f4f4; }}
.sheet {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; width: {side}px; background: #fff; padding: 6px; box-shadow: 0 1px 3px #0003; }}
figure img {{ display: block; max-width: 100%; }}
.missing {{ height: 160px; display: flex; align-items: center; justify-content: center; background: #ddd;
  color: #555; text-align: center; padding: 0 8px; }}
figcaption {{ font-size: 13px; overflow-wrap: anywhere; }}
.score {{ font-weight: bold; }}
</style></head>
<body><h1>{title}</h1><p>{summary}</p><div class="sheet">
{tiles}
</div></body></html>
"""


def thumbnail_with_box(path: Path, box: common_pb2.BoundingBox | None = None) -> bytes:
    """A JPEG thumbnail of the photo (EXIF orientation applied, as the boxes are) with the box drawn."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    scale = min(1.0, THUMBNAIL_SIDE / max(image.size))
    thumbnail = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    if box is not None:
        corners = [box.x_min * scale, box.y_min * scale, box.x_max * scale, box.y_max * scale]
        ImageDraw.Draw(thumbnail).rectangle(corners, outline=BOX_COLOUR, width=3)
    out = io.BytesIO()
    thumbnail.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _tile(match: facesearch_pb2.PhotoMatch) -> str:
    caption = (
        f'<figcaption><span class="score">{match.similarity:.3f}</span> '
        f"{html.escape(match.photo_id)}<br><small>{html.escape(match.photo_uri)}</small></figcaption>"
    )
    try:
        data = base64.b64encode(thumbnail_with_box(Path(match.photo_uri), match.box)).decode()
    except (OSError, ValueError) as error:
        reason = html.escape(f"cannot show {match.photo_uri or 'this photo'}: {error.__class__.__name__}")
        return f'<figure><div class="missing">{reason}</div>{caption}</figure>'
    alt = html.escape(f"{match.photo_id}, similarity {match.similarity:.3f}", quote=True)
    return f'<figure><img src="data:image/jpeg;base64,{data}" alt="{alt}">{caption}</figure>'


def write_contact_sheet(path: Path, matches: Iterable[facesearch_pb2.PhotoMatch], title: str) -> int:
    """Writes the sheet; returns how many photos it shows. Photos are read from their URI
    (a local path); one that cannot be read gets a tile saying so."""
    matches = list(matches)
    tiles = "\n".join(_tile(match) for match in matches)
    summary = f"{len(matches)} photo(s), best match first; the yellow box is the matching face."
    page = _PAGE.format(title=html.escape(title), summary=summary, tiles=tiles, side=THUMBNAIL_SIDE)
    path.write_text(page, encoding="utf-8")
    return len(matches)
