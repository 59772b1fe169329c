"""Detector throughput: the facesearch detector against naive MTCNN, photos per second.

Both ways run in this process on the same photos (every photo listed in the
data folder's labels.json); the naive way with ``--threads`` torch threads (default: both
cores of this machine), the detector with its own settings (``--detector-threads`` torch
threads in each of ``--workers`` workers; by default one thread each, as it ships):

- facesearch: the real detector gRPC server on 127.0.0.1 (port 0), called with
  DetectBatch in batches, as many calls in flight as the server has workers (as the
  gateway keeps several batches in flight), default options (crops included), end-to-end
  wall clock.
- naive: facenet-pytorch ``MTCNN(keep_all=True)`` with default settings, one photo
  at a time at full size, decoding included; faces with probability >= the
  facesearch default confidence are counted.

Model loading and one warm-up call are not timed, for either way. The detector's
settings are read from the server that ran; the machine's load is measured over the run
and over each way (``bench.report.LoadMeter``). Before each timed part the benchmark
waits (``--quiet-wait-s`` at most) until other processes use at most ``--quiet-percent``
of the CPU, and a part they disturbed anyway is measured again (``--attempts``; the
least disturbed try counts, every try is recorded). Results go to
bench/results/detector_throughput.{json,md}.

    python -m bench.detector_throughput [--batch-size 8] [--threads 2] [--detector-threads 1] [--repeat 1]
    python -m bench.detector_throughput --render bench/results/detector_throughput.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch

from bench.report import (
    DEFAULT_DATA,
    RESULTS,
    LoadMeter,
    add_quiet_options,
    least_disturbed,
    load_line,
    machine_facts,
    machine_line,
    meter_for,
    phase_line,
    quiet_remark,
    render_again,
    settings_of,
    write_results,
)
from facesearch.v1 import common_pb2, detector_pb2, detector_pb2_grpc
from services.detector.server import build_server
from services.detector.settings import DetectorSettings
from services.runtime.background import BackgroundServer

NAME = "detector_throughput"
TARGET_SPEEDUP = 2.0
SAME_FACE_IOU = 0.5  # a facesearch box and a naive box this similar are the same face


@dataclass(frozen=True)
class Photo:
    set_name: str
    name: str
    path: Path
    labelled_faces: int
    content: bytes

    @property
    def key(self) -> str:
        return f"{self.set_name}/{self.name}"


@dataclass
class Run:
    """What one way found: seconds for all passes, boxes per photo of the last pass, the
    machine's load while it ran, and the settings it ran with."""

    seconds: float
    boxes: dict[str, np.ndarray | None]  # photo key -> N x 4 boxes; None when the photo failed
    load: dict
    settings: dict
    tries: dict  # the wait for a quiet machine and the tries (``least_disturbed``)

    def count(self, key: str) -> int | None:
        boxes = self.boxes[key]
        return None if boxes is None else len(boxes)


def load_photos(data: Path) -> list[Photo]:
    sets = json.loads((data / "labels.json").read_text())["sets"]
    return [
        Photo(set_name, name, data / set_name / name, label["faces"], (data / set_name / name).read_bytes())
        for set_name, photo_set in sets.items()
        for name, label in photo_set["photos"].items()
    ]


def run_facesearch(
    photos: list[Photo], settings: DetectorSettings, batch_size: int, repeat: int, meter: LoadMeter
) -> Run:
    server = BackgroundServer(build_server(settings))
    used = settings_of(server.server.settings)
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    try:
        with grpc.insecure_channel(server.address, options=options) as channel:
            stub = detector_pb2_grpc.DetectorStub(channel)
            smallest = min(photos, key=lambda p: len(p.content))
            detect_batch(stub, [smallest])  # warm-up, not timed

            def once() -> dict:
                boxes: dict[str, np.ndarray | None] = {}
                quiet = meter.settle()
                before = meter.reading()
                start = time.perf_counter()
                batches = [photos[i : i + batch_size] for _ in range(repeat) for i in range(0, len(photos), batch_size)]
                with ThreadPoolExecutor(max_workers=settings.workers) as calls:
                    for found in calls.map(lambda batch: detect_batch(stub, batch), batches):
                        boxes.update(found)
                seconds = time.perf_counter() - start
                return {
                    "seconds": seconds,
                    "boxes": boxes,
                    "load": meter.usage(before, meter.reading()),
                    "quiet": quiet,
                }

            kept = least_disturbed(meter, once)
    finally:
        server.stop(0)
    return Run(kept["seconds"], kept["boxes"], kept["load"], {**used, "detect_batch_size": batch_size}, kept)


def detect_batch(stub: detector_pb2_grpc.DetectorStub, photos: list[Photo]) -> dict[str, np.ndarray | None]:
    images = [common_pb2.Image(content=p.content, uri=p.key) for p in photos]
    response = stub.DetectBatch(detector_pb2.DetectBatchRequest(images=images), timeout=600)
    found: dict[str, np.ndarray | None] = {}
    for photo, item in zip(photos, response.items, strict=True):
        if item.HasField("error"):
            print(f"  facesearch: {photo.key}: {item.error.message}")
            found[photo.key] = None
        else:
            faces = item.detection.faces
            found[photo.key] = np.array([[f.box.x_min, f.box.y_min, f.box.x_max, f.box.y_max] for f in faces]).reshape(
                -1, 4
            )
    return found


def run_naive(photos: list[Photo], threads: int, confidence: float, repeat: int, meter: LoadMeter) -> Run:
    """What a user would write: MTCNN on each full-size photo, one at a time."""
    from facenet_pytorch import MTCNN
    from PIL import Image, ImageOps

    torch.set_num_threads(threads)
    mtcnn = MTCNN(keep_all=True, device="cpu")

    def detect(path: Path) -> np.ndarray:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        boxes, probs = mtcnn.detect(image)
        if boxes is None:
            return np.zeros((0, 4))
        return np.asarray(boxes, dtype=float)[np.asarray(probs, dtype=float) >= confidence]

    detect(min(photos, key=lambda p: len(p.content)).path)  # warm-up, not timed

    def once() -> dict:
        boxes: dict[str, np.ndarray | None] = {}
        quiet = meter.settle()
        before = meter.reading()
        start = time.perf_counter()
        for _ in range(repeat):
            for photo in photos:
                boxes[photo.key] = detect(photo.path)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "boxes": boxes, "load": meter.usage(before, meter.reading()), "quiet": quiet}

    kept = least_disturbed(meter, once)
    settings = {"mtcnn": "MTCNN(keep_all=True, device='cpu')", "torch_threads": threads, "min_probability": confidence}
    return Run(kept["seconds"], kept["boxes"], kept["load"], settings, kept)


def same_faces(a: np.ndarray | None, b: np.ndarray | None) -> int:
    """How many boxes of ``a`` have a one-to-one partner in ``b`` with IoU >= SAME_FACE_IOU."""
    if a is None or b is None or not len(a) or not len(b):
        return 0
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou = inter / (area_a[:, None] + area_b[None, :] - inter)
    matched = 0
    while iou.size and iou.max() >= SAME_FACE_IOU:
        i, j = np.unravel_index(iou.argmax(), iou.shape)
        iou[i, :] = iou[:, j] = -1
        matched += 1
    return matched


def summarize(
    photos: list[Photo],
    fast: Run,
    naive: Run,
    args: argparse.Namespace,
    confidence: float,
    load: dict,
    quiet_percent: float | None,
) -> dict:
    n = len(photos) * args.repeat
    per_photo = [
        {
            "photo": p.key,
            "labelled": p.labelled_faces,
            "facesearch": fast.count(p.key),
            "naive": naive.count(p.key),
            "same_boxes": same_faces(fast.boxes[p.key], naive.boxes[p.key]),
        }
        for p in photos
    ]
    same_count = sum(r["facesearch"] == r["naive"] for r in per_photo)
    no_worse = sum(found_as_well(r) for r in per_photo)
    speedup = (n / fast.seconds) / (n / naive.seconds)
    return {
        "benchmark": NAME,
        "command": " ".join(["python -m bench.detector_throughput", *sys.argv[1:]]),
        "photos": len(photos),
        "repeat": args.repeat,
        "photos_timed": n,
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "quiet_percent": quiet_percent,
        "confidence": confidence,
        "labelled_faces": sum(p.labelled_faces for p in photos),
        "facesearch": way_summary(fast, per_photo, "facesearch", n),
        "naive": way_summary(naive, per_photo, "naive", n),
        "photos_same_count_facesearch_vs_naive": same_count,
        "faces_same_box_facesearch_vs_naive": sum(r["same_boxes"] for r in per_photo),
        "speedup": round(speedup, 2),
        "photos_facesearch_as_close_to_labels_as_naive": no_worse,
        "target": f">= {TARGET_SPEEDUP}x photos/s with the same faces found: on no photo is the "
        "facesearch count further from labels.json than the naive count",
        "target_met": speedup >= TARGET_SPEEDUP and no_worse == len(photos),
        "facesearch_settings": fast.settings,
        "naive_settings": naive.settings,
        "load": load,
        "machine": machine_facts(["torch", "facenet-pytorch", "numpy", "grpcio"]),
        "per_photo": per_photo,
    }


def found_as_well(row: dict) -> bool:
    """The facesearch count is at least as close to the label as the naive count."""
    if row["facesearch"] is None:
        return False
    if row["naive"] is None:
        return True
    return abs(row["facesearch"] - row["labelled"]) <= abs(row["naive"] - row["labelled"])


def way_summary(run: Run, per_photo: list[dict], way: str, n: int) -> dict:
    return {
        "load": run.load,
        "quiet": run.tries["quiet"],
        "attempts": run.tries["attempts"],
        "seconds": round(run.seconds, 2),
        "photos_per_s": round(n / run.seconds, 3),
        "faces_found": sum(r[way] or 0 for r in per_photo),
        "photos_failed": sum(r[way] is None for r in per_photo),
        "photos_matching_labels": sum(r[way] == r["labelled"] for r in per_photo),
    }


def markdown(result: dict) -> str:
    fast, naive, m = result["facesearch"], result["naive"], result["machine"]
    photos = result["photos"]
    d = result["facesearch_settings"]
    lines = [
        "# Detector throughput",
        "",
        machine_line(m),
        "",
        load_line(result["load"]),
        "",
        quiet_remark([fast, naive], result.get("quiet_percent")),
        "",
        f"- {phase_line('facesearch', fast['load'])}.",
        f"- {phase_line('naive', naive['load'])}.",
        "",
        f"Command: `{result['command']}`. {photos} photos x {result['repeat']} pass(es), "
        f"{result['torch_threads']} torch threads for the naive way. The detector as its server ran: backend "
        f"{d['backend']} on {d['device']}, torch_threads {d['torch_threads']}, workers {d['workers']}, max_side "
        f"{d['max_side']}, min_confidence {d['min_confidence']}, retry_confidences {d['retry_confidences']}, "
        f"min_face_size {d['min_face_size']}; DetectBatch of {d['detect_batch_size']} photos, "
        f"{d['workers']} calls in flight.",
        "",
        "| way | seconds | photos/s | faces found | photos matching labels |",
        "|---|---:|---:|---:|---:|",
        f"| facesearch (gRPC DetectBatch, batch {result['batch_size']}) | {fast['seconds']} | "
        f"{fast['photos_per_s']} | {fast['faces_found']} | {fast['photos_matching_labels']}/{photos} |",
        f"| naive MTCNN, full size, p >= {result['confidence']} | {naive['seconds']} | "
        f"{naive['photos_per_s']} | {naive['faces_found']} | {naive['photos_matching_labels']}/{photos} |",
        "",
        f"Labelled faces: {result['labelled_faces']}. Photos where both ways found the same number "
        f"of faces: {result['photos_same_count_facesearch_vs_naive']}/{photos}; faces both found at "
        f"the same place (IoU >= {SAME_FACE_IOU}): {result['faces_same_box_facesearch_vs_naive']}; "
        f"photos where facesearch is as close to the labels as naive: "
        f"{result['photos_facesearch_as_close_to_labels_as_naive']}/{photos}.",
        "",
        f"**Speed-up: {result['speedup']}x.** Target {result['target']}: "
        f"**{'met' if result['target_met'] else 'not met'}**.",
        "",
        "Photos where the counts differ (labelled / facesearch / naive):",
        "",
    ]
    differing = [r for r in result["per_photo"] if len({r["labelled"], r["facesearch"], r["naive"]}) > 1]
    lines += [f"- {r['photo']}: {r['labelled']} / {r['facesearch']} / {r['naive']}" for r in differing]
    if not differing:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--batch-size", type=int, default=8, help="photos per DetectBatch call")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the naive way")
    parser.add_argument(
        "--detector-threads", type=int, help="torch threads of each detector worker (default: the detector's own)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="passes over the photo set")
    parser.add_argument("--workers", type=int, default=2, help="detections the server runs at the same time")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    add_quiet_options(parser, wait_s=30.0)
    parser.add_argument("--render", type=Path, help="only rewrite the markdown beside this results JSON file")
    args = parser.parse_args()

    if args.render:
        print(f"rewrote {render_again(args.render, markdown)}")
        return

    meter = meter_for(args)
    photos = load_photos(args.data)
    threads = {} if args.detector_threads is None else {"torch_threads": args.detector_threads}
    settings = DetectorSettings(port=0, workers=args.workers, **threads)
    print(f"{len(photos)} photos from {args.data}, {args.repeat} pass(es), {args.threads} torch threads")
    fast = run_facesearch(photos, settings, args.batch_size, args.repeat, meter)
    print(f"facesearch: {fast.seconds:.1f} s")
    naive = run_naive(photos, args.threads, settings.min_confidence, args.repeat, meter)
    print(f"naive:      {naive.seconds:.1f} s")
    load = meter.summary()
    meter.stop()

    result = summarize(photos, fast, naive, args, settings.min_confidence, load, meter.quiet_percent)
    json_path, md_path = write_results(args.out, NAME, result, markdown)
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
