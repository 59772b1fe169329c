"""Calibrates the match threshold on the labelled photos: the threshold for each target FAR,
with the FAR's 95% upper bound and VAL, through the served pipeline.

The whole suite runs in this process (``launcher.in_process.LocalSuite``: the detector, a
real Triton serving the ``--models`` repository, search, the gateway, default settings)
and the pairs are measured exactly as ``facesearch calibrate`` measures them
(``evaluation.served.measure``: one Identify similarity per pair; pairs as
``evaluation.calibration`` labels them: same-person within a set, different-person within
a set and across sets). Results go to bench/results/threshold_calibration.{json,md}; the
gateway's facenet-casia default is the threshold for FAR 0.001 found here.

    python -m bench.threshold_calibration [--data ../shared/data] [--out bench/results]
    python -m bench.threshold_calibration --render bench/results/threshold_calibration.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.report import (
    DEFAULT_DATA,
    REPO,
    RESULTS,
    LoadMeter,
    heading,
    machine_facts,
    render_again,
    settings_of,
    write_results,
)
from evaluation.calibration import calibrate, labelled_pairs, load_labels
from evaluation.measures import operating_point
from evaluation.served import measure
from gateway.settings import DEFAULT_THRESHOLDS
from launcher.in_process import KEYS, LocalSuite, prepare_model_repository
from sdk.client import FaceSearchClient

NAME = "threshold_calibration"
TARGET_FARS = (0.001, 0.01, 0.05, 0.1)
TENANT = "calibration"


def run(data: Path, models: Path) -> dict:
    photos = load_labels(data / "labels.json")
    embedder = prepare_model_repository(models)
    with tempfile.TemporaryDirectory(prefix="facesearch-calibration-") as work:
        suite = LocalSuite(Path(work), embedder)
        try:
            with FaceSearchClient(suite.address, KEYS[TENANT], timeout_s=300) as client:
                model = client.stats().settings.model
                scored = measure(client, photos, print)
            detector, gateway = settings_of(suite.detector.server.settings), settings_of(suite.gateway_settings)
        finally:
            suite.stop()
    genuine, impostor = labelled_pairs(scored)
    _, within_set = labelled_pairs((a, b, s) for a, b, s in scored if a.photo.set_name == b.photo.set_name)
    at_target = [calibrate(genuine, impostor, far) for far in TARGET_FARS]
    faces = {(a.photo.key, a.index) for a, _, _ in scored} | {(b.photo.key, b.index) for _, b, _ in scored}
    default = DEFAULT_THRESHOLDS[model.id]
    at_default = operating_point(genuine, impostor, default)
    return {
        "model": {"id": model.id, "version": model.version},
        "detector_settings": detector,
        "gateway_settings": gateway,
        "photos": len(photos),
        "photos_with_faces": len({key for key, _ in faces}),
        "faces": len(faces),
        "pairs": {"same_person": len(genuine), "different_person": len(impostor)},
        "at_target_far": [c.as_dict() for c in at_target],
        "within_set": {
            "different_person": len(within_set),
            "far_at_target_thresholds": [
                round(operating_point(genuine, within_set, c.threshold).far, 5) for c in at_target
            ],
        },
        "configured_default": {
            "threshold": default,
            "l2_distance": round(float(np.sqrt(2 - 2 * default)), 4),
            "far": round(at_default.far, 6),
            "val": round(at_default.val, 4),
        },
        "same_person_similarity": {"mean": round(float(np.mean(genuine)), 4), "min": round(float(np.min(genuine)), 4)},
        "different_person_similarity": {
            "mean": round(float(np.mean(impostor)), 4),
            "max": round(float(np.max(impostor)), 4),
        },
    }


def markdown(result: dict) -> str:
    c = result["calibration"]
    default = c["configured_default"]
    detector = c["detector_settings"]
    lines = [
        *heading(f"Match threshold calibration ({c['model']['id']})", result),
        f"Command: `{result['command']}`: the whole suite in this process (detector backend {detector['backend']}, "
        f"min_confidence {detector['min_confidence']}; Triton serving {c['model']['id']} version "
        f"{c['model']['version']}; gateway defaults), the similarities read through the gateway as "
        "`facesearch calibrate` reads them (one Identify similarity per pair).",
        "",
        f"Pairs: {c['pairs']['same_person']} same-person, {c['pairs']['different_person']} different-person, among "
        f"the {c['faces']} faces found in {c['photos_with_faces']} of the {c['photos']} labelled photos of "
        f"{result['data']} (same-person: two photos of one identity of a set; different-person: different "
        "identities within a set, and any two faces of different sets, except people two sets name alike).",
        "",
        "| target FAR | threshold (cosine) | L2 distance | FAR | FAR 95% upper bound | VAL |",
        "|---|---|---|---|---|---|",
    ]
    for p in c["at_target_far"]:
        lines.append(
            f"| {p['target_far']:g} | {p['threshold']:.4f} | {p['l2_distance']:.3f} | {p['far']:.5f} "
            f"({p['impostors_accepted']} pairs) | {p['far_upper']:.5f} | {p['val']:.3f} |"
        )
    within = c["within_set"]
    lines += [
        "",
        f"The different-person pairs of one set alone ({within['different_person']}: people photographed alike, "
        "the harder strangers) are accepted more often: at these thresholds their FAR is "
        + ", ".join(f"{far:.4f}" for far in within["far_at_target_thresholds"])
        + ".",
        "",
        f"Threshold {default['threshold']} (L2 {default['l2_distance']:.3f}), the default when this ran: "
        f"FAR {default['far']:.5f}, VAL {default['val']:.3f}.",
        "",
        f"Same-person similarity: mean {c['same_person_similarity']['mean']:.3f}, min "
        f"{c['same_person_similarity']['min']:.3f}. Different-person: mean "
        f"{c['different_person_similarity']['mean']:.3f}, max {c['different_person_similarity']['max']:.3f}.",
        "",
        f"One different-person pair is a FAR of {1 / c['pairs']['different_person']:.6f} here.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--models", type=Path, default=REPO / "var" / "models", help="model repository")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--render", type=Path, help="only rewrite the markdown beside this results JSON file")
    args = parser.parse_args()
    if args.render:
        print(f"rewrote {render_again(args.render, markdown)}")
        return
    meter = LoadMeter()
    meter.start()
    calibration = run(args.data, args.models)
    load = meter.summary()
    meter.stop()
    result = {
        "benchmark": NAME,
        "command": " ".join(["python -m bench.threshold_calibration", *sys.argv[1:]]),
        "data": str(args.data),
        "calibration": calibration,
        "load": load,
        "machine": machine_facts(["torch", "onnxruntime", "numpy", "tritonclient", "qdrant-client"]),
    }
    json_path, md_path = write_results(args.out, NAME, result, markdown)
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
