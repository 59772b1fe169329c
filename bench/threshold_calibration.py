"""Calibrates the match threshold on the labelled photos: VAL at fixed FARs.

Same-person pairs: every two single-face photos of one labelled identity.
Different-person pairs: single-face photos of different identities within a set, and
every two faces of one group photo (people in one photo are different people).
The faces go through the product's own detector (default settings, blurred faces
skipped, as the gateway asks) and the served ONNX model run in-process
(``create_embedder`` with the ``inprocess`` backend; ``facesearch models prepare``
writes the model), exactly as the gateway sees them. Results go to
bench/results/threshold_calibration.{json,md}.

    python -m bench.threshold_calibration [--data ../shared/data] [--out bench/results]
    python -m bench.threshold_calibration --render bench/results/threshold_calibration.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from bench.report import (
    DEFAULT_DATA,
    RESULTS,
    LoadMeter,
    load_line,
    machine_facts,
    machine_line,
    render_again,
    settings_of,
    write_results,
)
from evaluation.measures import operating_point, threshold_at_far
from gateway.settings import DEFAULT_THRESHOLDS
from services.detector.backends import create_backend
from services.detector.detection import FaceDetector
from services.detector.images import ImageLimits, decode_image
from services.detector.settings import DetectorSettings
from services.embedder.client.factory import create_embedder
from services.embedder.serving.provisioning import prepare_models
from services.embedder.settings import EmbedderSettings

NAME = "threshold_calibration"
TARGET_FARS = (0.001, 0.01, 0.05, 0.1)


def embed_photos(
    data: Path, detector_settings: DetectorSettings, embedder_settings: EmbedderSettings
) -> dict[tuple[str, str], np.ndarray]:
    """(set, photo) -> vectors of its faces, largest first."""
    labels = json.loads((data / "labels.json").read_text())["sets"]
    detector = FaceDetector(create_backend(detector_settings), detector_settings)
    limits = ImageLimits(detector_settings.max_image_bytes, detector_settings.max_image_pixels)
    options = dataclasses.replace(detector.default_options(), skip_blurred=True)  # as the gateway asks
    prepare_models(embedder_settings, flavours=["onnx-python"])

    async def embed_all() -> dict[tuple[str, str], np.ndarray]:
        vectors = {}
        async with create_embedder(embedder_settings) as embedder:
            for set_name, labelled in labels.items():
                for name in labelled["photos"]:
                    content = (data / set_name / name).read_bytes()
                    image = decode_image(content, limits, min_side=detector_settings.max_side)
                    [detection] = detector.detect([image], options)
                    if detection.faces:
                        crops = np.stack([face.crop for face in detection.faces])
                        vectors[(set_name, name)] = (await embedder.embed(crops)).vectors
        return vectors

    return asyncio.run(embed_all())


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


def calibrate(genuine: list[float], impostor: list[float], model_id: str) -> dict:
    """The operating points at the target FARs and at the configured default threshold."""
    default = DEFAULT_THRESHOLDS[model_id]

    def point(p) -> dict:
        return {
            "threshold": round(p.threshold, 4),
            "l2_distance": round(float(np.sqrt(max(0.0, 2 - 2 * p.threshold))), 4),
            "far": round(p.far, 4),
            "val": round(p.val, 4),
        }

    return {
        "model_id": model_id,
        "pairs": {"same_person": len(genuine), "different_person": len(impostor)},
        "at_target_far": [
            {"target_far": far, **point(threshold_at_far(genuine, impostor, far))} for far in TARGET_FARS
        ],
        "configured_default": point(operating_point(genuine, impostor, default)),
        "same_person_similarity": {
            "mean": round(float(np.mean(genuine)), 4),
            "min": round(float(np.min(genuine)), 4),
        },
        "different_person_similarity": {
            "mean": round(float(np.mean(impostor)), 4),
            "max": round(float(np.max(impostor)), 4),
        },
        "one_pair_far": round(1 / len(impostor), 5),
    }


def markdown(result: dict) -> str:
    c = result["calibration"]
    default = c["configured_default"]
    lines = [
        f"# Match threshold calibration ({c['model_id']})",
        "",
        machine_line(result["machine"]),
        "",
        load_line(result["load"]),
        "",
        f"Command: `{result['command']}`. Detector: backend {result['detector_settings']['backend']}, "
        f"min_confidence {result['detector_settings']['min_confidence']}, blurred faces skipped; embedder: "
        f"{result['embedder_settings']['backend']}, model {result['embedder_settings']['model_id']} version "
        f"{result['embedder_settings']['model_version']}.",
        "",
        f"Pairs: {c['pairs']['same_person']} same-person, {c['pairs']['different_person']} different-person "
        f"(the {result['photos_with_faces']} labelled photos of {result['data']} with a face found: single-face "
        "photos within a set, and faces of one group photo).",
        "",
        "| target FAR | threshold (cosine) | L2 distance | FAR | VAL |",
        "|---|---|---|---|---|",
    ]
    for p in c["at_target_far"]:
        lines.append(
            f"| {p['target_far']:g} | {p['threshold']:.3f} | {p['l2_distance']:.3f} | {p['far']:.4f} | {p['val']:.3f} |"
        )
    lines += [
        "",
        f"Configured default {default['threshold']} (L2 {default['l2_distance']:.3f}): FAR {default['far']:.4f}, "
        f"VAL {default['val']:.3f}.",
        "",
        f"Same-person similarity: mean {c['same_person_similarity']['mean']:.3f}, min "
        f"{c['same_person_similarity']['min']:.3f}. Different-person: mean "
        f"{c['different_person_similarity']['mean']:.3f}, max {c['different_person_similarity']['max']:.3f}.",
        "",
        f"One different-person pair is a FAR of {c['one_pair_far']:.4f} here.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--render", type=Path, help="only rewrite the markdown beside this results JSON file")
    args = parser.parse_args()
    if args.render:
        print(f"rewrote {render_again(args.render, markdown)}")
        return
    meter = LoadMeter()
    meter.start()
    detector_settings = DetectorSettings()
    embedder_settings = EmbedderSettings(backend="inprocess")
    vectors = embed_photos(args.data, detector_settings, embedder_settings)
    genuine, impostor = pairs(args.data, vectors)
    load = meter.summary()
    meter.stop()
    result = {
        "benchmark": NAME,
        "command": " ".join(["python -m bench.threshold_calibration", *sys.argv[1:]]),
        "data": str(args.data),
        "photos_with_faces": len(vectors),
        "detector_settings": settings_of(detector_settings),
        "embedder_settings": settings_of(embedder_settings),
        "calibration": calibrate(genuine, impostor, embedder_settings.model_id),
        "load": load,
        "machine": machine_facts(["torch", "onnxruntime", "numpy", "facenet-pytorch"]),
    }
    json_path, md_path = write_results(args.out, NAME, result, markdown)
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
