"""Photos too small to hold a face, through the whole suite (the real detector): they fail
alone, as docs/gateway.md says, and no call answers INTERNAL."""

from __future__ import annotations

import io

import grpc
import pytest
from PIL import Image

from facesearch.v1.facesearch_pb2 import PHOTO_STATUS_ENROLLED, PHOTO_STATUS_NO_FACE
from launcher.in_process import KEYS
from sdk.client import FaceSearchClient, FaceSearchError
from tests.conftest import photo_bytes


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 150, 120)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_1x1_photo_beside_a_good_one(suite) -> None:
    good, tiny = photo_bytes("compreface", "002_A.jpg"), tiny_png()
    with FaceSearchClient(suite.address, KEYS["globex"]) as client:
        enrolled = client.enroll("Tiny test", [good, tiny])
        try:
            assert [r.status for r in enrolled.results] == [PHOTO_STATUS_ENROLLED, PHOTO_STATUS_NO_FACE]
            assert enrolled.reference_faces == 1
            for call, words in [
                (lambda: client.find_me([good, tiny]), "reference 1: no face"),
                (lambda: client.identify(tiny), "photo: no face"),
                (lambda: client.verify(good, tiny), "photo b: no face"),
            ]:
                with pytest.raises(FaceSearchError) as caught:
                    call()
                assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value
                assert caught.value.message.startswith(words), caught.value.message
        finally:
            client.delete_person(enrolled.person_id)
