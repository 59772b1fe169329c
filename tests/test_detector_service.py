"""The detector as a client sees it: a real gRPC server on loopback, real photos."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image, ImageFilter

from facesearch.v1 import common_pb2, detector_pb2, detector_pb2_grpc
from tests.conftest import photo_bytes, start_detector

# Photos of the photoprism set that show no person: animals, a landscape, food, a car, flowers.
PHOTOPRISM_NO_PEOPLE = ["9.jpg", "10.jpg", "13.jpg", "14.jpg", "15.jpg", "19.jpg"]


def detect(stub, content: bytes, **options) -> detector_pb2.DetectResponse:
    request = detector_pb2.DetectRequest(
        image=common_pb2.Image(content=content), options=detector_pb2.DetectOptions(**options)
    )
    return stub.Detect(request, timeout=120)


def encode(image: Image.Image, fmt: str = "PNG", **save_options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_options)
    return buffer.getvalue()


def test_face_count_matches_labels_on_every_compreface_photo(detector, labels):
    photos = labels["compreface"]["photos"]
    names = sorted(photos)
    found = {}
    for start in range(0, len(names), 6):
        batch = names[start : start + 6]
        reply = detector.DetectBatch(
            detector_pb2.DetectBatchRequest(
                images=[common_pb2.Image(content=photo_bytes("compreface", n), uri=n) for n in batch],
                options=detector_pb2.DetectOptions(omit_crops=True),
            ),
            timeout=300,
        )
        for name, item in zip(batch, reply.items):
            assert item.HasField("detection"), f"{name}: {item.error.message}"
            found[name] = len(item.detection.faces)
    expected = {name: photos[name]["faces"] for name in names}
    assert found == expected


def test_face_count_matches_labels_on_the_photoprism_set(detector, labels):
    photos = labels["photoprism"]["photos"]
    found = {name: len(detect(detector, photo_bytes("photoprism", name), omit_crops=True).faces) for name in photos}
    assert {n: found[n] for n in PHOTOPRISM_NO_PEOPLE} == {n: 0 for n in PHOTOPRISM_NO_PEOPLE}
    assert found == {name: label["faces"] for name, label in photos.items()}


def test_faces_come_with_boxes_in_original_pixels_landmarks_quality_and_crops(detector):
    # 7360 px tall: detected on a shrunk copy, reported in the photo's own pixels.
    reply = detect(detector, photo_bytes("compreface", "001_A.jpg"))
    assert (reply.image_width, reply.image_height, reply.image_format) == (4912, 7360, "JPEG")
    assert reply.detector == "mtcnn"
    [face] = reply.faces
    box = face.box
    assert 0 <= box.x_min < box.x_max <= 4912 and 0 <= box.y_min < box.y_max <= 7360
    assert box.x_max - box.x_min > 250, "a face this size in a 4912 px wide photo is hundreds of pixels"
    for point in (
        face.landmarks.left_eye,
        face.landmarks.right_eye,
        face.landmarks.nose,
        face.landmarks.mouth_left,
        face.landmarks.mouth_right,
    ):
        assert box.x_min <= point.x <= box.x_max and box.y_min <= point.y <= box.y_max
    assert face.landmarks.left_eye.x < face.landmarks.right_eye.x
    assert face.landmarks.left_eye.y < face.landmarks.mouth_left.y
    assert face.confidence >= 0.9
    assert face.quality.face_size == pytest.approx(min(box.x_max - box.x_min, box.y_max - box.y_min), rel=1e-4)
    assert face.quality.blur_variance > 0
    assert (face.crop.width, face.crop.height) == (160, 160)
    assert len(face.crop.rgb) == 160 * 160 * 3
    crop = np.frombuffer(face.crop.rgb, np.uint8).reshape(160, 160, 3)
    assert crop.std() > 20, "an aligned face has structure, not a flat colour"


def test_aligned_crop_is_upright_even_when_the_photo_is_rotated_by_exif(detector):
    upright = Image.open(io.BytesIO(photo_bytes("photoprism", "2.jpg")))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated_reply = detect(detector, encode(stored, "JPEG", quality=95, exif=exif))
    upright_reply = detect(detector, encode(upright, "JPEG", quality=95))
    assert (rotated_reply.image_width, rotated_reply.image_height) == upright.size
    [rotated_face], [upright_face] = rotated_reply.faces, upright_reply.faces
    for a, b in [(rotated_face.box.x_min, upright_face.box.x_min), (rotated_face.box.y_max, upright_face.box.y_max)]:
        assert a == pytest.approx(b, abs=6)
    side = upright_face.crop.width
    a = np.frombuffer(rotated_face.crop.rgb, np.uint8).reshape(side, side, 3).astype(float)
    b = np.frombuffer(upright_face.crop.rgb, np.uint8).reshape(side, side, 3).astype(float)
    # The crops follow the boxes, a few pixels apart: alike, and far more alike upright than turned.
    differences = [np.abs(np.rot90(a, turns) - b).mean() for turns in range(4)]
    assert differences[0] < 30 and differences[0] < min(differences[1:]) / 2, differences


def test_omit_crops_and_max_faces(detector):
    reply = detect(detector, photo_bytes("compreface", "016_8.jpg"), omit_crops=True, max_faces=3)
    assert len(reply.faces) == 3
    assert all(not face.crop.rgb for face in reply.faces)
    areas = [(f.box.x_max - f.box.x_min) * (f.box.y_max - f.box.y_min) for f in reply.faces]
    assert areas == sorted(areas, reverse=True), "largest faces first"
    assert [f.index for f in reply.faces] == [0, 1, 2]


def test_lower_thresholds_are_tried_when_nothing_is_found(detector):
    # The face in this photo scores about 0.9989 in the first pass: nothing
    # passes 0.9995, so the service retries with its next, more permissive
    # threshold (0.8, with permissive early stages) and reports that it did.
    reply = detect(detector, photo_bytes("photoprism", "2.jpg"), min_confidence=0.9995)
    assert len(reply.faces) == 1
    assert reply.threshold_used == pytest.approx(0.8)
    assert reply.faces[0].confidence >= 0.8
    plain = detect(detector, photo_bytes("photoprism", "2.jpg"))
    assert plain.threshold_used == pytest.approx(0.9)


def test_whole_image_fallback_is_flagged(detector):
    cat = photo_bytes("photoprism", "9.jpg")
    assert len(detect(detector, cat).faces) == 0
    reply = detect(detector, cat, whole_image_fallback=True)
    [face] = reply.faces
    assert face.whole_image_fallback
    assert face.confidence == 0
    assert (face.crop.width, face.crop.height) == (160, 160)
    side = min(reply.image_width, reply.image_height)
    assert face.box.x_max - face.box.x_min == pytest.approx(side, abs=1)
    # A photo with faces never gets the fallback.
    assert not any(
        f.whole_image_fallback
        for f in detect(detector, photo_bytes("photoprism", "2.jpg"), whole_image_fallback=True).faces
    )


def test_blurred_faces_are_flagged_and_skipped_on_request(detector):
    sharp = Image.open(io.BytesIO(photo_bytes("photoprism", "2.jpg")))
    blurred = encode(sharp.filter(ImageFilter.GaussianBlur(4)))
    [sharp_face] = detect(detector, encode(sharp)).faces
    [blurred_face] = detect(detector, blurred).faces
    assert not sharp_face.quality.blurred
    assert blurred_face.quality.blurred
    assert blurred_face.quality.blur_variance < sharp_face.quality.blur_variance / 10
    skipped = detect(detector, blurred, skip_blurred=True)
    assert len(skipped.faces) == 0 and skipped.blurred_faces_skipped == 1


def test_min_face_size_drops_small_faces(detector):
    # The second face of this photo is small and far away (about 23 px).
    assert len(detect(detector, photo_bytes("photoprism", "18.jpg")).faces) == 2
    reply = detect(detector, photo_bytes("photoprism", "18.jpg"), min_face_size=60)
    assert len(reply.faces) == 1 and reply.faces[0].quality.face_size >= 60


def test_detect_batch_matches_single_calls_and_keeps_order(detector):
    names = ["2.jpg", "9.jpg", "16.jpg", "17.jpg", "overlap/1.jpg"]
    reply = detector.DetectBatch(
        detector_pb2.DetectBatchRequest(images=[common_pb2.Image(content=photo_bytes("photoprism", n)) for n in names]),
        timeout=120,
    )
    assert len(reply.items) == len(names)
    for name, item in zip(names, reply.items):
        single = detect(detector, photo_bytes("photoprism", name))
        batched = item.detection
        assert len(batched.faces) == len(single.faces), name
        for a, b in zip(batched.faces, single.faces):
            assert a.box.x_min == pytest.approx(b.box.x_min, abs=2), name
            assert a.confidence == pytest.approx(b.confidence, abs=0.02), name


# --- bad input -----------------------------------------------------------------------------


def expect_invalid(call, *words: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    for word in words:
        assert word in caught.value.details()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", ["empty"]),
        (b"this is not a photo at all" * 10, ["cannot decode"]),
        (photo_bytes("photoprism", "2.jpg")[:5000], ["cannot decode"]),
        (encode(Image.new("RGB", (64, 64)), "GIF"), ["unsupported", "GIF"]),
        (encode(Image.new("1", (30000, 30000))), ["over the limit", "pixels"]),
    ],
    ids=["empty", "garbage", "truncated-jpeg", "gif", "decompression-bomb"],
)
def test_bad_images_get_invalid_argument_and_the_service_keeps_serving(detector, content, words):
    expect_invalid(lambda: detect(detector, content), *words)
    assert len(detect(detector, photo_bytes("photoprism", "2.jpg")).faces) == 1


def test_missing_image_and_bad_options_are_invalid(detector):
    expect_invalid(lambda: detector.Detect(detector_pb2.DetectRequest(), timeout=10), "image is required")
    good = photo_bytes("photoprism", "2.jpg")
    expect_invalid(lambda: detect(detector, good, min_confidence=1.5), "min_confidence")
    expect_invalid(lambda: detect(detector, good, crop_margin=0.7), "crop_margin")
    expect_invalid(lambda: detect(detector, good, max_faces=-1), "max_faces")
    expect_invalid(lambda: detect(detector, good, min_face_size=-5), "min_face_size")


def test_a_bad_photo_fails_only_its_own_batch_item(detector):
    images = [
        common_pb2.Image(content=photo_bytes("photoprism", "2.jpg")),
        common_pb2.Image(content=b"\x89PNG\r\n\x1a\n broken"),
        common_pb2.Image(content=b""),
        common_pb2.Image(content=photo_bytes("photoprism", "16.jpg")),
    ]
    reply = detector.DetectBatch(detector_pb2.DetectBatchRequest(images=images), timeout=60)
    kinds = [item.WhichOneof("outcome") for item in reply.items]
    assert kinds == ["detection", "error", "error", "detection"]
    assert reply.items[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "empty" in reply.items[2].error.message
    assert [len(reply.items[i].detection.faces) for i in (0, 3)] == [1, 2]
    expect_invalid(lambda: detector.DetectBatch(detector_pb2.DetectBatchRequest(), timeout=10), "empty")


@pytest.fixture(scope="module")
def strict_detector():
    server = start_detector(max_image_bytes=150_000, max_batch_images=3, max_message_mb=1)
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
        yield detector_pb2_grpc.DetectorStub(channel)
    server.stop()


def test_configured_limits_are_enforced(strict_detector):
    big = photo_bytes("compreface", "000_5.jpg")
    assert 150_000 < len(big) < 1024 * 1024
    expect_invalid(lambda: detect(strict_detector, big), "over the limit of 150000 bytes")
    small = photo_bytes("compreface", "009_C.jpg")
    assert len(small) < 150_000
    four = detector_pb2.DetectBatchRequest(images=[common_pb2.Image(content=small)] * 4)
    expect_invalid(lambda: strict_detector.DetectBatch(four, timeout=10), "over the limit of 3")
    with pytest.raises(grpc.RpcError) as caught:
        detect(strict_detector, b"\xff" * (2 * 1024 * 1024))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(detect(strict_detector, small).faces) == 1


def test_small_sharp_faces_are_not_taken_for_blurred_ones(detector):
    # A group photo of eight faces about 25 px wide: enlarged onto the crop they are smooth, but
    # at their own resolution they are sharp; the measure still tells them from blurred ones.
    group = Image.open(io.BytesIO(photo_bytes("compreface", "016_8.jpg")))
    faces = detect(detector, encode(group)).faces
    assert len(faces) == 8 and max(f.quality.face_size for f in faces) < 40
    assert not any(f.quality.blurred for f in faces), [round(f.quality.blur_variance, 1) for f in faces]
    blurred = detect(detector, encode(group.filter(ImageFilter.GaussianBlur(2.5)))).faces
    assert blurred, "a slightly blurred copy still shows some of the faces"
    sharpest_blurred = max(f.quality.blur_variance for f in blurred)
    assert sharpest_blurred < min(f.quality.blur_variance for f in faces) / 3


def test_a_call_can_ask_for_the_crops_of_another_registered_model(detector):
    """The detector makes facenet-casia's crops; asked for dlib-resnet's, it aligns the same faces
    onto dlib's 150-pixel chip, and refuses a model it does not know."""
    content = photo_bytes("photoprism", "2.jpg")
    own = detect(detector, content)
    dlib = detect(detector, content, crop_model="dlib-resnet")
    assert [(f.box.x_min, f.box.y_max) for f in dlib.faces] == [(f.box.x_min, f.box.y_max) for f in own.faces]
    assert {(f.crop.width, f.crop.height) for f in own.faces} == {(160, 160)}
    assert {(f.crop.width, f.crop.height) for f in dlib.faces} == {(150, 150)}
    assert own.faces[0].crop.rgb != dlib.faces[0].crop.rgb
    with pytest.raises(grpc.RpcError) as caught:
        detect(detector, content, crop_model="no-such-model")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "crop_model" in caught.value.details() and "dlib-resnet" in caught.value.details()
