"""The BlazeFace backend: its model files from the installed wheel, its own decoding,
and a real detector server on loopback with backend=blazeface on the labelled photos."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from facesearch.v1 import common_pb2, detector_pb2, detector_pb2_grpc
from services.detector.backends import blazeface
from services.detector.backends.base import FaceCandidate, FaceDetectorBackend
from services.detector.backends.blazeface import (
    MODELS,
    BlazeFaceBackend,
    anchors,
    decode,
    five_points,
    iou,
    tilt_degrees,
    weighted_nms,
)
from services.detector.backends.cascade import CascadeBackend
from services.detector.detection import UPRIGHT_CONFIDENCE, FaceDetector
from services.detector.images import DecodedImage
from services.detector.settings import DetectorSettings
from tests.conftest import photo_bytes, photo_path, start_detector

# A 23 px face beside a large one, which BlazeFace scores 0.55 (MTCNN finds both).
PHOTOPRISM_MISSED = {"18.jpg": 1}
# Photos to compare with MTCNN: an eight-person group photo with faces of 23 to 32 px,
# a 7360 px full-body shot, a portrait and a four-person photo.
COMPARED = [
    ("compreface", "016_8.jpg"),
    ("compreface", "001_A.jpg"),
    ("photoprism", "2.jpg"),
    ("compreface", "013_4.jpg"),
]


@pytest.fixture(scope="module")
def blazeface_detector() -> Iterator[detector_pb2_grpc.DetectorStub]:
    server = start_detector(backend="blazeface")
    with grpc.insecure_channel(server.address) as channel:
        yield detector_pb2_grpc.DetectorStub(channel)
    server.stop()


def detect_batch(stub, contents: list[bytes], **options) -> detector_pb2.DetectBatchResponse:
    request = detector_pb2.DetectBatchRequest(
        images=[common_pb2.Image(content=content) for content in contents],
        options=detector_pb2.DetectOptions(**options),
    )
    return stub.DetectBatch(request, timeout=120)


def faces_of(stub, set_name: str, names: list[str]) -> dict[str, list]:
    reply = detect_batch(stub, [photo_bytes(set_name, name) for name in names], omit_crops=True)
    found = {}
    for name, item in zip(names, reply.items, strict=True):
        assert item.HasField("detection"), f"{name}: {item.error.message}"
        found[name] = list(item.detection.faces)
    return found


def box_of(face) -> np.ndarray:
    return np.array([face.box.x_min, face.box.y_min, face.box.x_max, face.box.y_max])


def points_of(face) -> np.ndarray:
    marks = face.landmarks
    return np.array(
        [[p.x, p.y] for p in (marks.left_eye, marks.right_eye, marks.nose, marks.mouth_left, marks.mouth_right)]
    )


def test_both_models_are_read_from_the_installed_wheel_and_match_their_anchors():
    backend = BlazeFaceBackend()
    backend.load()  # checks each model's input side and that it has one output row per anchor
    for name, model in MODELS.items():
        path = blazeface.model_path(model)
        assert "site-packages" in path.parts and path.parent == Path(path.parent.parent, "data"), path
        assert backend.interpreters[name].model is model
    assert len(anchors(MODELS["full"])) == 48 * 48
    assert len(anchors(MODELS["short"])) == 16 * 16 * 2 + 8 * 8 * 6


def test_each_thread_detects_with_its_own_interpreters_and_finds_the_same_faces():
    backend = BlazeFaceBackend()
    backend.load()
    photos = [
        np.asarray(Image.open(photo_path("compreface", name)).convert("RGB")) for name in ("016_8.jpg", "013_4.jpg")
    ]
    alone = [backend.detect([pixels], 20, 0.9)[0] for pixels in photos]
    mine = backend.interpreters
    with ThreadPoolExecutor(max_workers=4) as pool:
        theirs = list(pool.map(lambda _: backend.interpreters, range(4)))
        together = list(pool.map(lambda i: backend.detect([photos[i % 2]], 20, 0.9)[0], range(8)))
    assert all(t["full"] is not mine["full"] and t["short"] is not mine["short"] for t in theirs)
    for i, faces in enumerate(together):
        expected = alone[i % 2]
        assert len(faces) == len(expected) == (8 if i % 2 == 0 else 4)
        assert np.array([f.box for f in faces]) == pytest.approx(np.array([f.box for f in expected]))


def test_decoding_puts_boxes_and_keypoints_around_their_anchor():
    centres = anchors(MODELS["short"])
    regressors = np.zeros((len(centres), 16), dtype=np.float32)
    scores = np.full(len(centres), -10.0, dtype=np.float32)
    regressors[300] = [4, -2, 20, 30] + [1, 1] * 6
    scores[300] = 3.0
    boxes, points, probabilities = decode(regressors, scores, centres, 128, 0.5)
    x, y = centres[300] * 128
    assert boxes == pytest.approx(np.array([[x + 4 - 10, y - 2 - 15, x + 4 + 10, y - 2 + 15]]))
    assert points[0] == pytest.approx(np.tile([x + 1, y + 1], (6, 1)))
    assert probabilities == pytest.approx([1 / (1 + np.exp(-3.0))])


def test_suppression_merges_overlapping_detections_and_keeps_apart_ones():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], dtype=float)
    points = np.zeros((3, 6, 2))
    merged = weighted_nms(boxes, points, np.array([0.6, 0.9, 0.8]))
    assert [score for _, _, score in merged] == [0.9, 0.8]
    assert merged[0][0] == pytest.approx([0.6, 0, 10.6, 10])  # weighted 0.6 : 0.9


def test_mouth_corners_lie_on_either_side_of_the_mouth_along_the_eyes():
    keypoints = np.array([[30, 40], [70, 40], [50, 60], [50, 80], [10, 45], [90, 45]], dtype=float)
    left_eye, right_eye, nose, mouth_left, mouth_right = five_points(keypoints)
    assert (left_eye, right_eye, nose) == (pytest.approx([30, 40]), pytest.approx([70, 40]), pytest.approx([50, 60]))
    assert (mouth_left + mouth_right) / 2 == pytest.approx([50, 80])
    assert mouth_right - mouth_left == pytest.approx([2 * 0.46 * 40, 0])


def test_faces_lying_sideways_are_dropped_so_the_detector_turns_the_photo():
    backend = BlazeFaceBackend()
    backend.load()
    pixels = np.asarray(Image.open(photo_path("photoprism", "2.jpg")).convert("RGB"))
    [upright] = backend.detect([pixels], 20, 0.9)
    assert len(upright) == 1 and tilt_degrees(upright[0].landmarks) < 20
    for turns in (1, 3):
        assert backend.detect([np.ascontiguousarray(np.rot90(pixels, turns))], 20, 0.9) == [[]]
    sideways = np.array([[40, 30], [40, 70], [50, 50], [70, 45], [70, 55]], dtype=float)
    assert tilt_degrees(sideways) == pytest.approx(90)


def test_confidence_maps_scores_onto_the_detectors_thresholds():
    backend = BlazeFaceBackend(min_score=0.7, upright_score=0.9)
    assert backend.confidence(0.7) == pytest.approx(0.9)
    assert backend.confidence(0.9) == pytest.approx(UPRIGHT_CONFIDENCE)
    assert backend.confidence(1.0) == pytest.approx(1.0)
    assert backend.confidence(0.35) == pytest.approx(0.45)
    assert backend.confidence(0.8) == pytest.approx((0.9 + UPRIGHT_CONFIDENCE) / 2)
    for score in (0.2, 0.7, 0.85, 0.95):
        assert backend.score(backend.confidence(score)) == pytest.approx(score)


def face_counts(stub, set_name: str, names: list[str], per_call: int) -> dict[str, int]:
    found = {}
    for start in range(0, len(names), per_call):
        found.update(faces_of(stub, set_name, names[start : start + per_call]))
    return {name: len(faces) for name, faces in found.items()}


def test_face_count_matches_labels_on_every_compreface_photo(blazeface_detector, labels):
    photos = labels["compreface"]["photos"]
    found = face_counts(blazeface_detector, "compreface", sorted(photos), 6)
    assert found == {name: label["faces"] for name, label in photos.items()}


def test_face_count_matches_labels_on_the_photoprism_set_but_one_small_face(blazeface_detector, labels):
    photos = labels["photoprism"]["photos"]
    found = face_counts(blazeface_detector, "photoprism", sorted(photos), 8)
    assert found == {name: PHOTOPRISM_MISSED.get(name, label["faces"]) for name, label in photos.items()}


def test_boxes_and_landmarks_match_mtcnns(blazeface_detector, detector):
    overlaps = []
    for set_name, name in COMPARED:
        [mtcnn] = faces_of(detector, set_name, [name]).values()
        [fast] = faces_of(blazeface_detector, set_name, [name]).values()
        assert len(fast) == len(mtcnn) > 0, name
        for face in mtcnn:
            reference = box_of(face)
            overlap = iou(reference, np.stack([box_of(f) for f in fast]))
            nearest = fast[int(np.argmax(overlap))]
            overlaps.append(overlap.max())
            # The FaceNet crop is the box: every face's box overlaps MTCNN's, and has its size.
            assert overlap.max() >= 0.5, (name, box_of(nearest), reference)
            size = min(reference[2] - reference[0], reference[3] - reference[1])
            assert min(box_of(nearest)[2:] - box_of(nearest)[:2]) == pytest.approx(size, rel=0.2), name
            # Landmarks within a share of the face's size (eyes and nose, then the derived mouth corners).
            error = np.linalg.norm(points_of(nearest) - points_of(face), axis=1) / size
            assert error[:3].max() < 0.15 and error[3:].max() < 0.2, (name, error)
            assert nearest.confidence >= 0.9
    assert np.median(overlaps) >= 0.75, overlaps


def test_reply_names_the_backend_and_crops_come_with_faces(blazeface_detector):
    reply = detect_batch(blazeface_detector, [photo_bytes("photoprism", "2.jpg")])
    [item] = reply.items
    assert item.detection.detector == "blazeface"
    [face] = item.detection.faces
    assert (face.crop.width, face.crop.height, len(face.crop.rgb)) == (160, 160, 160 * 160 * 3)


def test_a_bad_photo_fails_only_its_own_batch_item(blazeface_detector):
    contents = [photo_bytes("photoprism", "2.jpg"), b"\xff\xd8\xff\xe0 truncated", photo_bytes("photoprism", "16.jpg")]
    reply = detect_batch(blazeface_detector, contents, omit_crops=True)
    assert [item.WhichOneof("outcome") for item in reply.items] == ["detection", "error", "detection"]
    assert reply.items[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [len(reply.items[i].detection.faces) for i in (0, 2)] == [1, 2]


def test_the_backend_refuses_images_that_are_not_rgb_bytes():
    backend = BlazeFaceBackend()
    with pytest.raises(RuntimeError, match="before load"):
        backend.detect([np.zeros((64, 64, 3), np.uint8)], 20, 0.9)
    backend.load()
    with pytest.raises(ValueError, match="uint8"):
        backend.detect([np.zeros((64, 64), np.uint8)], 20, 0.9)
    assert backend.detect([np.zeros((10, 10, 3), np.uint8)], 20, 0.9) == [[]]


class _Fixed(FaceDetectorBackend):
    """A stand-in backend answering each image with the faces listed for its width."""

    def __init__(self, by_width: dict[int, list[FaceCandidate]]) -> None:
        self.by_width = by_width
        self.seen: list[int] = []

    def load(self) -> None:
        pass

    def detect(self, images, min_face_size, min_confidence):
        del min_face_size, min_confidence
        self.seen += [image.shape[1] for image in images]
        return [list(self.by_width.get(image.shape[1], [])) for image in images]


def square_face(side: float) -> FaceCandidate:
    return FaceCandidate(box=np.array([0, 0, side, side], dtype=float), landmarks=np.zeros((5, 2)), confidence=0.95)


def test_the_cascade_runs_mtcnn_only_where_blazeface_finds_nothing_or_only_large_faces():
    images = [np.zeros((100, width, 3), np.uint8) for width in (100, 101, 102)]
    fast = _Fixed({101: [square_face(60)], 102: [square_face(60), square_face(10)]})
    thorough = _Fixed({100: [square_face(30)], 101: [square_face(60), square_face(12)]})
    found = CascadeBackend(fast, thorough).detect(images, 20, 0.9)
    assert thorough.seen == [100] and [len(faces) for faces in found] == [1, 1, 2]
    thorough.seen = []
    found = CascadeBackend(fast, thorough, large_face=0.5).detect(images, 20, 0.9)
    assert thorough.seen == [100, 101] and [len(faces) for faces in found] == [1, 2, 2]


def upright_face(side: float, confidence: float) -> FaceCandidate:
    marks = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]]) * side
    return FaceCandidate(box=np.array([0, 0, side, side], dtype=float), landmarks=marks, confidence=confidence)


def test_the_cascade_tries_turns_with_blazeface_and_runs_mtcnn_on_the_turn_chosen_only():
    # 120 wide, 100 high: only the photo turned a quarter (either way) is 100 wide, where the
    # stand-ins find a face; BlazeFace's face is large, so the cascade asks MTCNN there.
    photo = np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    fast = _Fixed({100: [upright_face(60, 0.95)]})
    thorough = _Fixed({100: [upright_face(50, 0.97)]})
    detector = FaceDetector(CascadeBackend(fast, thorough, large_face=0.5), DetectorSettings())
    image = DecodedImage(pixels=photo, width=120, height=100, format="PNG", scale=1.0)
    [detection] = detector.detect([image], detector.default_options())
    # MTCNN ran on the photo as it is (at each threshold of the ladder) and on the turn chosen;
    # the three turns were tried by BlazeFace alone.
    assert thorough.seen == [120, 120, 100]
    assert fast.seen == [120, 120, 100, 120, 100, 100]
    [face] = detection.faces
    assert face.rotation == 90 and face.confidence == pytest.approx(0.97)
