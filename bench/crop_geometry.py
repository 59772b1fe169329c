"""Which crop each embedding model recognises people best from: the same faces of the labelled
photos cut out in several geometries (aligned onto a landmark template, or the detection box
with a margin; several margins; in colour or grey), embedded by the served model file, and
measured as `facesearch eval` measures a model.

The photos are detected once with the detector's own logic (default settings, MTCNN). For each
geometry, every face is cropped with ``services.detector.alignment.face_crop``, flagged blurred
as the detector flags it (those are left out, as the gateway leaves them out of an archive),
and embedded by the model's ``model.onnx`` (the file Triton serves; ONNX Runtime here). Then,
over the pairs ``facesearch calibrate`` uses: ROC AUC, VAL at FAR 0.001 and the threshold for
it, and FindMe (each identity of 3 or more photos enrolled from its first one-person photo, as
``facesearch eval`` does) at that threshold. Results: bench/results/crop_geometry.{json,md}.

    python -m bench.crop_geometry [--data ../shared/data] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from bench.report import DEFAULT_DATA, REPO, RESULTS, heading, measured
from evaluation.calibration import FoundFace, LabelledPhoto, calibrate, found_faces, labelled_pairs, load_labels
from evaluation.measures import roc_auc, threshold_at_far
from evaluation.recognition import findme_scores, findme_targets
from launcher.in_process import prepare_model_repository
from services.detector.alignment import face_crop
from services.detector.backends import create_backend
from services.detector.detection import FaceDetector
from services.detector.images import ImageLimits, decode_image
from services.detector.quality import blur_variance
from services.detector.settings import DetectorSettings
from services.embedder.client.in_process import InProcessEmbedder
from services.embedder.models import BOX_WITH_MARGIN, DLIB_CHIP, FIVE_POINT_SIMILARITY, EmbeddingModel
from services.embedder.settings import EmbedderSettings

TARGET_FAR = 0.001
MIN_REFERENCE_SIZE = 24  # the gateway's min_face_size for reference faces
HARD_SET = "face_api_js"  # tight 150x150 greyscale crops: forehead and chin cut off


@dataclass(frozen=True)
class Variant:
    label: str
    alignment: str
    margin: float
    grey: bool = False


# (weights, variants); the first of each is the geometry in the model registry.
VARIANTS = {
    "casia": [
        Variant("box, margin 1/12 (shipped)", BOX_WITH_MARGIN, 1 / 12),
        Variant("box, margin 1/24", BOX_WITH_MARGIN, 1 / 24),
        Variant("box, margin 1/8", BOX_WITH_MARGIN, 1 / 8),
        Variant("five-point aligned, margin 0.1 (before)", FIVE_POINT_SIMILARITY, 0.1),
        Variant("five-point aligned, margin 0.15", FIVE_POINT_SIMILARITY, 0.15),
    ],
    "dlib": [
        Variant("dlib chip, padding 0.25 (shipped)", DLIB_CHIP, 0.25 / 1.5),
        Variant("dlib chip, margin 0.12", DLIB_CHIP, 0.12),
        Variant("dlib chip, margin 0.1", DLIB_CHIP, 0.1),
        Variant("dlib chip, padding 0.25, grey", DLIB_CHIP, 0.25 / 1.5, grey=True),
        Variant("box, margin 1/12", BOX_WITH_MARGIN, 1 / 12),
    ],
}
SUBSETS = {  # name: the set names it keeps (None: every set)
    "all sets": None,
    f"{HARD_SET} only": lambda name: name == HARD_SET,
    f"without {HARD_SET}": lambda name: name != HARD_SET,
}


@dataclass
class DetectedPhoto:
    photo: LabelledPhoto
    pixels: np.ndarray  # decoded RGB
    boxes: list[np.ndarray]  # in ``pixels`` coordinates
    landmarks: list[np.ndarray]


def detect_all(photos: list[LabelledPhoto]) -> list[DetectedPhoto]:
    settings = DetectorSettings()
    backend = create_backend(settings)
    backend.load()
    detector = FaceDetector(backend, settings)
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    detected = []
    for photo in photos:
        image = decode_image(photo.path.read_bytes(), limits, min_side=settings.max_side)
        [detection] = detector.detect([image], replace(detector.default_options(), include_crops=False))
        detected.append(
            DetectedPhoto(
                photo,
                image.pixels,
                [f.box * image.scale for f in detection.faces],
                [f.landmarks * image.scale for f in detection.faces],
            )
        )
    return detected


def crops_of(detected: list[DetectedPhoto], model: EmbeddingModel, variant: Variant, blur_threshold: float):
    """(faces, their crops, their box sizes): the unblurred faces of every photo, labelled."""
    faces, crops, sizes = [], [], []
    for item in detected:
        kept = []
        for box, points in zip(item.boxes, item.landmarks, strict=True):
            crop = face_crop(item.pixels, box, points, model.crop.side, variant.margin, variant.alignment)
            native = min(box[2] - box[0], box[3] - box[1]) / (1 - 2 * variant.margin)
            if blur_variance(crop, native) < blur_threshold:
                continue
            if variant.grey:
                crop = np.repeat(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
            kept.append((crop, float(min(box[2] - box[0], box[3] - box[1]))))
        for face, (crop, size) in zip(found_faces(item.photo, len(kept)), kept, strict=True):
            faces.append(face)
            crops.append(crop)
            sizes.append(size)
    return faces, crops, sizes


def measure(faces: list[FoundFace], vectors: np.ndarray, sizes: list[float], photos: list[LabelledPhoto]) -> dict:
    similarity = vectors @ vectors.T
    scored = [
        (faces[i], faces[j], float(similarity[i, j])) for i in range(len(faces)) for j in range(i + 1, len(faces))
    ]
    genuine, impostor = labelled_pairs(scored)
    chosen = calibrate(genuine, impostor, TARGET_FAR)
    by_photo = defaultdict(list)
    for index, face in enumerate(faces):
        by_photo[face.photo.key].append(index)
    found = {}
    targets = findme_targets(photos)
    for target in targets:
        usable = [i for i in by_photo.get(target.enrolment.key, []) if sizes[i] >= MIN_REFERENCE_SIZE]
        if not usable:
            continue
        reference = max(usable, key=lambda i: sizes[i])
        found[target.person_key] = {
            faces[i].photo.key for i in np.flatnonzero(similarity[reference] >= chosen.threshold)
        }
    findme = findme_scores(targets, found)["overall"]
    return {
        "faces": len(faces),
        "pairs": {"same_person": len(genuine), "different_person": len(impostor)},
        "roc_auc": roc_auc(genuine, impostor),
        "threshold": chosen.threshold,
        "far": chosen.far,
        "val": chosen.val,
        "val_at_far_0.01": threshold_at_far(genuine, impostor, 0.01).val,
        "findme": findme,
    }


def run(data: Path, models_root: Path) -> dict:
    photos = load_labels(data / "labels.json")
    detected = detect_all(photos)
    blur_threshold = DetectorSettings().blur_threshold
    results = {}
    for weights, variants in VARIANTS.items():
        root = models_root if weights == "casia" else models_root.with_name(f"{models_root.name}-{weights}")
        settings: EmbedderSettings = prepare_model_repository(root, weights=weights)
        embedder = InProcessEmbedder(settings)
        model = settings.model
        rows = []
        for variant in variants:
            faces, crops, sizes = crops_of(detected, model, variant, blur_threshold)
            vectors = asyncio.run(embedder.embed(np.stack(crops))).vectors
            row = {"variant": variant.label, "alignment": variant.alignment, "margin": variant.margin, "subsets": {}}
            for subset, keep in SUBSETS.items():
                chosen = [i for i, f in enumerate(faces) if keep is None or keep(f.photo.set_name)]
                in_subset = [p for p in photos if keep is None or keep(p.set_name)]
                row["subsets"][subset] = measure(
                    [faces[i] for i in chosen], vectors[chosen], [sizes[i] for i in chosen], in_subset
                )
            rows.append(row)
            print(f"{model.id}: {variant.label}: {row['subsets']['all sets']}", flush=True)
        results[model.id] = rows
    return {"data": str(data), "photos": len(photos), "target_far": TARGET_FAR, "models": results}


def markdown(result: dict) -> str:
    lines = [
        *heading("Crop geometry: which crop each model recognises best from", result),
        f"Command: `{result['command']}`. The {result['photos']} labelled photos of "
        f"{result['data']}; faces detected once (MTCNN, default settings), cropped each way, blurred ones left out, "
        "embedded by the served model file; every pair of faces the labels tell apart is scored (more "
        "different-person pairs than `facesearch calibrate` has, which pairs each face only with faces of "
        "one-person photos). Per geometry and set of photos: the faces kept, ROC AUC, the threshold "
        f"for FAR {result['target_far']:g} on these pairs and VAL at it, VAL at FAR 0.01, and FindMe precision / "
        "recall / F1 at that threshold (each identity of 3 or more photos enrolled from its first one-person photo).",
        "",
    ]
    for model_id, rows in result["models"].items():
        lines += [f"## {model_id}", ""]
        for subset in SUBSETS:
            lines += [
                f"### {subset}",
                "",
                "| crop | faces | pairs (same / different) | ROC AUC | threshold | VAL@FAR 0.001 | VAL@FAR 0.01 "
                "| FindMe P / R / F1 |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for row in rows:
                m = row["subsets"][subset]
                f = m["findme"]
                pairs = m["pairs"]
                lines.append(
                    f"| {row['variant']} | {m['faces']} | {pairs['same_person']} / {pairs['different_person']} "
                    f"| {m['roc_auc']:.4f} | {m['threshold']:.4f} | {m['val']:.3f} | {m['val_at_far_0.01']:.3f} "
                    f"| {f['precision']:.3f} / {f['recall']:.3f} / {f['f1']:.3f} |"
                )
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--models", type=Path, default=REPO / "var" / "models", help="model repository")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    packages = ["torch", "onnxruntime", "numpy"]
    measured("crop_geometry", lambda: run(args.data, args.models), packages, args.out, markdown)


if __name__ == "__main__":
    main()
