"""The YOLOv8-face backend through ultralytics.

No YOLO face weights can be had on this machine (none ship in any package), so
these tests build a face-shaped YOLOv8 pose model (one class, five keypoints)
from ultralytics' own yolov8n-pose.yaml with random weights. That exercises the
real loading, prediction and mapping code; it cannot show detection quality.
"""

from __future__ import annotations

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


def test_yolo_backend_maps_keypoints_in_input_pixels(face_weights):
    backend = YoloFaceBackend(face_weights)
    backend.load()
    image = np.zeros((480, 640, 3), np.uint8)
    [faces] = backend.detect([image], min_face_size=1, min_confidence=0.001)
    assert faces, "a random model scores some boxes above 0.001"
    for face in faces:
        assert face.landmarks.shape == (5, 2)
        assert face.box.shape == (4,)
        assert -1 <= face.box[0] <= face.box[2] <= 641
