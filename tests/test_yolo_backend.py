"""The YOLOv8-face backend through ultralytics.

No YOLO face weights can be had on this machine (none ship in any package), so
these tests build a face-shaped YOLOv8 pose model (one class, five keypoints)
from ultralytics' own yolov8n-pose.yaml with random weights. That exercises the
real loading, prediction and mapping code; it cannot show detection quality.
"""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest
import torch

from facesearch.v1 import common_pb2, detector_pb2, detector_pb2_grpc
from services.detector.backends.yolo import YoloFaceBackend, _configure_ultralytics_offline
from tests.conftest import photo_bytes, start_detector


def build_pose_weights(path, keypoints: int) -> None:
    _configure_ultralytics_offline()
    from ultralytics.nn.tasks import PoseModel, yaml_model_load

    config = yaml_model_load("yolov8n-pose.yaml")
    config["kpt_shape"] = [keypoints, 3]
    torch.manual_seed(0)
    model = PoseModel(config, nc=1, verbose=False)
    model.names = {0: "face"}
    torch.save({"model": model, "train_args": {"task": "pose", "imgsz": 640}}, path)


@pytest.fixture(scope="module")
def face_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("yolo") / "yolov8n-face-random.pt"
    build_pose_weights(path, keypoints=5)
    return path


def test_yolo_backend_serves_faces_through_the_detector(face_weights):
    server = start_detector(backend="yolo", yolo_weights=face_weights)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = detector_pb2_grpc.DetectorStub(channel)
            # Random weights score everything around 0.01; a low threshold lets
            # the outputs flow through mapping, alignment and quality scoring.
            reply = stub.Detect(
                detector_pb2.DetectRequest(
                    image=common_pb2.Image(content=photo_bytes("photoprism", "17.jpg")),
                    options=detector_pb2.DetectOptions(min_confidence=0.005, max_faces=5),
                ),
                timeout=120,
            )
    finally:
        server.stop()
    assert reply.detector == "yolo"
    assert (reply.image_width, reply.image_height) == (640, 853)
    assert 1 <= len(reply.faces) <= 5
    for face in reply.faces:
        assert 0 <= face.box.x_min < face.box.x_max <= 640
        assert 0 <= face.box.y_min < face.box.y_max <= 853
        assert 0.005 <= face.confidence <= 1
        assert len(face.crop.rgb) == 160 * 160 * 3
        assert face.HasField("landmarks")


def test_yolo_backend_rejects_a_model_without_five_face_keypoints(tmp_path):
    weights = tmp_path / "body-pose.pt"
    build_pose_weights(weights, keypoints=17)
    backend = YoloFaceBackend(weights)
    with pytest.raises(ValueError, match="5 keypoints"):
        backend.load()


def test_yolo_backend_needs_an_existing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        YoloFaceBackend(tmp_path / "missing.pt").load()
    with pytest.raises(ValueError, match="weights"):
        YoloFaceBackend(None)


def test_yolo_backend_maps_boxes_and_keypoints_as_ultralytics_reports_them(face_weights):
    """Boxes and keypoints come out in input pixels, x before y, as ultralytics reports them
    for the same image: checked against its own prediction of a photo that is not square,
    so that swapped axes would not match."""
    from ultralytics import YOLO

    backend = YoloFaceBackend(face_weights)
    backend.load()
    photo = cv2.imdecode(np.frombuffer(photo_bytes("photoprism", "17.jpg"), np.uint8), cv2.IMREAD_COLOR)
    rgb = np.ascontiguousarray(photo[:400, :, ::-1])  # 400 x 640, RGB as the detector decodes
    [faces] = backend.detect([rgb], min_face_size=1, min_confidence=0.001)
    [reference] = YOLO(str(face_weights), task="pose").predict(
        np.ascontiguousarray(rgb[:, :, ::-1]), conf=0.001, imgsz=backend.image_size, device="cpu", verbose=False
    )
    expected_boxes = reference.boxes.xyxy.cpu().numpy()
    expected_points = reference.keypoints.xy.cpu().numpy()
    assert faces, "a random model scores some boxes above 0.001"
    assert len(faces) == len(expected_boxes)
    for face, box, points in zip(faces, expected_boxes, expected_points, strict=True):
        np.testing.assert_allclose(face.box, box, atol=1e-3)
        np.testing.assert_allclose(face.landmarks, points.reshape(5, 2), atol=1e-3)
        assert (face.landmarks[:, 0] <= 640 + 1).all() and (face.landmarks[:, 1] <= 400 + 1).all()
