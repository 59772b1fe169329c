"""MTCNN's three stages (Zhang et al., 2016), run on facenet-pytorch's networks and weights.

1. P-Net slides its 12 px window, 2 px at a time, over an image pyramid whose largest level
   maps the smallest face searched for onto that window; cells scoring at least the first
   threshold become boxes, suppressed within each level, then across levels, moved by P-Net's
   offsets and made square.
2. R-Net scores each box cut out and resampled to 24 px; those above the second threshold are
   suppressed, moved by R-Net's offsets and made square.
3. O-Net does the same at 48 px and adds five landmarks; the boxes above the last threshold are
   moved by its offsets and suppressed, a box dropped when it overlaps a better one by 0.7 of
   the smaller one's area.

The pyramid's levels and the crops are resampled by area as facenet-pytorch resamples them
(torch's adaptive average pooling, which ``area_sampling`` computes from running sums, on the
CPU or the GPU): OpenCV's exact area weights moved boxes enough to change which faces were found
and how well they matched (measured on the labelled photos). Pixels reach the networks as
``(value - 127.5) / 128``, RGB, laid out channels last.
With the same arithmetic (single precision), the faces found are facenet-pytorch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms

from services.detector.backends.area_sampling import AreaSampler

STRIDE = 2  # P-Net's window moves this far on each pyramid level
CELL = 12  # P-Net's window side
RNET_SIDE, ONET_SIDE = 24, 48
LEVEL_NMS, PYRAMID_NMS, REFINED_NMS, OUTPUT_NMS = 0.5, 0.7, 0.7, 0.7
NET_BATCH = 512  # crops per R-Net or O-Net call, bounding memory
# Boxes are computed in single precision, as facenet-pytorch computes them: a box's corners are
# cut to whole pixels, and in double precision some land a pixel apart and tip borderline faces.
BOX_DTYPE = np.float32


@dataclass
class Boxes:
    """Candidate faces of a batch of images: corners (K x 4, x1 y1 x2 y2 in pixels), scores (K)
    and the image each belongs to (K)."""

    corners: np.ndarray
    scores: np.ndarray
    owners: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, keep: np.ndarray) -> Boxes:
        return Boxes(self.corners[keep], self.scores[keep], self.owners[keep])


def pyramid_scales(height: int, width: int, min_face_size: int, factor: float) -> list[float]:
    """Scales at which ``min_face_size`` and larger faces fill P-Net's window, largest first,
    each ``factor`` times the last, while the shorter side still holds one window."""
    scale = CELL / min_face_size
    shorter = min(height, width) * scale
    scales = []
    while shorter >= CELL:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def detect_faces(
    images: np.ndarray, min_face_size: int, nets, thresholds: list[float], factor: float, device: torch.device
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image of ``images`` (N x H x W x 3 uint8 RGB, one size): its faces' boxes (K x 5: x1
    y1 x2 y2 score) and landmarks (K x 5 x 2, x and y)."""
    pnet, rnet, onet = nets
    height, width = images.shape[1:3]
    sampler = AreaSampler(images, device)
    boxes = propose(pnet, sampler, pyramid_scales(height, width, min_face_size, factor), thresholds[0])
    if len(boxes):
        boxes = refine(rnet, sampler, boxes, thresholds[1])
    points = np.zeros((0, 5, 2))
    if len(boxes):
        boxes, points = output(onet, sampler, boxes, thresholds[2])
    return [
        (np.concatenate([boxes.corners[mine], boxes.scores[mine, None]], axis=1), points[mine])
        for mine in (boxes.owners == index for index in range(len(images)))
    ]


def propose(pnet, sampler: AreaSampler, scales: list[float], threshold: float) -> Boxes:
    """Stage 1: P-Net's boxes over the pyramid, suppressed, moved by its offsets, squared."""
    height, width = sampler.shape
    found: list[tuple[Boxes, np.ndarray]] = []
    for scale in scales:
        level = sampler.level((int(height * scale + 1), int(width * scale + 1)))
        offsets, probabilities = (t.cpu().numpy() for t in pnet(channels_last(normalised(level))))
        owners, rows, columns = np.nonzero(probabilities[:, 1] >= threshold)
        cells = np.stack([columns, rows], axis=1).astype(BOX_DTYPE)
        step = BOX_DTYPE(scale)
        corners = np.concatenate([np.floor((STRIDE * cells + 1) / step), np.floor((STRIDE * cells + CELL) / step)], 1)
        boxes = Boxes(corners, probabilities[owners, 1, rows, columns].astype(BOX_DTYPE), owners)
        keep = suppress(boxes, LEVEL_NMS)
        found.append((boxes.take(keep), offsets[owners, :, rows, columns][keep].astype(BOX_DTYPE)))
    if not found:
        return Boxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    boxes = Boxes(*(np.concatenate([getattr(b, name) for b, _ in found]) for name in ("corners", "scores", "owners")))
    offsets = np.concatenate([o for _, o in found])
    keep = suppress(boxes, PYRAMID_NMS)
    boxes, offsets = boxes.take(keep), offsets[keep]
    sides = boxes.corners[:, 2:] - boxes.corners[:, :2]
    boxes.corners = squared(boxes.corners + offsets * np.tile(sides, 2))
    return boxes


def refine(rnet, sampler: AreaSampler, boxes: Boxes, threshold: float) -> Boxes:
    """Stage 2: R-Net's scores of the boxes; those kept suppressed, moved, squared."""
    boxes, crops = cut(sampler, boxes, RNET_SIDE)
    if not len(boxes):  # every box lay outside the image
        return boxes
    offsets, probabilities = run(rnet, crops)
    keep = probabilities[:, 1] > threshold
    boxes = Boxes(boxes.corners[keep], probabilities[keep, 1].astype(BOX_DTYPE), boxes.owners[keep])
    offsets = offsets[keep]
    kept = suppress(boxes, REFINED_NMS)
    boxes = boxes.take(kept)
    boxes.corners = squared(moved(boxes.corners, offsets[kept]))
    return boxes


def output(onet, sampler: AreaSampler, boxes: Boxes, threshold: float) -> tuple[Boxes, np.ndarray]:
    """Stage 3: O-Net's scores, offsets and landmarks; the boxes kept moved and suppressed."""
    boxes, crops = cut(sampler, boxes, ONET_SIDE)
    if not len(boxes):
        return boxes, np.zeros((0, 5, 2), dtype=BOX_DTYPE)
    offsets, landmarks, probabilities = run(onet, crops)
    keep = probabilities[:, 1] > threshold
    boxes = Boxes(boxes.corners[keep], probabilities[keep, 1].astype(BOX_DTYPE), boxes.owners[keep])
    corners, landmarks = boxes.corners, landmarks[keep].astype(BOX_DTYPE)
    sides = corners[:, 2:] - corners[:, :2] + 1
    # O-Net's landmarks are shares of the box: five x, then five y.
    points = np.stack(
        [sides[:, :1] * landmarks[:, :5] + corners[:, :1] - 1, sides[:, 1:] * landmarks[:, 5:] + corners[:, 1:2] - 1],
        axis=2,
    )
    boxes.corners = moved(corners, offsets[keep])
    kept = suppress_by_smaller(boxes, OUTPUT_NMS)
    return boxes.take(kept), points[kept]


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor laid out channels last, where torch's CPU pooling and convolutions are several
    times faster on these small networks than channels first (the values are the same)."""
    return tensor.contiguous(memory_format=torch.channels_last)


def cut(sampler: AreaSampler, boxes: Boxes, side: int) -> tuple[Boxes, torch.Tensor]:
    """Each box's pixels (the box's whole pixels, within the image) resampled to ``side``; the
    boxes left with no pixel are dropped."""
    height, width = sampler.shape
    whole = np.trunc(boxes.corners).astype(np.int64)
    left, top = np.maximum(whole[:, 0], 1) - 1, np.maximum(whole[:, 1], 1) - 1
    right, bottom = np.minimum(whole[:, 2], width), np.minimum(whole[:, 3], height)
    keep = (right > left) & (bottom > top)
    crops = sampler.crops(boxes.owners[keep], top[keep], bottom[keep], left[keep], right[keep], side)
    return boxes.take(keep), crops


def run(net, crops: torch.Tensor) -> tuple[np.ndarray, ...]:
    """The network's outputs for the crops, ``NET_BATCH`` at a time."""
    outputs = []
    for start in range(0, len(crops), NET_BATCH):
        outputs.append([t.cpu().numpy() for t in net(channels_last(normalised(crops[start : start + NET_BATCH])))])
    return tuple(np.concatenate(parts) for parts in zip(*outputs))


def moved(corners: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Corners moved by the network's offsets, as shares of the box's side in whole pixels."""
    sides = corners[:, 2:] - corners[:, :2] + 1
    return corners + offsets.astype(BOX_DTYPE) * np.tile(sides, 2)


def squared(corners: np.ndarray) -> np.ndarray:
    """Each box made a square of its longer side, about the same centre."""
    sides = corners[:, 2:] - corners[:, :2]
    longer = sides.max(axis=1, keepdims=True)
    top_left = corners[:, :2] + (sides - longer) / 2
    return np.concatenate([top_left, top_left + longer], axis=1)


def suppress(boxes: Boxes, threshold: float) -> np.ndarray:
    """Indices of the boxes kept by non-maximum suppression at ``threshold`` IoU, image by image."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    keep = batched_nms(
        torch.from_numpy(boxes.corners).float(),
        torch.from_numpy(boxes.scores).float(),
        torch.from_numpy(boxes.owners.astype(np.int64)),
        threshold,
    )
    return keep.numpy()


def suppress_by_smaller(boxes: Boxes, threshold: float) -> np.ndarray:
    """Best first, image by image: a box is dropped when its overlap with a better one is more
    than ``threshold`` of the smaller one's area (areas in whole pixels)."""
    kept = []
    for owner in np.unique(boxes.owners):
        mine = np.flatnonzero(boxes.owners == owner)
        corners = boxes.corners[mine]
        areas = np.prod(corners[:, 2:] - corners[:, :2] + 1, axis=1)
        order = list(np.argsort(-boxes.scores[mine], kind="stable"))
        while order:
            best, rest = order[0], np.array(order[1:], dtype=np.int64)
            kept.append(mine[best])
            if not len(rest):
                break
            low = np.maximum(corners[best, :2], corners[rest, :2])
            high = np.minimum(corners[best, 2:], corners[rest, 2:])
            overlap = np.prod(np.clip(high - low + 1, 0, None), axis=1)
            order = list(rest[overlap / np.minimum(areas[best], areas[rest]) <= threshold])
    kept = np.array(kept, dtype=np.int64)
    return kept[np.argsort(-boxes.scores[kept], kind="stable")]
