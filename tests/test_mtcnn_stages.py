"""MTCNN's stages as the project runs them: the pyramid, squaring and suppression on made-up
boxes, and the whole three stages on labelled photos against facenet-pytorch's own
``detect_face`` run on the same networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from facenet_pytorch.models.utils.detect_face import detect_face
from PIL import Image

from services.detector.backends.area_sampling import AreaSampler
from services.detector.backends.blazeface import iou
from services.detector.backends.mtcnn import PYRAMID_FACTOR, MtcnnBackend
from services.detector.backends.mtcnn_stages import (
    Boxes,
    output,
    pyramid_scales,
    refine,
    squared,
    suppress,
    suppress_by_smaller,
)
from services.detector.backends.mtcnn_stages import detect_faces as project_detect_faces
from tests.conftest import photo_path

# A group photo of eight faces of 23-32 px, a four-person photo, a portrait and two people.
COMPARED = [("compreface", "016_8.jpg"), ("compreface", "013_4.jpg"), ("photoprism", "2.jpg"), ("photoprism", "16.jpg")]


def test_the_pyramid_starts_where_the_smallest_face_fills_the_window_and_stops_before_it_is_too_small():
    scales = pyramid_scales(480, 640, 20, 0.5)
    assert scales == pytest.approx([0.6, 0.3, 0.15, 0.075, 0.0375])  # 480 x 0.0375 = 18 >= 12; x 0.5 = 9 < 12
    assert pyramid_scales(19, 640, 20, 0.709) == []


def test_boxes_are_squared_about_their_centre():
    corners = squared(np.array([[10.0, 20.0, 30.0, 60.0]]))
    assert corners == pytest.approx(np.array([[0.0, 20.0, 40.0, 60.0]]))


def test_suppression_keeps_the_best_of_overlapping_boxes_per_image():
    boxes = Boxes(
        corners=np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=float),
        scores=np.array([0.6, 0.9, 0.5, 0.8]),
        owners=np.array([0, 0, 1, 0]),
    )
    assert sorted(suppress(boxes, 0.5).tolist()) == [1, 2, 3]  # box 2 is another image's


def test_the_last_suppression_drops_a_box_mostly_inside_a_better_one():
    # IoU 0.16, but the small box lies wholly inside the large one.
    boxes = Boxes(
        corners=np.array([[0, 0, 49, 49], [10, 10, 29, 29], [100, 100, 119, 119]], dtype=float),
        scores=np.array([0.99, 0.95, 0.9]),
        owners=np.zeros(3, dtype=np.int64),
    )
    assert suppress_by_smaller(boxes, 0.7).tolist() == [0, 2]
    assert sorted(suppress(boxes, 0.7).tolist()) == [0, 1, 2]


@pytest.fixture(scope="module")
def mtcnn() -> MtcnnBackend:
    backend = MtcnnBackend()
    backend.load()
    return backend


@pytest.mark.parametrize(("set_name", "name"), COMPARED)
def test_the_stages_find_the_faces_facenet_pytorchs_detect_face_finds(mtcnn, set_name, name):
    with Image.open(photo_path(set_name, name)) as photo:
        photo.thumbnail((1280, 1280))
        pixels = np.asarray(photo.convert("RGB"))
    thresholds = mtcnn.stage_thresholds(0.9)
    with torch.inference_mode():
        [(boxes, points)] = project_detect_faces(pixels[None], 20, mtcnn.nets, thresholds, PYRAMID_FACTOR, mtcnn.device)
        reference_boxes, reference_points = detect_face(
            pixels[None], 20, *mtcnn.nets, thresholds, PYRAMID_FACTOR, mtcnn.device
        )
    reference_boxes = np.asarray(reference_boxes[0], dtype=np.float64).reshape(-1, 5)
    reference_points = np.asarray(reference_points[0], dtype=np.float64).reshape(-1, 5, 2)
    assert len(boxes) == len(reference_boxes) > 0
    for box, landmarks in zip(reference_boxes, reference_points):
        overlaps = iou(box[:4], boxes[:, :4])
        nearest = int(np.argmax(overlaps))
        side = min(box[2] - box[0], box[3] - box[1])
        assert overlaps[nearest] >= 0.98, (name, box, boxes[nearest])
        assert np.abs(points[nearest] - landmarks).max() <= 0.02 * side, name
        assert boxes[nearest, 4] == pytest.approx(box[4], abs=1e-3)


def test_boxes_wholly_outside_the_image_are_dropped_without_running_a_network(mtcnn):
    images = np.zeros((1, 40, 50, 3), dtype=np.uint8)
    outside = Boxes(np.array([[60.0, 5.0, 80.0, 25.0], [10.0, 45.0, 30.0, 70.0]]), np.ones(2), np.zeros(2, np.int64))
    assert len(refine(mtcnn.nets[1], AreaSampler(images, mtcnn.device), outside, 0.5)) == 0
    boxes, points = output(mtcnn.nets[2], AreaSampler(images, mtcnn.device), outside, 0.5)
    assert len(boxes) == 0 and points.shape == (0, 5, 2)
