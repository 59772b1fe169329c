"""The FindMe contact sheet: thumbnails with the face boxed, scores, safe text."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from cli.contact_sheet import THUMBNAIL_SIDE, thumbnail_with_box, write_contact_sheet
from facesearch.v1 import common_pb2, facesearch_pb2
from tests.conftest import photo_path


def images_in(page: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    ]


def test_the_sheet_shows_each_match_with_its_face_boxed(tmp_path):
    path = photo_path("compreface", "011_3.jpg")  # 800 x 534
    box = common_pb2.BoundingBox(x_min=100, y_min=100, x_max=300, y_max=400)
    matches = [
        facesearch_pb2.PhotoMatch(
            photo_id="<script>alert(1)</script>", photo_uri=str(path), box=box, similarity=0.8123
        ),
        facesearch_pb2.PhotoMatch(photo_id="gone", photo_uri=str(tmp_path / "missing.jpg"), similarity=0.5),
    ]
    sheet = tmp_path / "sheet.html"
    assert write_contact_sheet(sheet, matches, "Photos of <Ada>") == 2
    page = sheet.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "Photos of &lt;Ada&gt;" in page
    assert "0.812" in page and "cannot show" in page and "missing.jpg" in page
    [thumbnail] = images_in(page)
    assert max(thumbnail.size) == THUMBNAIL_SIDE

    boxed = np.asarray(Image.open(io.BytesIO(thumbnail_with_box(path, box))).convert("RGB"), dtype=int)
    plain = np.asarray(Image.open(io.BytesIO(thumbnail_with_box(path))).convert("RGB"), dtype=int)
    scale = THUMBNAIL_SIDE / 800
    edge_row = round(100 * scale)  # the top edge of the box
    columns = slice(round(100 * scale) + 4, round(300 * scale) - 4)
    assert np.abs(boxed[edge_row, columns] - plain[edge_row, columns]).mean() > 40
    centre = (round(250 * scale), round(200 * scale))
    assert np.abs(boxed[centre] - plain[centre]).max() < 30, "inside the box the photo is untouched"
