"""Photos stored sideways or upside down without an EXIF orientation: faces found per rotation,
with the detector's turns (``try_rotations``) and without them, and what the turns cost.

Every photo of the data folder's labels.json is turned clockwise by 0, 90, 180 and 270 degrees
and encoded again without EXIF (JPEG quality 95, or PNG for a photo that is not a JPEG), then
detected in this process by the detector's own logic (``FaceDetector``, MTCNN, default
settings, batches of ``--batch-size`` photos), once with ``try_rotations`` on (the default) and
once off (the behaviour before). Per rotation: the photos whose face count matches their label,
the faces found against the faces labelled (one-face and group photos), the faces found in the
photos without people, and the faces found in the turn that undoes the rotation. The photos
without people are then timed alone, each ``--repeat`` times, both ways: the extra time of the
three turned passes a photo with no face costs. Last, through the served embedding model
(``InProcessEmbedder``, the ``model.onnx`` Triton serves), the cosine between the largest face
of each one-face photo upright and turned, both ways, against the gateway's match threshold.
Results: bench/results/rotated_photos.{json,md}.

    python -m bench.rotated_photos [--data ../shared/data] [--models var/models] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.report import DEFAULT_DATA, REPO, RESULTS, LoadMeter, heading, machine_facts, settings_of, write_results
from gateway.settings import DEFAULT_THRESHOLDS
from launcher.in_process import prepare_model_repository
from services.detector.backends import create_backend
from services.detector.backends.base import FaceDetectorBackend
from services.detector.detection import Detection, FaceDetector
from services.detector.images import ImageLimits, decode_image
from services.detector.settings import DetectorSettings
from services.embedder.client.in_process import InProcessEmbedder

NAME = "rotated_photos"
ROTATIONS = (0, 90, 180, 270)  # degrees clockwise the photo is turned before it is encoded
WAYS = {"turns": True, "no turns": False}  # try_rotations


@dataclass(frozen=True)
class Photo:
    key: str
    path: Path
    labelled_faces: int

    def turned(self, degrees: int) -> bytes:
        """The photo (after its own EXIF orientation) turned clockwise by ``degrees``, encoded
        again without EXIF: JPEG quality 95 for a JPEG, PNG for any other."""
        with Image.open(self.path) as opened:
            jpeg = opened.format in ("JPEG", "MPO")
            image = ImageOps.exif_transpose(opened)
            image = image.convert("L" if image.mode in ("1", "L", "I;16") else "RGB")
        if degrees:
            image = image.rotate(-degrees, expand=True)
        buffer = io.BytesIO()
        if jpeg:
            image.save(buffer, "JPEG", quality=95)
        else:
            image.save(buffer, "PNG")
        return buffer.getvalue()


def load_photos(data: Path) -> list[Photo]:
    sets = json.loads((data / "labels.json").read_text())["sets"]
    return [
        Photo(f"{set_name}/{name}", data / set_name / name, label["faces"])
        for set_name, photo_set in sets.items()
        for name, label in photo_set["photos"].items()
    ]


def detect_all(
    detector: FaceDetector, photos: list[Photo], degrees: int, batch_size: int
) -> tuple[list[Detection], float]:
    """Every photo turned by ``degrees``, detected in batches; the detections and the seconds the
    detection took (decoding included, encoding not)."""
    settings = detector.settings
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    encoded = [photo.turned(degrees) for photo in photos]
    detections: list[Detection] = []
    start = time.perf_counter()
    for first in range(0, len(encoded), batch_size):
        images = [decode_image(c, limits, min_side=settings.max_side) for c in encoded[first : first + batch_size]]
        detections += detector.detect(images, detector.default_options())
    return detections, time.perf_counter() - start


def count_row(photos: list[Photo], detections: list[Detection], degrees: int) -> dict:
    people = [(p, d) for p, d in zip(photos, detections, strict=True) if p.labelled_faces]
    empty = [(p, d) for p, d in zip(photos, detections, strict=True) if not p.labelled_faces]
    return {
        "photos_matching_labels": sum(len(d.faces) == p.labelled_faces for p, d in zip(photos, detections)),
        "photos": len(photos),
        "faces_labelled": sum(p.labelled_faces for p, _ in people),
        "faces_found": sum(len(d.faces) for _, d in people),
        "photos_with_people_none_found": sum(not d.faces for _, d in people),
        "faces_found_without_people": sum(len(d.faces) for _, d in empty),
        "faces_found_upright": sum(f.rotation == degrees for _, d in people for f in d.faces),
        "photos_failed": sum(d.error is not None for d in detections),
        "per_photo": {p.key: [len(d.faces), sorted({f.rotation for f in d.faces})] for p, d in zip(photos, detections)},
    }


class CountingBackend(FaceDetectorBackend):
    """A backend that counts its passes (calls) and the images they take."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.name = backend.name
        self.passes = self.images = 0

    def load(self) -> None:
        pass

    def detect(self, images, min_face_size, min_confidence):
        self.passes += 1
        self.images += len(images)
        return self.backend.detect(images, min_face_size, min_confidence)


def time_empty(detectors: dict[str, FaceDetector], photos: list[Photo], repeat: int) -> dict:
    """Each photo without people detected alone at its own orientation by every way in turn,
    ``repeat`` times: per way the backend passes a photo takes, and the median over the photos
    of each photo's fastest run (the ways interleaved, so a busy moment of the machine slows
    both alike)."""
    settings = next(iter(detectors.values())).settings
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    images = [decode_image(p.turned(0), limits, min_side=settings.max_side) for p in photos]
    fastest: dict[str, list[float]] = {way: [] for way in detectors}
    passes: dict[str, int] = {}
    for image in images:
        runs: dict[str, list[float]] = {way: [] for way in detectors}
        for _ in range(repeat):
            for way, detector in detectors.items():
                start = time.perf_counter()
                detector.detect([image], detector.default_options())
                runs[way].append(time.perf_counter() - start)
        for way in detectors:
            fastest[way].append(min(runs[way]))
    for way, detector in detectors.items():
        counter = CountingBackend(detector.backend)
        counted = FaceDetector(counter, detector.settings)
        for image in images:
            counted.detect([image], counted.default_options())
        passes[way] = counter.passes
    return {
        way: {
            "photos": len(images),
            "repeat": repeat,
            "passes_per_photo": passes[way] / len(images),
            "median_fastest_s": float(np.median(fastest[way])),
            "per_photo_fastest_s": fastest[way],
        }
        for way in detectors
    }


def largest_crop(detection: Detection) -> np.ndarray | None:
    faces = [f for f in detection.faces if f.crop is not None]
    return max(faces, key=lambda f: f.size).crop if faces else None


def similarities(
    embedder: InProcessEmbedder, photos: list[Photo], upright: list[Detection], turned: list[Detection]
) -> list[float | None]:
    """Per one-face photo: the cosine between its largest face upright and turned (None when
    either has no face)."""
    pairs = [
        (largest_crop(a), largest_crop(b))
        for p, a, b in zip(photos, upright, turned, strict=True)
        if p.labelled_faces == 1
    ]
    both = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not both:
        return [None] * len(pairs)
    vectors = asyncio.run(embedder.embed(np.stack([c for pair in both for c in pair]))).vectors
    cosines = iter(float(vectors[2 * i] @ vectors[2 * i + 1]) for i in range(len(both)))
    return [None if a is None or b is None else next(cosines) for a, b in pairs]


def similarity_summary(cosines: list[float | None], threshold: float) -> dict:
    values = [c for c in cosines if c is not None]
    return {
        "photos": len(cosines),
        "with_faces_both": len(values),
        "median": float(np.median(values)) if values else None,
        "mean": float(np.mean(values)) if values else None,
        "matching": sum(c >= threshold for c in values),
    }


def run(data: Path, models: Path, batch_size: int, repeat: int) -> dict:
    photos = load_photos(data)
    empty = [p for p in photos if not p.labelled_faces]
    base = DetectorSettings()
    backend = create_backend(base)
    backend.load()
    embedder_settings = prepare_model_repository(models)
    embedder = InProcessEmbedder(embedder_settings)
    threshold = DEFAULT_THRESHOLDS[embedder_settings.model_id]
    result: dict = {"photos": len(photos), "photos_without_people": len(empty), "batch_size": batch_size, "ways": {}}
    detectors = {
        way: FaceDetector(backend, base.model_copy(update={"try_rotations": turns})) for way, turns in WAYS.items()
    }
    detect_all(detectors["no turns"], photos[:1], 0, 1)  # warm-up, not counted
    for way, detector in detectors.items():
        settings = detector.settings
        rows, embedding = {}, {}
        for degrees in ROTATIONS:
            detections, seconds = detect_all(detector, photos, degrees, batch_size)
            rows[str(degrees)] = {**count_row(photos, detections, degrees), "seconds": round(seconds, 2)}
            if degrees == 0:
                upright = detections
            else:
                cosines = similarities(embedder, photos, upright, detections)
                embedding[str(degrees)] = similarity_summary(cosines, threshold)
            shown = {k: v for k, v in rows[str(degrees)].items() if k != "per_photo"}
            print(f"{way}, {degrees} degrees: {json.dumps(shown)}", flush=True)
        result["ways"][way] = {
            "settings": settings_of(settings),
            "rotations": rows,
            "same_face_upright_and_turned": embedding,
        }
    timed = time_empty(detectors, empty, repeat)
    for way in WAYS:
        result["ways"][way]["photos_without_people_alone"] = timed[way]
    on, off = (timed[way]["median_fastest_s"] for way in WAYS)
    result["extra_s_per_photo_without_people"] = round(on - off, 4)
    result["model"] = embedder_settings.model_id
    result["threshold"] = threshold
    return result


def markdown(result: dict) -> str:
    ways = result["ways"]
    lines = [
        *heading("Photos turned without EXIF: faces found with and without the detector's turns", result),
        f"Command: `{result['command']}`. The {result['photos']} labelled photos of {result['data']} turned clockwise "
        "by each angle and encoded again without EXIF (JPEG quality 95; PNG for the others), detected in this "
        f"process by `FaceDetector` (MTCNN, default settings, batches of {result['batch_size']}), with "
        "`try_rotations` on (turns) and off (no turns, as before). Faces found and labelled are those of the "
        f"photos with people; 'without people' are the faces found in the {result['photos_without_people']} photos "
        "labelled with none; 'upright' the faces found in the turn that undoes the photo's rotation.",
        "",
        "| way | rotation | photos matching labels | faces found / labelled | photos with people, none found "
        "| faces found without people | faces found upright | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for way, data in ways.items():
        for degrees, row in data["rotations"].items():
            lines.append(
                f"| {way} | {degrees} | {row['photos_matching_labels']}/{row['photos']} | {row['faces_found']} / "
                f"{row['faces_labelled']} | {row['photos_with_people_none_found']} | "
                f"{row['faces_found_without_people']} | {row['faces_found_upright']} | {row['seconds']} |"
            )
    timed = [(way, data["photos_without_people_alone"]) for way, data in ways.items()]
    lines += [
        "",
        f"Photos without people, each detected alone at its own orientation, {timed[0][1]['repeat']} runs a way, "
        "the ways interleaved (median over the photos of each photo's fastest run): "
        + ", ".join(
            f"{way}: {t['passes_per_photo']:g} model passes, {t['median_fastest_s'] * 1000:.0f} ms a photo"
            for way, t in timed
        )
        + f"; the turns cost {result['extra_s_per_photo_without_people'] * 1000:.0f} ms more a photo.",
        "",
        f"The same face upright and turned, through {result['model']} (cosine of the largest face of each one-face "
        f"photo; matching: at least the gateway's threshold {result['threshold']}):",
        "",
        "| way | rotation | photos with a face both ways | median cosine | matching |",
        "|---|---:|---:|---:|---:|",
    ]
    for way, data in ways.items():
        for degrees, s in data["same_face_upright_and_turned"].items():
            median = "-" if s["median"] is None else f"{s['median']:.3f}"
            both, matching = f"{s['with_faces_both']}/{s['photos']}", f"{s['matching']}/{s['photos']}"
            lines.append(f"| {way} | {degrees} | {both} | {median} | {matching} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--models", type=Path, default=REPO / "var" / "models", help="model repository")
    parser.add_argument("--batch-size", type=int, default=8, help="photos per detector call")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each photo without people, timed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()
    meter = LoadMeter()
    meter.start()
    result = run(args.data, args.models, args.batch_size, args.repeat)
    result["load"] = meter.summary()
    meter.stop()
    result["data"] = str(args.data)
    result["command"] = " ".join(["python -m bench.rotated_photos", *sys.argv[1:]])
    result["machine"] = machine_facts(["torch", "facenet-pytorch", "onnxruntime", "numpy"])
    _, md_path = write_results(args.out, NAME, result, markdown)
    print(md_path.read_text())


if __name__ == "__main__":
    main()
