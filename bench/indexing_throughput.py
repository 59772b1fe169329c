"""Indexing throughput end to end: IndexPhotos photos/s and faces/s for each detector backend
and embedding model, against the naive script on the same photos in the same run.

For each chosen embedding model (``--embedding-models``: facenet-casia, dlib-resnet) one real
Triton serves it (the ``--embedder-flavour`` of var/models or var/models-dlib: onnx-python, as
``launcher.in_process.prepare_model_repository`` prepares it, or torch-cuda-python on
``--embedder-device``), shared by every backend; for each
chosen detector variant (``--backends``: mtcnn, blazeface, cascade, and cascade-large-faces, the
cascade with ``cascade_large_face`` 0.25) a fresh suite
(``launcher.in_process.LocalSuite``: detector, search on the edge store, gateway, in this
process) runs with the detector set to that backend and to that model's crops, the project's
defaults otherwise (the gateway's deadline for a call raised, so that a long stream is not
cut off). What each part runs with is read back from it (``bench.gateway_end_to_end``'s
``running_configuration``). On each suite, each as one ``FaceSearchClient.index`` stream:

- ``shared``: the labelled photos of labels.json, each once, as the files are;
- ``large``: ``--copies`` copies of each labelled photo, re-encoded as JPEG (EXIF orientation
  applied, scaled and at a quality that vary from copy to copy, a comment naming the copy:
  distinct bytes, so the gateway's duplicate skipping does not apply), made once into a
  temporary folder before anything is timed and read from it as the stream goes.

Figures: photos/s and faces/s (faces stored), and the faces stored per photo against
labels.json: faces found (at most the labelled count), missed and extra, photos whose count
is the label's and photos with every labelled face found (a copy counts as its photo; photos
whose label carries a note where detectors are known to struggle count like any other, their
misses are measured misses and are listed with the note).

The naive script is ``bench.gateway_end_to_end``'s (facenet-pytorch MTCNN + FaceNet CASIA,
one photo at a time, on the CPU with ``--threads`` threads; it does not depend on the
backend or the model), run once per photo set after the suites have stopped: on the whole
shared set, and on ``--naive-sample`` photos of the large set (each labelled photo once, the
copies taken in turn), its photos/s standing for the whole large set. Every row's speed-up
is its photos/s over the naive photos/s of the same set; the target is 15x.

Model loading and one warm-up photo per suite are not timed. The machine's load is measured
over the run and over each timed part (``bench.report.LoadMeter``); before each timed part
the benchmark waits (``--quiet-wait-s`` at most) until other processes use at most
``--quiet-percent`` of the CPU, and a part they disturbed anyway is measured again
(``--attempts``, the stored photos deleted first; the least disturbed try counts). Results
go to bench/results/indexing_throughput.{json,md}.

    python -m bench.indexing_throughput [--copies 6] [--backends mtcnn,blazeface,cascade,cascade-large-faces]
        [--embedding-models facenet-casia,dlib-resnet] [--skip cascade/dlib-resnet,...]
        [--sets shared,large] [--naive-sample 158] [--detector-device cuda]
        [--embedder-flavour torch-cuda-python --embedder-device cuda]
    python -m bench.indexing_throughput --render bench/results/indexing_throughput.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from bench.gateway_end_to_end import (
    TENANT,
    BenchPhoto,
    Naive,
    configuration_lines,
    delete_indexed,
    index_through_gateway,
    load_photos,
    measured,
    others,
    running_configuration,
)
from bench.report import (
    DEFAULT_DATA,
    REPO,
    RESULTS,
    LoadMeter,
    add_quiet_options,
    load_line,
    machine_facts,
    machine_line,
    meter_for,
    others_percent,
    quiet_remark,
    render_again,
    write_results,
)
from launcher.in_process import KEYS, LocalSuite, prepare_model_repository
from sdk.client import FaceSearchClient
from services.embedder import models
from services.embedder.serving.provisioning import prepare_models
from services.embedder.serving.triton_server import TritonServer
from services.embedder.settings import EmbedderSettings

NAME = "indexing_throughput"
TARGET_SPEEDUP = 15.0  # facesearch photos/s over the naive script's, on the same photos
# Detector variants by name: the backend, and the settings beside the detector's defaults.
BACKENDS: dict[str, dict] = {
    "mtcnn": {"backend": "mtcnn"},
    "blazeface": {"backend": "blazeface"},
    "cascade": {"backend": "cascade"},
    # MTCNN also where every face BlazeFace finds is large: the setting that finds every labelled face.
    "cascade-large-faces": {"backend": "cascade", "cascade_large_face": 0.25},
}
EMBEDDING_MODELS = ("facenet-casia", "dlib-resnet")
SETS = ("shared", "large")
DEFAULT_COPIES = 6  # x 158 labelled photos: about a thousand photos
# Copy k of a photo is re-encoded with variant k % len: (JPEG quality, scale of each side).
COPY_VARIANTS = ((92, 1.0), (80, 0.9), (70, 0.8), (85, 0.75), (60, 0.9), (75, 1.0))
INDEX_TIMEOUT_S = 3600.0  # the gateway's deadline for an IndexPhotos stream that sets none


# --- the photos --------------------------------------------------------------------------------


def reencoded(content: bytes, copy: int) -> bytes:
    """Copy ``copy`` (1, 2, ...) of a photo: decoded, EXIF orientation applied, scaled and saved
    as a JPEG at the quality of its variant, with a comment naming the copy."""
    quality, scale = COPY_VARIANTS[(copy - 1) % len(COPY_VARIANTS)]
    with Image.open(io.BytesIO(content)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    if scale != 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, comment=f"facesearch bench copy {copy}".encode())
    return out.getvalue()


@dataclass(frozen=True)
class StoredPhoto:
    """A re-encoded copy kept in a file, as ``BenchPhoto`` (``key``, ``repeat``: the copy), its
    bytes read when the stream sends it."""

    key: str
    repeat: int
    path: Path

    @property
    def content(self) -> bytes:
        return self.path.read_bytes()

    @property
    def photo_id(self) -> str:
        return BenchPhoto(self.key, self.repeat, b"").photo_id

    def in_memory(self) -> BenchPhoto:
        return BenchPhoto(self.key, self.repeat, self.content)

    def message(self):
        return self.in_memory().message()


def make_large_set(photos: list[BenchPhoto], copies: int, folder: Path) -> list[StoredPhoto]:
    """``copies`` re-encoded copies of each photo written into ``folder``, copy by copy (every
    photo's first copy, then every photo's second ...), their ids ``<key>#<copy>``."""
    made = []
    for copy in range(1, copies + 1):
        for i, photo in enumerate(photos):
            path = folder / f"{copy:02d}-{i:04d}.jpg"
            path.write_bytes(reencoded(photo.content, copy))
            made.append(StoredPhoto(photo.key, copy, path))
    return made


def naive_sample(large: list[BenchPhoto], distinct: int, size: int) -> list[BenchPhoto]:
    """``size`` photos of the large set (``distinct`` photos, copy by copy): each photo once, a
    different copy from one photo to the next, then each photo again with its next copy."""
    copies = len(large) // distinct
    return [
        large[((i % copies + i // distinct) % copies) * distinct + i % distinct] for i in range(min(size, len(large)))
    ]


def describe_copies(large: list[StoredPhoto]) -> dict:
    sizes = [p.path.stat().st_size for p in large]
    return {
        "photos": len(large),
        "bytes": sum(sizes),
        "distinct_sha256": len({hashlib.sha256(p.path.read_bytes()).hexdigest() for p in large}),
        "variants": [{"quality": q, "scale": s} for q, s in COPY_VARIANTS],
    }


# --- faces against labels.json ----------------------------------------------------------------


def against_labels(faces_by_photo: dict[str, int], sets: dict) -> dict:
    """Faces stored per photo (a copy counts as its photo) against labels.json's counts."""
    labels = {f"{s}/{name}": label for s, photo_set in sets.items() for name, label in photo_set["photos"].items()}
    totals = {"photos": 0, "labelled": 0, "found": 0, "missed": 0, "extra": 0, "exact": 0, "all_found": 0}
    wrong: dict[str, dict] = {}
    for photo_id, stored in faces_by_photo.items():
        key = photo_id.split("#")[0]
        label = labels[key]
        want = label["faces"]
        totals["photos"] += 1
        totals["labelled"] += want
        totals["found"] += min(stored, want)
        totals["missed"] += max(want - stored, 0)
        totals["extra"] += max(stored - want, 0)
        totals["exact"] += stored == want
        totals["all_found"] += stored >= want
        if stored != want:
            entry = wrong.setdefault(key, {"labelled": want, "stored": [], "note": label.get("note", "")})
            entry["stored"].append(stored)
    return {**totals, "differing": wrong}


# --- facesearch -------------------------------------------------------------------------------


def start_triton(model_id: str, args: argparse.Namespace, work: Path) -> tuple[TritonServer, EmbedderSettings]:
    """A Triton serving the model in ``--embedder-flavour``, and the onnx-python settings the
    suite takes (its model repository, weights and model id)."""
    weights = models.by_id(model_id).weights
    repository = args.model_root / ("models" if weights == "casia" else f"models-{weights}")
    embedder = prepare_model_repository(repository, weights=weights)
    if args.embedder_flavour != embedder.flavour:
        serving = EmbedderSettings(
            model_repository=repository,
            weights=weights,
            flavour=args.embedder_flavour,
            torch_device=args.embedder_device,
        )
        prepare_models(serving, flavours=[args.embedder_flavour])
    root = embedder.model_repository / args.embedder_flavour
    return TritonServer(root, work / f"triton-{model_id}", startup_timeout_s=180.0).start(), embedder


def run_suite(
    backend: str,
    embedder: EmbedderSettings,
    triton: TritonServer,
    photo_sets: dict[str, list[BenchPhoto]],
    labels: dict,
    args: argparse.Namespace,
    work: Path,
    meter: LoadMeter,
) -> dict:
    overrides = {**BACKENDS[backend], "embedding_model": embedder.model_id}
    if args.detector_device:
        overrides["device"] = args.detector_device
    suite = LocalSuite(work, embedder, triton=triton, detector_overrides=overrides, request_timeout_s=INDEX_TIMEOUT_S)
    try:
        configuration = running_configuration(suite)
        result = {"backend": backend, "model": embedder.model_id, "configuration": configuration, "sets": {}}
        with (
            FaceSearchClient(suite.address, KEYS[TENANT]) as client,
            FaceSearchClient(suite.address, KEYS["globex"]) as other,
        ):
            smallest = min(photo_sets["shared"], key=lambda p: len(p.content))
            list(other.index([smallest.message()]))  # warm-up (another tenant), not timed
            for name in args.sets:
                result["sets"][name] = index_set(client, photo_sets[name], labels, meter)
                print(f"  {backend} / {embedder.model_id}, {name}: {summary(result['sets'][name])}", flush=True)
    finally:
        suite.stop()
    return result


def index_set(client: FaceSearchClient, photos: list, labels: dict, meter: LoadMeter) -> dict:
    """One IndexPhotos stream over ``photos``, measured; its faces against the labels."""
    index = measured(meter, lambda: index_through_gateway(client, photos), lambda done: delete_indexed(client, done))
    index["labels"] = against_labels(index.pop("faces_by_photo"), labels)
    return index


def summary(index: dict) -> str:
    labels = index["labels"]
    return (
        f"{index['photos_per_s']} photos/s, {index['faces_per_s']} faces/s, {index['faces_stored']} faces "
        f"({labels['found']}/{labels['labelled']} labelled found, {labels['missed']} missed, {labels['extra']} "
        f"extra), others {others(index)} CPU"
    )


# --- the naive script -------------------------------------------------------------------------


def run_naive(photos: list[BenchPhoto], labels: dict, naive: Naive, meter: LoadMeter) -> dict:
    index = measured(meter, lambda: dict(zip(("seconds", "vectors", "ids"), naive.index(photos))))
    seconds, vectors, ids = index.pop("seconds"), index.pop("vectors"), index.pop("ids")
    counted = {p.photo_id: ids.count(p.photo_id) for p in photos}
    return {
        **index,
        "photos": len(photos),
        "seconds": round(seconds, 2),
        "photos_per_s": round(len(photos) / seconds, 2),
        "faces_stored": len(vectors),
        "faces_per_s": round(len(vectors) / seconds, 2),
        "labels": against_labels(counted, labels),
    }


# --- the run ----------------------------------------------------------------------------------


def combinations(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(backend, model) pairs, model by model, without those ``--skip`` names."""
    return [(b, m) for m in args.embedding_models for b in args.backends if f"{b}/{m}" not in args.skip]


def run(args: argparse.Namespace, meter: LoadMeter) -> dict:
    shared, sets = load_photos(args.data, args.photos)
    pairs = combinations(args)
    with tempfile.TemporaryDirectory(prefix="facesearch-indexing-") as temporary:
        work = Path(temporary)
        folder = work / "large"
        folder.mkdir()
        began = time.perf_counter()
        large = make_large_set(shared, args.copies, folder) if "large" in args.sets else []
        copies = {**describe_copies(large), "seconds": round(time.perf_counter() - began, 1)} if large else {}
        if large:
            print(f"large set: {copies['photos']} photos, {copies['bytes'] / 2**20:.0f} MiB, in {copies['seconds']} s")
        photo_sets = {"shared": shared, "large": large}
        rows = []
        for model_id in dict.fromkeys(m for _, m in pairs):
            triton, embedder = start_triton(model_id, args, work)
            try:
                for backend, _ in (p for p in pairs if p[1] == model_id):
                    print(f"{backend} / {model_id}: starting the suite", flush=True)
                    rows.append(
                        run_suite(
                            backend, embedder, triton, photo_sets, sets, args, work / f"{backend}-{model_id}", meter
                        )
                    )
            finally:
                triton.stop()
        naive_runs = {}
        if args.naive_sample:
            naive = Naive(args.threads)
            for name in args.sets:
                photos = shared if name == "shared" else naive_sample(large, len(shared), args.naive_sample)
                naive_runs[name] = run_naive(photos, sets, naive, meter)
                print(f"naive, {name} ({len(photos)} photos): {summary(naive_runs[name])}", flush=True)
    for row in rows:
        for name, index in row["sets"].items():
            if name in naive_runs:
                base = naive_runs[name]
                index["speedup_photos"] = round(index["photos_per_s"] / base["photos_per_s"], 2)
                index["speedup_faces"] = round(index["faces_per_s"] / base["faces_per_s"], 2)
                index["target_met"] = index["speedup_photos"] >= TARGET_SPEEDUP
    return {"rows": rows, "naive": naive_runs, "copies": copies, "distinct_photos": len(shared)}


def csv_of(choices: Iterable[str]):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in values if v not in choices]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: comma-separated, of {', '.join(choices)}")
        return list(dict.fromkeys(values))

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--backends", type=csv_of(BACKENDS), default=list(BACKENDS), help="detector backends")
    parser.add_argument(
        "--embedding-models", type=csv_of(EMBEDDING_MODELS), default=list(EMBEDDING_MODELS), help="embedding models"
    )
    parser.add_argument(
        "--skip",
        type=lambda text: [v.strip() for v in text.split(",") if v.strip()],
        default=[],
        help="BACKEND/MODEL pairs left out, comma-separated",
    )
    parser.add_argument("--sets", type=csv_of(SETS), default=list(SETS), help="photo sets indexed")
    parser.add_argument("--photos", type=int, help="only the first N labelled photos (quick checks; default all)")
    parser.add_argument("--copies", type=int, default=DEFAULT_COPIES, help="re-encoded copies of each photo (large)")
    parser.add_argument(
        "--naive-sample", type=int, default=158, help="photos of the large set the naive script runs on (0: no naive)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the naive script")
    parser.add_argument(
        "--detector-device", help="the detector's torch device (default: its settings', FACESEARCH_DETECTOR_DEVICE)"
    )
    parser.add_argument(
        "--embedder-flavour",
        choices=["onnx-python", "torch-cuda-python"],
        default="onnx-python",
        help="the flavour Triton serves",
    )
    parser.add_argument("--embedder-device", choices=["cuda", "cpu"], default="cuda", help="torch-cuda-python's device")
    parser.add_argument("--model-root", type=Path, default=REPO / "var", help="holds models/ and models-dlib/")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    add_quiet_options(parser, wait_s=30.0)
    parser.add_argument("--render", type=Path, help="only rewrite the markdown beside this results JSON file")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.render:
        return args
    known = {f"{b}/{m}" for b in BACKENDS for m in EMBEDDING_MODELS}
    if unknown := [s for s in args.skip if s not in known]:
        parser.error(f"--skip: unknown pairs {', '.join(unknown)} (BACKEND/MODEL)")
    if args.copies < 1:
        parser.error("--copies must be at least 1")
    if not combinations(args):
        parser.error("nothing left to run")
    return args


# --- results ----------------------------------------------------------------------------------


def cpu_ms_per_photo(index: dict, cores: int) -> str:
    """CPU milliseconds this benchmark's processes spent on each photo of a timed part."""
    share = index.get("load", {}).get("cpu_percent", {}).get("this_benchmark")
    photos = index["photos_per_s"] * index["seconds"]
    if share is None or not photos:
        return "-"
    return f"{share / 100 * cores * index['load']['seconds'] * 1000 / photos:.0f}"


def busy(index: dict) -> str:
    share = index.get("load", {}).get("cpu_percent", {}).get("this_benchmark")
    return "-" if share is None else f"{share:.1f}%"


def cpu_budget_lines(r: dict, cores: int) -> list[str]:
    """What the target asks of the CPU: the CPU time a photo may take at the target photos/s, beside
    what the fastest row on the shared set took."""
    naive = r["naive"].get("shared")
    rows = [(row, row["sets"]["shared"]) for row in r["rows"] if "shared" in row["sets"]]
    if not naive or not rows:
        return []
    target = TARGET_SPEEDUP * naive["photos_per_s"]
    budget = cores * 1000 / target
    row, fastest = max(rows, key=lambda pair: pair[1]["photos_per_s"])
    return [
        f"What the target asks of this machine: {TARGET_SPEEDUP:g}x the naive script's {naive['photos_per_s']} "
        f"photos/s on the shared set is {target:.1f} photos/s, so its {cores} cores could spend at most "
        f"{budget:.0f} ms of CPU time on each photo, for decoding, detecting, cropping, embedding and storing it. "
        f"The fastest row ({row['backend']} / {row['model']}, {fastest['photos_per_s']} photos/s) spent "
        f"{cpu_ms_per_photo(fastest, cores)} ms a photo with this benchmark's processes keeping the CPU "
        f"{busy(fastest)} busy: what is left between the target and it is CPU time, not waiting.",
        "",
    ]


def markdown(r: dict) -> str:
    s, naive = r["settings"], r["naive"]
    sets_named = {
        "shared": f"shared ({r['distinct_photos']} photos)",
        "large": f"large ({r['copies'].get('photos', 0)} photos)",
    }
    timed = [index for row in r["rows"] for index in row["sets"].values()] + list(naive.values())
    cores = r["machine"]["cpu_count"]
    lines = [
        "# Indexing throughput: IndexPhotos per detector backend and embedding model against the naive script",
        "",
        machine_line(r["machine"]),
        "",
        load_line(r["load"]) + " The table gives each timed part's share of other processes.",
        "",
        quiet_remark(timed, s.get("quiet_percent")),
        "",
        f"Command: `{r['command']}`.",
        "",
        f"Target: facesearch photos/s at least {TARGET_SPEEDUP:g}x the naive script's on the same photos.",
        "",
        "| backend | model | photos | facesearch photos/s | faces/s | seconds | naive photos/s | speed-up "
        f"(photos/s) | {TARGET_SPEEDUP:g}x met | faces/s speed-up | labelled faces found | missed | extra | "
        "photos exact / all faces found | CPU ms a photo | this benchmark % CPU | others % CPU |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        for name, index in row["sets"].items():
            labels = index["labels"]
            base = naive.get(name)
            lines.append(
                f"| {row['backend']} | {row['model']} | {sets_named[name]} | **{index['photos_per_s']}** | "
                f"{index['faces_per_s']} | {index['seconds']} | {base['photos_per_s'] if base else 'not run'} | "
                f"**{times(index.get('speedup_photos'))}** | {yes_no(index.get('target_met'))} | "
                f"{times(index.get('speedup_faces'))} | {labels['found']}/{labels['labelled']} | {labels['missed']} "
                f"| {labels['extra']} | {labels['exact']} / {labels['all_found']} of {labels['photos']} | "
                f"{cpu_ms_per_photo(index, cores)} | {busy(index)} | {others(index)} |"
            )
    for name, index in naive.items():
        labels = index["labels"]
        lines.append(
            f"| naive script | facenet-casia | {sets_named[name]}"
            + (f", run on {index['photos']}" if name == "large" else "")
            + f" | {index['photos_per_s']} | {index['faces_per_s']} | {index['seconds']} | | | | | "
            f"{labels['found']}/{labels['labelled']} | {labels['missed']} | {labels['extra']} | {labels['exact']} / "
            f"{labels['all_found']} of {labels['photos']} | {cpu_ms_per_photo(index, cores)} | {busy(index)} | "
            f"{others(index)} |"
        )
    copies = r["copies"]
    lines += [
        "",
        "Speed-up: a row's photos/s (faces/s) over the naive script's on the same set. 'labelled faces found': "
        "faces stored, at most the labelled count per photo, against the labelled faces (a copy counts as its "
        "photo); 'missed' and 'extra': faces fewer and more than labelled; 'exact': photos whose count is the "
        "label's; 'all faces found': photos with at least the labelled count. 'others': the share of the "
        "machine's CPU time that processes other than this benchmark used during that part. 'CPU ms a photo': "
        "the CPU time this benchmark's processes (the suite and its Triton, or the naive script) used during the "
        "part, over its photos.",
        "",
        *cpu_budget_lines(r, cores),
        "Settings:",
        "",
        f"- Photo sets: shared = {r['distinct_photos']} photos of labels.json ({s['data']}), each once, as "
        "the files are"
        + (
            f"; large = {copies['copies']} re-encoded JPEG copies of each ({copies['photos']} photos, "
            f"{copies['bytes'] / 2**20:.0f} MiB, {copies['distinct_sha256']} distinct SHA-256; EXIF orientation "
            "applied, copy k with variant k of "
            + ", ".join(f"quality {v['quality']} at {v['scale']:g} x the sides" for v in copies["variants"])
            + ", in turn, and a comment naming the copy), made before anything was timed and read from a "
            "temporary folder as the stream sent them."
            if copies
            else "."
        ),
        f"- facesearch: per model one Triton serving the {s.get('embedder_flavour', 'onnx-python')} flavour"
        + (f" on {s['embedder_device']}" if s.get("embedder_flavour", "onnx-python") != "onnx-python" else "")
        + ", shared by the backends; per "
        "backend a fresh `launcher.in_process.LocalSuite` in this process (detector set to the backend and to "
        "the model's crops, defaults otherwise; the gateway's deadline for a call that sets none raised to "
        f"{INDEX_TIMEOUT_S:g} s); each set one `FaceSearchClient.index` stream after one warm-up photo of another "
        "tenant. Each suite as it ran (read back from its servers and from Triton):",
    ]
    for row in r["rows"]:
        lines.append(f"  - {row['backend']} / {row['model']}:")
        lines += [f"    {line}" for line in configuration_lines(row["configuration"])]
    lines += [
        f"- naive: `bench.gateway_end_to_end`'s naive script (facenet-pytorch `MTCNN(keep_all=True)` on each "
        "full-size photo, PIL decode with EXIF rotation, `InceptionResnetV1` with the CASIA weights on the "
        f"crops, vectors in numpy; one photo at a time on the CPU, torch.set_num_threads({s['threads']})), the "
        "same for every row, run after the suites stopped"
        + (
            f"; on the large set it ran on a sample of {naive['large']['photos']} photos (each labelled photo "
            "once, the copies taken in turn) and its photos/s stands for the whole set."
            if "large" in naive
            else "."
        ),
        "",
        "Photos whose faces stored differ from the label (labelled / facesearch stored, per copy; note):",
        "",
    ]
    for row in r["rows"]:
        for name, index in row["sets"].items():
            lines.append(f"- {row['backend']} / {row['model']}, {name}: {differing(index['labels'])}")
    for name, index in naive.items():
        lines.append(f"- naive script, {name}: {differing(index['labels'])}")
    lines += ["", "Reading:", "", *(f"- {line}" for line in reading(r))]
    return "\n".join(lines) + "\n"


def times(value: float | None) -> str:
    return "n/a" if value is None else f"{value}x"


def yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def differing(labels: dict) -> str:
    items = [
        f"{key} {entry['labelled']} / {','.join(map(str, entry['stored']))}"
        + (f" ({entry['note']})" if entry["note"] else "")
        for key, entry in labels["differing"].items()
    ]
    return "; ".join(items) + "." if items else "none."


def reading(r: dict) -> list[str]:
    indexes = [(row, name, index) for row in r["rows"] for name, index in row["sets"].items()]
    compared = [item for item in indexes if "speedup_photos" in item[2]]
    if not compared:
        return ["The naive script did not run: no speed-ups."]
    best = max(compared, key=lambda item: item[2]["speedup_photos"])
    worst = min(compared, key=lambda item: item[2]["speedup_photos"])
    met = [item for item in compared if item[2]["target_met"]]
    lines = [
        f"Fastest against the naive script: {best[0]['backend']} / {best[0]['model']} on the {best[1]} set, "
        f"{best[2]['photos_per_s']} photos/s, {best[2]['speedup_photos']}x; slowest: {worst[0]['backend']} / "
        f"{worst[0]['model']} on the {worst[1]} set, {worst[2]['speedup_photos']}x.",
        f"The {TARGET_SPEEDUP:g}x target is met by {len(met)} of {len(compared)} rows"
        + (
            f" on this machine ({r['machine']['cpu_count']} CPUs, "
            f"{'GPU ' + r['machine']['gpu'] if r['machine'].get('gpu') else 'no GPU'})."
            if not met
            else "."
        ),
    ]
    threshold = r["settings"].get("quiet_percent")
    shares = [others_percent(index) for _, _, index in indexes] + [others_percent(n) for n in r["naive"].values()]
    if threshold is not None and max(shares) > threshold:
        lines.append(
            f"Other processes used {min(shares):g}-{max(shares):g}% of the CPU time during the timed parts (more "
            f"than the {threshold:g}% waited for, in {sum(s > threshold for s in shares)} of {len(shares)} parts). "
            "The naive script (one process, torch's intra-op threads) slows down more than the suite's "
            "processes when it shares the cores, so these speed-ups overstate what a quiet machine gives: "
            "measure again on a quiet one before reading them against the target."
        )
    for name in ("shared", "large"):
        rows = [(row, index) for row, n, index in indexes if n == name]
        if rows:
            found = ", ".join(
                f"{row['backend']} / {row['model']} {index['labels']['found']}/{index['labels']['labelled']}"
                for row, index in rows
            )
            lines.append(f"Labelled faces found, {name} set: {found}.")
    return lines


def main() -> None:
    args = parse_args()
    if args.render:
        print(f"rewrote {render_again(args.render, markdown)}")
        return
    meter = meter_for(args)
    result = run(args, meter)
    load = meter.summary()
    meter.stop()
    result.update(
        {
            "benchmark": NAME,
            "command": " ".join(["python -m bench.indexing_throughput", *sys.argv[1:]]),
            "target_speedup": TARGET_SPEEDUP,
            "settings": {
                "data": str(args.data),
                "backends": args.backends,
                "embedding_models": args.embedding_models,
                "skip": args.skip,
                "sets": args.sets,
                "photos": args.photos,
                "copies": args.copies,
                "naive_sample": args.naive_sample,
                "threads": args.threads,
                "detector_device": args.detector_device,
                "embedder_flavour": args.embedder_flavour,
                "embedder_device": args.embedder_device,
                "quiet_percent": meter.quiet_percent,
            },
            "load": load,
            "machine": machine_facts(
                ["torch", "numpy", "grpcio", "onnxruntime", "facenet-pytorch", "ai-edge-litert", "pillow"]
            ),
        }
    )
    if result["copies"]:
        result["copies"]["copies"] = args.copies
    json_path, md_path = write_results(args.out, NAME, result, markdown)
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
