"""How well the served pipeline recognises the people of the labelled photos, measured as
``facesearch eval`` measures it (``cli.evaluate.evaluate_dataset``, through the gateway),
with the whole suite in this process (``launcher.in_process.LocalSuite``: the detector, a
real Triton serving the ``--models`` repository, search, the gateway, default settings).
Results go to bench/results/evaluation_MODEL.{json,html,md}, with the threshold for FAR
0.001 calibrated on the same pairs as ``facesearch calibrate`` chooses it.

    python -m bench.recognition_evaluation [--data ../shared/data] [--out bench/results]
    python -m bench.recognition_evaluation --weights dlib [--threshold 0.9]  # dlib-resnet

``--weights dlib`` serves dlib's ResNet (the detector aligning faces for it, model
repository ``var/models-dlib``); ``--threshold`` sets the gateway's threshold for the
model served (needed for a model without a configured default).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.report import DEFAULT_DATA, REPO, RESULTS, LoadMeter, load_line, machine_facts, machine_line
from cli.evaluate import summary, write_results
from evaluation.calibration import calibrate
from evaluation.served import evaluate_dataset
from gateway.settings import DEFAULT_THRESHOLDS
from launcher.in_process import KEYS, LocalSuite, prepare_model_repository
from sdk.client import FaceSearchClient

TENANT = "evaluation"
CALIBRATION_FAR = 0.001
DETECTOR_MODEL = {"casia": "facenet-casia", "dlib": "dlib-resnet"}  # the embedding model faces are aligned for


def run(data: Path, models: Path, weights: str, threshold: float | None) -> dict:
    embedder = prepare_model_repository(models, weights=weights)
    thresholds = dict(DEFAULT_THRESHOLDS)
    if threshold is not None:
        thresholds[embedder.model_id] = threshold
    with tempfile.TemporaryDirectory(prefix="facesearch-evaluation-") as work:
        suite = LocalSuite(
            Path(work),
            embedder,
            detector_overrides={"embedding_model": DETECTOR_MODEL[weights]},
            similarity_thresholds=thresholds,
        )
        try:
            with FaceSearchClient(suite.address, KEYS[TENANT], timeout_s=300) as client:
                result = evaluate_dataset(client, data / "labels.json", print, keep_pairs=True)
                left = client.stats()
                result["tenant_left"] = {"photos": left.photos, "people": left.people}
        finally:
            suite.stop()
    genuine, impostor = result.pop("pairs")
    result["calibration"] = calibrate(genuine, impostor, CALIBRATION_FAR).as_dict()
    return result


def markdown(result: dict, command: str, load: dict, machine: dict) -> str:
    v, c = result["verification"], result["calibration"]
    return (
        f"# Recognition evaluation ({result['model']['id']})\n\n{machine_line(machine)}\n\n{load_line(load)}\n\n"
        f"Command: `{command}`: the whole suite in this process (default settings; Triton serving "
        f"{result['model']['id']} version {result['model']['version']}, the detector aligning faces for it; "
        f"gateway threshold {result['configured_threshold']:.4f}), measured through the "
        "gateway as `facesearch eval` measures it. The run also writes the figures and the worst mistakes "
        f"to `evaluation_{result['model']['id']}.html` beside this file; that page holds thumbnails of the "
        "test photos, so it is not kept in the repository.\n\n"
        f"{result['faces']} faces found in {result['photos_with_faces']} of the {result['photos']} labelled photos "
        f"of {result['dataset']}; {v['pairs']['same_person']} same-person and {v['pairs']['different_person']} "
        "different-person pairs.\n\n```\n" + summary(result) + "\n```\n\n"
        f"Same-person similarity {v['same_person_similarity']['mean']:.3f} ± {v['same_person_similarity']['std']:.3f}, "
        f"different-person {v['different_person_similarity']['mean']:.3f} ± "
        f"{v['different_person_similarity']['std']:.3f}. The tenant was left with "
        f"{result['tenant_left']['photos']} photos and {result['tenant_left']['people']} people.\n\n"
        f"Calibrated on these pairs as `facesearch calibrate --far {c['target_far']:g}` chooses it: threshold "
        f"{c['threshold']:.4f} (FAR {c['far']:.5f}, {c['impostors_accepted']} pairs; 95% upper bound "
        f"{c['far_upper']:.5f}; VAL {c['val']:.3f}).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--weights", choices=sorted(DETECTOR_MODEL), default="casia", help="the model served")
    parser.add_argument("--models", type=Path, default=None, help="model repository (default var/models[-dlib])")
    parser.add_argument("--threshold", type=float, default=None, help="the gateway's threshold for the model")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    meter = LoadMeter()
    meter.start()
    models = args.models or REPO / "var" / ("models" if args.weights == "casia" else f"models-{args.weights}")
    result = run(args.data, models, args.weights, args.threshold)
    load = meter.summary()
    meter.stop()
    command = " ".join(["python -m bench.recognition_evaluation", *sys.argv[1:]])
    machine = machine_facts(["torch", "onnxruntime", "numpy", "tritonclient", "qdrant-client"])
    result["command"], result["load"], result["machine"] = command, load, machine
    base = args.out / f"evaluation_{result['model']['id']}"
    write_results(result, base.with_suffix(".json"), base.with_suffix(".html"))
    base.with_suffix(".md").write_text(markdown(result, command, load, machine))
    print(base.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
