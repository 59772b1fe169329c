"""Photos stored sideways or upside down without an EXIF orientation: the detector tries them
turned, finds their faces upright, and reports them in the photo's own pixels. A real gRPC
server on loopback, real photos."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from facesearch.v1 import common_pb2, detector_pb2, detector_pb2_grpc
from services.detector.backends import create_backend
from services.detector.backends.base import FaceDetectorBackend
from services.detector.detection import FaceDetector
from services.detector.images import ImageLimits, decode_image
from services.detector.settings import DetectorSettings
from tests.conftest import photo_bytes, start_detector
from tests.test_detector_service import detect, encode


class CountingBackend(FaceDetectorBackend):
    """The real backend, recording the images and threshold of each call."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.name = backend.name
        self.calls: list[tuple[int, float]] = []

    def load(self) -> None:
        pass

    def detect(self, images, min_face_size, min_confidence):
        self.calls.append((len(images), min_confidence))
        return self.backend.detect(images, min_face_size, min_confidence)


def detector_with_counting_backend(**overrides):
    server = start_detector(**overrides)
    detector = server.server.bindings[0].servicer.detector
    detector.backend = CountingBackend(detector.backend)
    channel = grpc.insecure_channel(server.address)
    return server, channel, detector.backend


@pytest.fixture(scope="module")
def turning():
    server, channel, backend = detector_with_counting_backend()
    with channel:
        yield detector_pb2_grpc.DetectorStub(channel), backend
    server.stop()


@pytest.fixture(scope="module")
def not_turning():
    server, channel, backend = detector_with_counting_backend(try_rotations=False)
    with channel:
        yield detector_pb2_grpc.DetectorStub(channel), backend
    server.stop()


def upright(name: str, set_name: str = "photoprism") -> Image.Image:
    return Image.open(io.BytesIO(photo_bytes(set_name, name))).convert("RGB")


def turned(image: Image.Image, degrees: int) -> bytes:
    """The photo turned clockwise by ``degrees``, as JPEG without EXIF (a camera that did not say)."""
    return encode(image.rotate(-degrees, expand=True), "JPEG", quality=95)


def turned_box(box, degrees: int, width: int, height: int) -> np.ndarray:
    """A box of the upright width x height photo, in the photo turned clockwise by ``degrees``."""
    corners = np.array([[box.x_min, box.y_min], [box.x_max, box.y_max]], dtype=float)
    x, y = corners[:, 0], corners[:, 1]
    mapped = {90: (height - y, x), 180: (width - x, height - y), 270: (y, width - x)}[degrees]
    points = np.stack(mapped, axis=1)
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def crop_differences(face: common_pb2.Face, upright_face: common_pb2.Face) -> list[float]:
    """Mean absolute difference of the face's crop, turned by 0 to 3 quarters, to the upright one's."""
    a, b = (
        np.frombuffer(f.crop.rgb, np.uint8).reshape(f.crop.height, f.crop.width, 3).astype(float)
        for f in (face, upright_face)
    )
    return [float(np.abs(np.rot90(a, turns) - b).mean()) for turns in range(4)]


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_photo_turned_without_exif_has_its_face_found_upright(turning, degrees):
    stub, _ = turning
    photo = upright("2.jpg")
    [upright_face] = detect(stub, encode(photo, "JPEG", quality=95)).faces
    reply = detect(stub, turned(photo, degrees))
    assert (reply.image_width, reply.image_height) == (photo.rotate(-degrees, expand=True).size)
    [face] = reply.faces
    # The box lies on the face where the turned photo has it, in the turned photo's own pixels.
    box = [face.box.x_min, face.box.y_min, face.box.x_max, face.box.y_max]
    assert box == pytest.approx(turned_box(upright_face.box, degrees, *photo.size), abs=6)
    for point in (face.landmarks.left_eye, face.landmarks.mouth_right):
        assert face.box.x_min <= point.x <= face.box.x_max and face.box.y_min <= point.y <= face.box.y_max
    # The crop is cut from the upright pixels: alike the upright photo's, far less alike turned.
    differences = crop_differences(face, upright_face)
    assert differences[0] < 30 and differences[0] < min(differences[1:]) / 2, differences


@pytest.mark.parametrize(
    ("set_name", "name", "degrees"),
    [
        # Turned a quarter, this face is still found at the first threshold, with its landmarks
        # side by side.
        ("azure_face", "family1_dad_1.jpg", 90),
        # Upside down, this one is found at the first threshold too, with upright landmarks but a
        # low confidence (0.94; upright 0.9999).
        ("facenet", "zhao_wei_2.jpg", 180),
    ],
)
def test_a_face_found_the_wrong_way_up_is_cut_upright(turning, not_turning, set_name, name, degrees):
    photo = upright(name, set_name)
    [upright_face] = detect(turning[0], encode(photo, "JPEG", quality=95)).faces
    content = turned(photo, degrees)
    [before] = detect(not_turning[0], content).faces
    assert np.argmin(crop_differences(before, upright_face)) != 0, "before, its crop was cut the wrong way up"
    stub, backend = turning
    backend.calls.clear()
    [face] = detect(stub, content).faces
    assert backend.calls == [(1, 0.9)] * 4
    box = [face.box.x_min, face.box.y_min, face.box.x_max, face.box.y_max]
    assert box == pytest.approx(turned_box(upright_face.box, degrees, *photo.size), abs=6)
    differences = crop_differences(face, upright_face)
    assert differences[0] < 30 and differences[0] < min(differences[1:]) / 2, differences


def test_an_upside_down_group_photo_is_not_left_with_the_faces_found_the_wrong_way_up(turning, not_turning):
    # Upside down, MTCNN's retry at the lower threshold finds one of the eight faces, wrongly;
    # turned, the first threshold finds all eight.
    content = turned(upright("016_8.jpg", "compreface"), 180)
    assert len(detect(not_turning[0], content, omit_crops=True).faces) < 8
    reply = detect(turning[0], content, omit_crops=True)
    assert len(reply.faces) == 8
    assert reply.threshold_used == pytest.approx(0.9)


def test_a_photo_without_a_face_costs_three_more_passes_at_most(turning, not_turning):
    cat = photo_bytes("photoprism", "9.jpg")
    for stub, backend, passes in [(*turning, 5), (*not_turning, 2)]:
        backend.calls.clear()
        assert len(detect(stub, cat).faces) == 0
        assert backend.calls == [(1, 0.9), (1, 0.8), (1, 0.9), (1, 0.9), (1, 0.9)][:passes]
    # A photo whose face the first pass finds is not turned.
    stub, backend = turning
    backend.calls.clear()
    assert len(detect(stub, photo_bytes("photoprism", "2.jpg")).faces) == 1
    assert backend.calls == [(1, 0.9)]


def test_turned_photos_of_a_batch_share_their_passes(turning):
    stub, backend = turning
    photo = upright("2.jpg")
    contents = [turned(photo, 90), photo_bytes("photoprism", "9.jpg"), turned(photo, 180), turned(photo, 0)]
    backend.calls.clear()
    reply = stub.DetectBatch(
        detector_pb2.DetectBatchRequest(images=[common_pb2.Image(content=c) for c in contents]), timeout=120
    )
    assert [len(item.detection.faces) for item in reply.items] == [1, 0, 1, 1]
    # The first pass over all four, the retry and each turn over the three it found nothing in.
    assert [images for images, _ in backend.calls] == [4, 3, 3, 3, 3]


def test_with_turns_off_a_sideways_photo_has_no_face_as_before(turning, not_turning):
    content = turned(upright("2.jpg"), 90)
    stub, backend = not_turning
    backend.calls.clear()
    assert len(detect(stub, content).faces) == 0
    assert backend.calls == [(1, 0.9), (1, 0.8)]
    assert len(detect(turning[0], content).faces) == 1


@pytest.fixture(scope="module")
def cascade() -> FaceDetector:
    settings = DetectorSettings(backend="cascade")
    return FaceDetector(create_backend(settings), settings)


def cascade_faces(detector: FaceDetector, content: bytes) -> list:
    image = decode_image(
        content, ImageLimits(max_bytes=1 << 26, max_pixels=1 << 26), min_side=detector.settings.max_side
    )
    [detection] = detector.detect([image], detector.default_options())
    return detection.faces


# Upright photos whose face BlazeFace scores too low to take them for upright: the cascade tries
# them turned, where MTCNN used to score the face turned over higher than BlazeFace upright.
UNSURE_UPRIGHT = [("face_api_js", "amy_2.png"), ("face_api_js", "howard_3.png"), ("azure_face", "family3_lady_1.jpg")]


@pytest.mark.parametrize(("set_name", "name"), UNSURE_UPRIGHT)
def test_the_cascade_keeps_upright_photos_upright(cascade, set_name, name):
    [face] = cascade_faces(cascade, photo_bytes(set_name, name))
    assert face.rotation == 0


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_the_cascade_finds_a_turned_photos_face_trying_the_turns_with_blazeface(cascade, monkeypatch, degrees):
    thorough = cascade.backend.thorough
    seen: list[bytes] = []
    detect_thoroughly = thorough.detect

    def recording(images, min_face_size, min_confidence):
        seen.extend(image.tobytes() for image in images)
        return detect_thoroughly(images, min_face_size, min_confidence)

    monkeypatch.setattr(thorough, "detect", recording)
    [face] = cascade_faces(cascade, turned(upright("2.jpg"), degrees))
    assert face.rotation == degrees  # turned back counter-clockwise
    # MTCNN ran only where BlazeFace found nothing in the photo as it is (at each threshold),
    # never on a turned copy: BlazeFace alone tried the turns.
    assert len(set(seen)) <= 1
