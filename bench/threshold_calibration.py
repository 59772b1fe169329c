"""Calibrates the match threshold on the labelled photos: VAL at fixed FARs.

Same-person pairs: every two single-face photos of one labelled identity.
Different-person pairs: single-face photos of different identities within a set, and
every two faces of one group photo (people in one photo are different people).
The faces go through the product's own detector and the served ONNX model
(``facesearch models prepare`` writes it), exactly as the gateway sees them.

    python -m bench.threshold_calibration [--data ../shared/data] [--out bench/results/threshold_calibration.md]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import platform
from pathlib import Path

import numpy as np

from evaluation.measures import operating_point, threshold_at_far
from gateway.settings import DEFAULT_THRESHOLDS
from services.detector.backends import create_backend
from services.detector.detection import FaceDetector
from services.detector.images import ImageLimits, decode_image
from services.detector.settings import DetectorSettings
from services.embedder.client.in_process import InProcessEmbedder
from services.embedder.serving.provisioning import prepare_models
from services.embedder.settings import EmbedderSettings

REPO = Path(__file__).resolve().parent.parent
TARGET_FARS = (0.001, 0.01, 0.05, 0.1)


def embed_photos(data: Path) -> dict[tuple[str, str], np.ndarray]:
    """(set, photo) -> vectors of its faces, largest first."""
    labels = json.loads((data / "labels.json").read_text())["sets"]
    detector_settings = DetectorSettings()
    detector = FaceDetector(create_backend(detector_settings), detector_settings)
    limits = ImageLimits(detector_settings.max_image_bytes, detector_settings.max_image_pixels)
    options = dataclasses.replace(detector.default_options(), skip_blurred=True)  # as the gateway asks
    embedder_settings = EmbedderSettings()
    prepare_models(embedder_settings, flavours=["onnx-python"])
    embedder = InProcessEmbedder(embedder_settings)
    vectors = {}
    for set_name, labelled in labels.items():
        for name in labelled["photos"]:
            image = decode_image((data / set_name / name).read_bytes(), limits, min_side=detector_settings.max_side)
            [detection] = detector.detect([image], options)
            if detection.faces:
                crops = np.stack([face.crop for face in detection.faces])
                vectors[(set_name, name)] = asyncio.run(embedder.embed(crops)).vectors
    return vectors


def pairs(data: Path, vectors: dict[tuple[str, str], np.ndarray]) -> tuple[list[float], list[float]]:
    labels = json.loads((data / "labels.json").read_text())["sets"]
    genuine, impostor = [], []
    singles = [
        (set_name, photo["people"][0], vectors[(set_name, name)][0])
        for set_name, labelled in labels.items()
        for name, photo in labelled["photos"].items()
        if photo["faces"] == 1 and len(photo["people"]) == 1 and len(vectors.get((set_name, name), ())) == 1
    ]
    for (set_a, person_a, a), (set_b, person_b, b) in itertools.combinations(singles, 2):
        if set_a == set_b:
            (genuine if person_a == person_b else impostor).append(float(a @ b))
    for faces in vectors.values():
        impostor += [float(a @ b) for a, b in itertools.combinations(faces, 2)]
    return genuine, impostor


def report(genuine: list[float], impostor: list[float]) -> str:
    default = DEFAULT_THRESHOLDS["facenet-casia"]
    at_default = operating_point(genuine, impostor, default)
    lines = [
        "# Match threshold calibration (facenet-casia)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}. "
        "Command: `python -m bench.threshold_calibration`.",
        "",
        f"Pairs: {len(genuine)} same-person, {len(impostor)} different-person (labelled photos of "
        "../shared/data: single-face photos within a set, and faces of one group photo).",
        "",
        "| target FAR | threshold (cosine) | L2 distance | FAR | VAL |",
        "|---|---|---|---|---|",
    ]
    for far in TARGET_FARS:
        point = threshold_at_far(genuine, impostor, far)
        l2 = np.sqrt(max(0.0, 2 - 2 * point.threshold))
        lines.append(f"| {far:g} | {point.threshold:.3f} | {l2:.3f} | {point.far:.4f} | {point.val:.3f} |")
    lines += [
        "",
        f"Configured default {default} (L2 {np.sqrt(2 - 2 * default):.3f}): FAR {at_default.far:.4f}, "
        f"VAL {at_default.val:.3f}.",
        "",
        f"Same-person similarity: mean {np.mean(genuine):.3f}, min {np.min(genuine):.3f}. "
        f"Different-person: mean {np.mean(impostor):.3f}, max {np.max(impostor):.3f}.",
        "",
        "Reading: so few pairs give coarse FARs (one different-person pair is "
        f"{1 / len(impostor):.4f}); calibrate on your own labelled photos with this script before "
        "relying on a FAR below 1%.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "threshold_calibration.md")
    args = parser.parse_args()
    genuine, impostor = pairs(args.data, embed_photos(args.data))
    text = report(genuine, impostor)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
