"""The detector at its limits, through a real gRPC server on loopback: photos too small to hold
a face, a backend that fails on one photo, photos decoded at reduced size, decompression
bombs and the decode budget, and the memory of a detector process fed bombs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest
from PIL import Image

from facesearch.v1 import common_pb2, detector_pb2, detector_pb2_grpc
from services.detector import server as detector_server
from services.detector.backends.base import FaceDetectorBackend
from services.detector.images import DecodeBudget, DecodeBusy
from services.runtime.ports import free_port
from services.runtime.readiness import grpc_serving, wait_until_ready
from tests.conftest import REPO, photo_bytes, start_detector
from tests.test_images import black_bilevel_png

OK = "detection"


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def flat(width: int, height: int, fmt: str = "PNG") -> bytes:
    return encode(Image.new("RGB", (width, height), (120, 110, 100)), fmt)


def batch(stub, contents: list[bytes], timeout: float = 120, **options) -> detector_pb2.DetectBatchResponse:
    return stub.DetectBatch(
        detector_pb2.DetectBatchRequest(
            images=[common_pb2.Image(content=c) for c in contents], options=detector_pb2.DetectOptions(**options)
        ),
        timeout=timeout,
    )


def outcomes(reply: detector_pb2.DetectBatchResponse) -> list[str | int]:
    """Per item: its number of faces, or the name of its error's status."""
    return [
        len(item.detection.faces) if item.HasField("detection") else grpc.StatusCode(_status(item.error.code)).name
        for item in reply.items
    ]


def _status(code: int) -> grpc.StatusCode:
    return next(status for status in grpc.StatusCode if status.value[0] == code)


def detect(stub, content: bytes, **options) -> detector_pb2.DetectResponse:
    request = detector_pb2.DetectRequest(
        image=common_pb2.Image(content=content), options=detector_pb2.DetectOptions(**options)
    )
    return stub.Detect(request, timeout=120)


# --- photos too small to hold a face --------------------------------------------------------------

TINY = {"1x1": (1, 1), "16x16": (16, 16), "2000x20": (2000, 20), "20x2000": (20, 2000), "19x300": (19, 300)}


def test_tiny_photos_have_no_face_and_the_rest_of_their_batch_succeeds(detector):
    tiny = [flat(*size, fmt) for size in TINY.values() for fmt in ("PNG", "JPEG")]
    contents = [photo_bytes("photoprism", "2.jpg"), *tiny, photo_bytes("photoprism", "16.jpg")]

    reply = batch(detector, contents, omit_crops=True)

    assert outcomes(reply) == [1, *[0] * len(tiny), 2]
    # Resent alone, each is still answered, and a caller that wants a vector anyway gets one.
    for size in TINY.values():
        assert len(detect(detector, flat(*size)).faces) == 0
        [face] = detect(detector, flat(*size), whole_image_fallback=True).faces
        assert face.whole_image_fallback and (face.crop.width, face.crop.height) == (160, 160)


# --- a backend that fails on one photo ----------------------------------------------------------

POISON = (255, 0, 255)  # the backend below fails on any photo of this one colour


class FailsOnOnePhoto(FaceDetectorBackend):
    def __init__(self, backend) -> None:
        self.backend = backend
        self.name = backend.name

    def load(self) -> None:
        pass

    def detect(self, images, min_face_size, min_confidence):
        if any((image == POISON).all() for image in images):
            raise RuntimeError("the model failed on this photo")
        return self.backend.detect(images, min_face_size, min_confidence)


@pytest.fixture(scope="module")
def fragile_detector():
    create = detector_server.create_backend
    detector_server.create_backend = lambda settings: FailsOnOnePhoto(create(settings))
    try:
        server = start_detector()
    finally:
        detector_server.create_backend = create
    with grpc.insecure_channel(server.address) as channel:
        yield detector_pb2_grpc.DetectorStub(channel)
    server.stop()


def test_a_photo_the_backend_fails_on_fails_only_its_own_item(fragile_detector):
    poison = encode(Image.new("RGB", (200, 150), POISON))
    contents = [photo_bytes("photoprism", "2.jpg"), poison, photo_bytes("photoprism", "16.jpg")]

    reply = batch(fragile_detector, contents, omit_crops=True)

    assert outcomes(reply) == [1, "INTERNAL", 2]
    assert "the model failed on this photo" in reply.items[1].error.message
    with pytest.raises(grpc.RpcError) as caught:
        detect(fragile_detector, poison)
    assert caught.value.code() == grpc.StatusCode.INTERNAL


# --- reduced decoding keeps the faces ------------------------------------------------------------


def test_photos_decoded_at_reduced_size_keep_their_faces(detector, labels):
    # Lossless copies of shared photos, reduced 2 to 5 times while decoding (a PNG by a whole
    # factor; the JPEG originals are decoded in draft mode): the large camera photos as they
    # are, smaller ones enlarged first (photos whose count holds at every enlargement).
    photos = [
        ("compreface", "002_A.jpg", 1),
        ("compreface", "004_A.jpg", 1),
        ("compreface", "016_8.jpg", 3),
        ("compreface", "015_6.jpg", 4),
        ("compreface", "014_5.jpg", 2),
        ("photoprism", "9.jpg", 4),
    ]
    found, expected = {}, {}
    for set_name, name, enlargement in photos:
        original = photo_bytes(set_name, name)
        image = Image.open(io.BytesIO(original)).convert("RGB")
        image = image.resize((image.width * enlargement, image.height * enlargement), Image.Resampling.BICUBIC)
        reply = detect(detector, encode(image, "PNG", compress_level=1), omit_crops=True)
        assert (reply.image_width, reply.image_height) == image.size
        found[name], expected[name] = len(reply.faces), labels[set_name]["photos"][name]["faces"]
        if enlargement == 1:  # the same face where the JPEG original has it, within 1% of the photo
            [face], [jpeg_face] = reply.faces, detect(detector, original, omit_crops=True).faces
            for a, b in [(face.box.x_min, jpeg_face.box.x_min), (face.box.y_max, jpeg_face.box.y_max)]:
                assert a == pytest.approx(b, abs=0.01 * max(image.size))
    assert found == expected


# --- decompression bombs and the decode budget ----------------------------------------------------


def test_the_decode_budget_refuses_what_does_not_fit_and_lets_a_large_photo_in_alone():
    budget = DecodeBudget(100, wait_s=0.05)
    with budget.reserve(60):
        assert budget.in_flight == 60
        with budget.reserve(40), pytest.raises(DecodeBusy, match="retry later"), budget.reserve(1):
            pass
        start = time.monotonic()
        with pytest.raises(DecodeBusy), budget.reserve(1000):  # larger than the whole budget: waits for all
            pass
        assert time.monotonic() - start < 1
    with budget.reserve(1000):
        assert budget.in_flight == 100
    assert budget.in_flight == 0


BOMB_SIDE = 14000  # 196 megapixels in a 1-bit PNG of 24 KB: under the pixel limit (200 megapixels)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return black_bilevel_png(BOMB_SIDE, BOMB_SIDE)


@pytest.fixture(scope="module")
def budgeted_detector():
    server = start_detector(decode_budget_pixels=1_000_000, decode_wait_s=0, max_pending_images=3)
    with grpc.insecure_channel(server.address) as channel:
        yield server.server.bindings[0].servicer, detector_pb2_grpc.DetectorStub(channel)
    server.stop()


def test_past_the_decode_budget_a_photo_gets_resource_exhausted_at_once(budgeted_detector, bomb):
    budget, stub = budgeted_detector[0].budget, budgeted_detector[1]
    photo = photo_bytes("photoprism", "2.jpg")
    with budget.reserve(budget.pixels - 100_000):  # another decode holds nearly all of it
        start = time.monotonic()
        reply = batch(stub, [bomb, photo, flat(200, 200)])
        assert outcomes(reply) == ["RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", 0]  # 40000 pixels fit
        assert "retry later" in reply.items[0].error.message
        with pytest.raises(grpc.RpcError) as caught:
            detect(stub, photo)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - start < 5, "refused at once, not queued"
    # Nothing stays reserved: the same photos decode now, the bomb reduced to 1400 x 1400.
    assert outcomes(batch(stub, [bomb, photo])) == [0, 1]
    assert budget.in_flight == 0


def test_past_the_photos_in_hand_a_photo_gets_resource_exhausted_at_once(budgeted_detector):
    in_hand, stub = budgeted_detector[0].in_hand, budgeted_detector[1]
    photo = photo_bytes("photoprism", "2.jpg")
    with in_hand.holding([1]):  # another call has one of the three photos the detector takes
        reply = batch(stub, [photo] * 4)
        assert outcomes(reply) == [1, 1, "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
        assert "retry later" in reply.items[2].error.message
        with in_hand.holding([1, 1]), pytest.raises(grpc.RpcError) as caught:
            detect(stub, photo)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (in_hand.photos, in_hand.bytes) == (0, 0)
    assert outcomes(batch(stub, [photo] * 3)) == [1, 1, 1]


# --- memory of a detector process fed bombs -----------------------------------------------------

# Growth of a detector's peak RSS over its idle RSS while it serves six 196-megapixel bombs
# at once (four in one batch, two alone), and a real photo. Decoded at full size they took
# it up by 5 GB and more; reduced while decoding, under a decode budget, far less.
RSS_GROWTH_BOUND_MB = 1200


def _kilobytes(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_bombs_leave_a_detector_process_memory_bounded(bomb):
    port = free_port()
    env = {
        **os.environ,
        "FACESEARCH_DETECTOR_PORT": str(port),
        "FACESEARCH_DETECTOR_LOG_FORMAT": "text",
        "FACESEARCH_DETECTOR_LOG_LEVEL": "WARNING",
    }
    child = subprocess.Popen([sys.executable, "-m", "services.detector"], cwd=REPO, env=env)
    try:
        wait_until_ready(grpc_serving(f"127.0.0.1:{port}"), 120, what="detector", process=child)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = detector_pb2_grpc.DetectorStub(channel)
            assert len(detect(stub, photo_bytes("photoprism", "2.jpg")).faces) == 1  # warm
            idle_kb = _kilobytes(child.pid, "VmRSS")
            with open(f"/proc/{child.pid}/clear_refs", "w") as clear:
                clear.write("5")  # the peak (VmHWM) starts again from now
            results: list = []

            def alone() -> None:
                try:
                    results.append(len(detect(stub, bomb).faces))
                except grpc.RpcError as error:
                    results.append(error.code().name)

            threads = [threading.Thread(target=alone) for _ in range(2)]
            for thread in threads:
                thread.start()
            results.extend(outcomes(batch(stub, [bomb] * 4, timeout=300)))
            for thread in threads:
                thread.join(300)
            assert len(detect(stub, photo_bytes("photoprism", "16.jpg")).faces) == 2
            peak_kb = _kilobytes(child.pid, "VmHWM")
    finally:
        child.terminate()
        child.wait(30)
    growth_mb = (peak_kb - idle_kb) / 1024
    print(f"detector RSS idle {idle_kb / 1024:.0f} MB, peak {peak_kb / 1024:.0f} MB with bombs: {results}")
    assert set(results) <= {0, "RESOURCE_EXHAUSTED"} and 0 in results, results
    assert growth_mb < RSS_GROWTH_BOUND_MB, f"peak RSS grew by {growth_mb:.0f} MB"
