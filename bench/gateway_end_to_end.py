"""Gateway end to end: IndexPhotos photos/s and FindMe latency at 10k faces, against the naive script.

Everything runs in this process, in this order, on the same photos:

1. The suite (``launcher.in_process.LocalSuite``): detector, a real Triton serving FaceNet
   (the ``--models`` repository, default var/models), search on the edge store and the
   gateway, on loopback, with the project's default settings. What each part runs with
   is read back from it: the settings objects the servers were built with, and the
   model's configuration as Triton reports it (``get_model_config``).
2. IndexPhotos: ``--photos`` photos (default: every photo in labels.json once, photoprism
   first, repeated when more are asked for) streamed through the gateway in one call with
   ``FaceSearchClient.index``;
   photos/s and faces/s. Each repeat gets distinct bytes (a JPEG COM marker inserted after
   the APPn segments: same pixels, another SHA-256), so the gateway's duplicate skipping
   does not apply. Then a second pass over the same photos, all duplicates.
3. The tenant's gallery is filled to ``--gallery`` faces with synthetic face-like vectors
   (``bench.search_latency.face_vectors``: identity clusters, same-person cosine ~0.75)
   upserted straight into the search service.
4. FindMe, ``--queries`` calls each: with one reference photo (photoprism/2.jpg: detect +
   embed + search) and by an enrolled person_id (M, enrolled from the same photo: search
   only); p50/p99. The answers are checked against labels.json (photos showing M), over
   the whole archive and over the photoprism set alone; so are those for W (enrolled
   from photoprism/6.jpg).
5. The naive script a user would write (suite stopped first): per photo PIL decode,
   facenet-pytorch ``MTCNN(keep_all=True)`` detect + crop, ``InceptionResnetV1`` with our
   CASIA weights (``load_casia_facenet``, the network Triton serves) on the crops, vectors
   kept in a numpy array; ``torch.set_num_threads(--threads)``. FindMe: the reference
   through ``MTCNN()`` (default settings: the largest face) and the network, then numpy
   brute-force cosine over the same number of vectors (its own real ones + the same
   synthetic ones), the gateway's threshold.

Model loading and one warm-up call per way are not timed. The machine's load is measured
over the run and over each timed part (``bench.report.LoadMeter``). Before each timed
part the benchmark waits (``--quiet-wait-s`` at most) until other processes use at most
``--quiet-percent`` of the CPU, and a part they disturbed anyway is measured again
(``--attempts``; the least disturbed try counts, every try is recorded). Results go to
bench/results/gateway_end_to_end.{json,md}.

    python -m bench.gateway_end_to_end [--photos N] [--gallery 10000] [--queries 50] [--threads 2]
    python -m bench.gateway_end_to_end --render bench/results/gateway_end_to_end.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.report import (
    DEFAULT_DATA,
    REPO,
    RESULTS,
    LoadMeter,
    add_quiet_options,
    describe_triton_config,
    least_disturbed,
    load_line,
    load_remark,
    machine_facts,
    machine_line,
    meter_for,
    quiet_remark,
    render_again,
    settings_of,
    triton_model_config,
    write_results,
)
from bench.search_latency import face_vectors
from facesearch.v1 import common_pb2, facesearch_pb2, search_pb2, search_pb2_grpc
from launcher.in_process import KEYS, LocalSuite, prepare_model_repository
from sdk.client import FaceSearchClient

NAME = "gateway_end_to_end"
TENANT = "acme"
MODEL = common_pb2.EmbeddingModel(id="facenet-casia", version="1", dimension=512)
GALLERY = search_pb2.FACE_SOURCE_GALLERY
UPSERT_BATCH = 1000  # the search service takes at most 1024 faces per Upsert
REFERENCE = ("photoprism", "2.jpg")  # FindMe's reference photo, and M's enrolment
PERSON = "M"  # the person FindMe is timed for
PEOPLE = {"M": REFERENCE, "W": ("photoprism", "6.jpg")}  # whose answers are checked, and their references
SET_CHECKED = "photoprism"  # accuracy over this set alone, besides the whole archive
FIND_LIMIT = 100  # FindMe page size: every match of M in one page


@dataclass(frozen=True)
class BenchPhoto:
    key: str  # set/name in labels.json
    repeat: int  # 0: the file's own bytes; k > 0: with a COM marker, distinct bytes
    content: bytes

    @property
    def photo_id(self) -> str:
        return self.key if self.repeat == 0 else f"{self.key}#{self.repeat}"

    def message(self) -> facesearch_pb2.Photo:
        return facesearch_pb2.Photo(id=self.photo_id, uri=self.key, content=self.content)


def with_comment(image: bytes, text: str) -> bytes:
    """The same photo with a comment in it: same pixels, other bytes. A JPEG gets a COM
    segment after its APPn segments, a PNG a tEXt chunk after its IHDR chunk."""
    payload = text.encode()
    if image[:8] == b"\x89PNG\r\n\x1a\n":
        at = 8 + 8 + int.from_bytes(image[8:12], "big") + 4  # signature, then IHDR: length, type, data, CRC
        chunk = b"tEXt" + b"Comment\x00" + payload
        return (
            image[:at] + (len(chunk) - 4).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big") + image[at:]
        )
    jpeg = image
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("neither a JPEG nor a PNG")
    at = 2
    while jpeg[at] == 0xFF and 0xE0 <= jpeg[at + 1] <= 0xEF:  # APP0..APP15 (JFIF, Exif, ...)
        at += 2 + int.from_bytes(jpeg[at + 2 : at + 4], "big")
    return jpeg[:at] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[at:]


def load_photos(data: Path, count: int | None) -> tuple[list[BenchPhoto], dict]:
    """``count`` photos (default: every labelled photo once): every labelled photo (photoprism
    first, so short runs still hold the accuracy check's photos), again and again; repeats
    get distinct bytes."""
    sets = json.loads((data / "labels.json").read_text())["sets"]
    order = sorted(sets, key=lambda name: name != SET_CHECKED)
    files = [(f"{s}/{name}", (data / s / name).read_bytes()) for s in order for name in sets[s]["photos"]]
    photos = []
    for i in range(len(files) if count is None else count):
        key, content = files[i % len(files)]
        repeat = i // len(files)
        if repeat:
            content = with_comment(content, f"facesearch bench repeat {repeat}")
        photos.append(BenchPhoto(key, repeat, content))
    return photos, sets


# --- the gateway ------------------------------------------------------------------------------


def index_through_gateway(client: FaceSearchClient, photos: list[BenchPhoto]) -> dict:
    """One IndexPhotos stream over all the photos; wall clock to the last result."""
    began = time.perf_counter()
    results = list(client.index(p.message() for p in photos))
    seconds = time.perf_counter() - began
    statuses: dict[str, int] = {}
    for result in results:
        name = facesearch_pb2.PhotoStatus.Name(result.status).removeprefix("PHOTO_STATUS_").lower()
        statuses[name] = statuses.get(name, 0) + 1
    faces = sum(r.faces_stored for r in results)
    return {
        "seconds": round(seconds, 2),
        "photos_per_s": round(len(photos) / seconds, 2),
        "faces_stored": faces,
        "faces_per_s": round(faces / seconds, 2),
        "statuses": statuses,
        "faces_by_photo": {r.photo_id: r.faces_stored for r in results},
    }


def gallery_faces(search: search_pb2_grpc.SearchStub) -> int:
    request = search_pb2.CountRequest(tenant=TENANT, filter=search_pb2.FaceFilter(source=GALLERY))
    return search.Count(request, timeout=60).count


def synthetic_vectors(count: int, seed: int) -> np.ndarray:
    return np.concatenate([v for _, v, _ in face_vectors(count, seed=seed)]) if count else np.zeros((0, 512))


def fill_gallery(search: search_pb2_grpc.SearchStub, vectors: np.ndarray) -> float:
    """Upserts the synthetic vectors as gallery faces of made-up photos; seconds taken."""
    began = time.perf_counter()
    for start in range(0, len(vectors), UPSERT_BATCH):
        faces = []
        for i in range(start, min(start + UPSERT_BATCH, len(vectors))):
            photo_id = f"synthetic-{i:06d}"
            payload = search_pb2.FacePayload(
                photo_id=photo_id,
                photo_uri=photo_id,
                photo_hash=hashlib.sha256(photo_id.encode()).hexdigest(),
                face_index=0,
                source=GALLERY,
            )
            faces.append(search_pb2.FaceRecord(vector=vectors[i].tolist(), payload=payload))
        search.Upsert(search_pb2.UpsertRequest(tenant=TENANT, model=MODEL, faces=faces), timeout=120)
    return time.perf_counter() - began


def wait_for_search_optimizers() -> None:
    """The edge store builds its index on background threads of this process: let them finish."""
    for thread in threading.enumerate():
        if thread.name.startswith("optimize-"):
            thread.join()


def timed(call: Callable[[], object], times: int) -> tuple[list[float], object]:
    """Seconds of each of ``times`` calls after one untimed warm-up; the last answer."""
    answer = call()
    seconds = []
    for _ in range(times):
        began = time.perf_counter()
        answer = call()
        seconds.append(time.perf_counter() - began)
    return seconds, answer


def run_gateway(
    args: argparse.Namespace, photos: list[BenchPhoto], synthetic: np.ndarray, work: Path, meter: LoadMeter
) -> dict:
    embedder = prepare_model_repository(args.models)
    suite = LocalSuite(work, embedder)
    try:
        configuration = running_configuration(suite)
        with (
            FaceSearchClient(suite.address, KEYS[TENANT]) as client,
            FaceSearchClient(suite.address, KEYS["globex"]) as other,
            suite.internal_channel(suite.search_address) as channel,
        ):
            search = search_pb2_grpc.SearchStub(channel)
            smallest = min(photos, key=lambda p: len(p.content))
            list(other.index([smallest.message()]))  # warm-up (another tenant), not timed
            first = measured(
                meter, lambda: index_through_gateway(client, photos), lambda done: delete_indexed(client, done)
            )
            print(f"gateway IndexPhotos: {summary_of(first)}")
            second = measured(meter, lambda: index_through_gateway(client, photos))
            print(f"gateway IndexPhotos again (duplicates): {summary_of(second)}")

            real = gallery_faces(search)
            fill_seconds = fill_gallery(search, synthetic[: max(0, args.gallery - real)])
            wait_for_search_optimizers()
            size = gallery_faces(search)
            print(f"gallery: {real} real + {size - real} synthetic faces = {size}")

            reference = facesearch_pb2.Photo(id="reference", content=reference_bytes(args.data, REFERENCE))
            by_photo, photo_answer = timed_and_measured(
                meter, lambda: client.find_me([reference], limit=FIND_LIMIT), args.queries
            )
            person_ids = {}
            for person, (set_name, name) in PEOPLE.items():
                photo = facesearch_pb2.Photo(id=f"enrol-{person}", content=reference_bytes(args.data, (set_name, name)))
                person_ids[person] = client.enroll(f"person {person}", [photo]).person_id
            by_person, person_answer = timed_and_measured(
                meter, lambda: client.find_me(person_id=person_ids[PERSON], limit=FIND_LIMIT), args.queries
            )
            answers = {person: client.find_me(person_id=pid, limit=FIND_LIMIT) for person, pid in person_ids.items()}
            threshold = person_answer.settings.similarity_threshold
    finally:
        suite.stop()
    return {
        "configuration": configuration,
        "index": first,
        "index_again": second,
        "gallery_real_faces": real,
        "gallery_faces": size,
        "fill_seconds": round(fill_seconds, 1),
        "find_me_photo": by_photo,
        "find_me_person": by_person,
        "threshold": round(threshold, 4),
        "matches_photo": [(m.photo_id, m.similarity) for m in photo_answer.matches],
        "matches_person": {
            person: [(m.photo_id, m.similarity) for m in answer.matches] for person, answer in answers.items()
        },
        "more_pages": bool(photo_answer.next_page_token or any(a.next_page_token for a in answers.values())),
    }


def running_configuration(suite: LocalSuite) -> dict:
    """What the suite's parts run with: the settings objects its servers were built with (the
    gateway's embedder client included), and the model's configuration as Triton reports it."""
    embedder = suite.embedder
    return {
        "gateway": settings_of(suite.gateway.server.settings),
        "detector": settings_of(suite.detector.server.settings),
        "search": settings_of(suite.search.server.settings),
        "embedder_client": settings_of(embedder),
        "triton_model_config": triton_model_config(suite.triton.grpc_url, embedder.model_id, embedder.model_version),
        "triton_version": triton_version(suite.triton.grpc_url),
    }


def triton_version(url: str) -> str:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        return client.get_server_metadata(as_json=True).get("version", "?")


def measured(meter: LoadMeter, call: Callable[[], dict], undo: Callable[[dict], None] | None = None) -> dict:
    """``call``'s result with the machine's load while it ran, after waiting for a quiet machine;
    tried again while other processes disturbed it (``least_disturbed``), after ``undo`` of the
    previous try's result where a try changes what the next one finds."""
    done: list[dict] = []

    def once() -> dict:
        if done and undo is not None:
            undo(done[-1])
        quiet = meter.settle()
        before = meter.reading()
        result = call()
        done.append({**result, "load": meter.usage(before, meter.reading()), "quiet": quiet})
        return done[-1]

    return least_disturbed(meter, once)


def timed_and_measured(meter: LoadMeter, call: Callable[[], object], times: int) -> tuple[dict, object]:
    """``timed`` as ``measured``: the latency summary with the machine's load and the waits; the last answer."""

    def once() -> dict:
        seconds, answer = timed(call, times)
        return {**latency(seconds), "answer": answer}

    result = measured(meter, once)
    return result, result.pop("answer")


def delete_indexed(client: FaceSearchClient, index: dict) -> None:
    """Deletes the photos an IndexPhotos pass stored, so that the next pass indexes them anew."""
    for photo_id, faces in index["faces_by_photo"].items():
        if faces:
            client.delete_photo(photo_id)


def summary_of(index: dict) -> dict:
    return {key: index[key] for key in ("seconds", "photos_per_s", "faces_stored", "faces_per_s", "statuses")}


def reference_bytes(data: Path, photo: tuple[str, str]) -> bytes:
    return (data / photo[0] / photo[1]).read_bytes()


# --- the naive script -------------------------------------------------------------------------


class Naive:
    """What a user would write with facenet-pytorch, one photo at a time."""

    def __init__(self, threads: int) -> None:
        from facenet_pytorch import MTCNN

        from services.embedder.serving.weights.facenet_casia import load_casia_facenet

        torch.set_num_threads(threads)
        # post_process=True (the default) standardises crops as (pixel - 127.5) / 128, as
        # the CASIA network expects; the crops are 160 x 160, margin 0, not aligned.
        self.detect_all = MTCNN(keep_all=True, device="cpu")
        self.detect_largest = MTCNN(device="cpu")
        self.network = load_casia_facenet()  # InceptionResnetV1, CASIA weights, unit vectors

    def embed(self, content: bytes, detector) -> np.ndarray:
        from PIL import Image, ImageOps

        with Image.open(io.BytesIO(content)) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        crops = detector(image)
        if crops is None:
            return np.zeros((0, 512), np.float32)
        with torch.inference_mode():
            return self.network(crops if crops.ndim == 4 else crops[None]).numpy()

    def index(self, photos: list[BenchPhoto]) -> tuple[float, np.ndarray, list[str]]:
        self.embed(min(photos, key=lambda p: len(p.content)).content, self.detect_all)  # warm-up
        vectors, ids = [], []
        began = time.perf_counter()
        for photo in photos:
            found = self.embed(photo.content, self.detect_all)
            vectors.append(found)
            ids += [photo.photo_id] * len(found)
        return time.perf_counter() - began, np.concatenate(vectors), ids


def brute_force(matrix: np.ndarray, ids: np.ndarray, vector: np.ndarray, threshold: float) -> list[tuple[str, float]]:
    """Photos with a face at or above the threshold, best face per photo, best first."""
    scores = matrix @ vector
    best: dict[str, float] = {}
    for i in np.flatnonzero(scores >= threshold):
        photo_id, score = ids[i], float(scores[i])
        if score > best.get(photo_id, -2.0):
            best[photo_id] = score
    return sorted(best.items(), key=lambda item: (-item[1], item[0]))[:FIND_LIMIT]


def run_naive(
    args: argparse.Namespace, photos: list[BenchPhoto], synthetic: np.ndarray, threshold: float, meter: LoadMeter
) -> dict:
    naive = Naive(args.threads)
    index = measured(meter, lambda: dict(zip(("seconds", "real", "ids"), naive.index(photos))))
    seconds, real, ids = index.pop("seconds"), index.pop("real"), index.pop("ids")
    print(f"naive index: {seconds:.1f} s, {len(real)} faces")
    extra = synthetic[: max(0, args.gallery - len(real))]
    matrix = np.concatenate([real, extra]).astype(np.float32)
    all_ids = np.array(ids + [f"synthetic-{i:06d}" for i in range(len(extra))], dtype=object)
    reference = reference_bytes(args.data, REFERENCE)

    def find_by_photo():
        [vector] = naive.embed(reference, naive.detect_largest)
        return brute_force(matrix, all_ids, vector, threshold)

    by_photo, photo_answer = timed_and_measured(meter, find_by_photo, args.queries)
    [stored] = naive.embed(reference, naive.detect_largest)  # "enrolled": the vector kept
    by_vector, _ = timed_and_measured(meter, lambda: brute_force(matrix, all_ids, stored, threshold), args.queries)
    answers = {}
    for person, photo in PEOPLE.items():
        [vector] = naive.embed(reference_bytes(args.data, photo), naive.detect_largest)
        answers[person] = brute_force(matrix, all_ids, vector, threshold)
    return {
        "index": {
            "seconds": round(seconds, 2),
            "photos_per_s": round(len(photos) / seconds, 2),
            "faces_stored": len(real),
            "faces_per_s": round(len(real) / seconds, 2),
            "faces_by_photo": {p.photo_id: ids.count(p.photo_id) for p in photos},
            **index,
        },
        "torch_threads": args.threads,
        "gallery_faces": len(matrix),
        "find_me_photo": by_photo,
        "find_me_person": by_vector,
        "matches_photo": photo_answer,
        "matches_by_reference": answers,
    }


# --- results ----------------------------------------------------------------------------------


def latency(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "calls": len(ms),
    }


def accuracy(
    matches: list[tuple[str, float]], sets: dict, photos: list[BenchPhoto], person: str, within: str | None = None
) -> dict:
    """The matched photos (repeats folded into their file) against labels.json's photos of
    ``person``; ``within`` a set: that set's photos only, on both sides."""
    indexed = {p.key for p in photos if within is None or p.key.startswith(f"{within}/")}
    truth = {
        f"{s}/{name}"
        for s, photo_set in sets.items()
        for name, label in photo_set["photos"].items()
        if person in label["people"] and f"{s}/{name}" in indexed
    }
    kept = [(photo_id.split("#")[0], score) for photo_id, score in matches if photo_id.split("#")[0] in indexed]
    found = {key for key, _ in kept}
    hits = found & truth
    return {
        "person": person,
        "photos_checked": within or "archive",
        "matches": len(kept),
        "photos": len(found),
        "true_photos": len(hits),
        "labelled_photos": len(truth),
        "precision": round(len(hits) / len(found), 3) if found else 0.0,
        "recall": round(len(hits) / len(truth), 3) if truth else 0.0,
        "missed": sorted(truth - found),
        "wrong": {k: round(max(v for i, v in kept if i == k), 3) for k in sorted(found - truth)},
    }


def accuracies(gateway: dict, naive: dict, sets: dict, photos: list[BenchPhoto]) -> dict:
    """Per way and person: over the whole archive and over SET_CHECKED alone."""
    ways = {
        "gateway_photo": {PERSON: gateway["matches_photo"]},
        **{f"gateway_person_{person}": {person: m} for person, m in gateway["matches_person"].items()},
        **{f"naive_photo_{person}": {person: m} for person, m in naive["matches_by_reference"].items()},
    }
    return {
        way: {
            scope or "archive": accuracy(matches, sets, photos, person, scope)
            for person, matches in by_person.items()
            for scope in (None, SET_CHECKED)
        }
        for way, by_person in ways.items()
    }


def face_counts(sets: dict, gateway: dict, naive: dict) -> dict:
    """Faces stored per photo (its first copy) against the labelled count."""
    rows = [
        (f"{s}/{name}", label["faces"], gateway.get(f"{s}/{name}"), naive.get(f"{s}/{name}"))
        for s, photo_set in sets.items()
        for name, label in photo_set["photos"].items()
        if f"{s}/{name}" in gateway
    ]
    return {
        "photos": len(rows),
        "labelled_faces": sum(r[1] for r in rows),
        "gateway_faces": sum(r[2] for r in rows),
        "naive_faces": sum(r[3] for r in rows),
        "gateway_matching": sum(r[2] == r[1] for r in rows),
        "naive_matching": sum(r[3] == r[1] for r in rows),
        "differing": [r for r in rows if not r[1] == r[2] == r[3]],
    }


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def others(measured: dict) -> str:
    value = measured.get("load", {}).get("cpu_percent", {}).get("other_processes")
    return "" if value is None else f"{value}%"


def configuration_lines(c: dict) -> list[str]:
    """The suite's settings as read back from its running parts."""
    d, g, e, s = c["detector"], c["gateway"], c["embedder_client"], c["search"]
    return [
        f"- detector: backend {d['backend']} on {d['device']}, torch_threads {d['torch_threads']}, workers "
        f"{d['workers']}, max_side {d['max_side']}, min_confidence {d['min_confidence']}, retry_confidences "
        f"{d['retry_confidences']}, min_face_size {d['min_face_size']}, blur_threshold {d['blur_threshold']}.",
        f"- Triton {c['triton_version']}, model as Triton reports it: {c['triton_model_config'].get('name')} "
        f"(backend {c['triton_model_config'].get('backend')}), {describe_triton_config(c['triton_model_config'])}.",
        f"- gateway's embedder client: backend {e['backend']}, model {e['model_id']} version {e['model_version']}, "
        f"client_batch_size {e['client_batch_size']}, request_timeout_s {e['request_timeout_s']}, retries "
        f"{e['retries']}.",
        f"- gateway: detect_batch_size {g['detect_batch_size']}, index_concurrency {g['index_concurrency']}, "
        f"similarity_thresholds {g['similarity_thresholds']}, max_matches {g['max_matches']}, min_face_size "
        f"{g['min_face_size']}.",
        f"- search: backend {s['backend']}, models {s['models']}, max_batch_points {s['max_batch_points']}.",
    ]


def markdown(r: dict) -> str:
    m, g, n, s, fc = r["machine"], r["gateway"], r["naive"], r["settings"], r["face_counts"]
    gi, ni, again = g["index"], n["index"], g["index_again"]
    statuses = ", ".join(f"{k} {v}" for k, v in gi["statuses"].items())
    again_statuses = ", ".join(f"{k} {v}" for k, v in again["statuses"].items())

    def lat(x: dict) -> str:
        return f"{x['p50_ms']} / {x['p99_ms']}"

    def acc(a: dict) -> str:
        return (
            f"{a['true_photos']}/{a['labelled_photos']} photos of {a['person']} found, {a['photos']} photos "
            f"returned ({a['matches']} matches with repeats): precision {a['precision']}, recall {a['recall']}"
            + (f"; missed {', '.join(a['missed'])}" if a["missed"] else "")
            + (
                f"; wrong (best similarity) {', '.join(f'{k} ({v})' for k, v in a['wrong'].items())}"
                if a["wrong"]
                else ""
            )
        )

    ways = {
        "gateway_person": "facesearch FindMe by person_id",
        "gateway_photo": "facesearch FindMe by reference photo",
        "naive_photo": "naive brute force by reference photo",
    }
    accuracy_lines = []
    for way, by_scope in r["accuracy"].items():
        base = next(v for k, v in ways.items() if way.startswith(k))
        for scope, a in by_scope.items():
            where = "whole archive" if scope == "archive" else f"{scope} set alone"
            accuracy_lines.append(f"- {base}, {a['person']}, {where}: {acc(a)}")

    lines = [
        "# Gateway end to end: IndexPhotos and FindMe against the naive script",
        "",
        machine_line(m),
        "",
        load_line(r["load"]) + " The table gives each timed part's share of other processes.",
        "",
        quiet_remark(
            [g[k] for k in ("index", "index_again", "find_me_photo", "find_me_person")]
            + [n[k] for k in ("index", "find_me_photo", "find_me_person")],
            s.get("quiet_percent"),
        ),
        "",
        f"Command: `{r['command']}`.",
        "",
        "Settings:",
        "",
        f"- Photos: {s['photos']} = the {s['distinct_photos']} photos of labels.json ({SET_CHECKED} first)"
        + (
            ", repeated; each repeat is made distinct bytes by a comment (JPEG COM segment, PNG tEXt chunk: "
            "same pixels, new SHA-256), so the gateway does not skip it as a duplicate."
            if s["photos"] > s["distinct_photos"]
            else ", each once."
        ),
        "- facesearch: `launcher.in_process.LocalSuite` in this process, each part as it ran (read back from "
        "the servers' settings objects and from Triton):",
        *(f"  {line}" for line in configuration_lines(g["configuration"])),
        "  One `FaceSearchClient.index` stream for all photos, then the same stream again.",
        f"- naive: facenet-pytorch `MTCNN(keep_all=True)` per photo at full size (decode with PIL, "
        f"EXIF-rotated), `InceptionResnetV1` with the CASIA weights on that photo's crops, vectors in a "
        f"numpy array; torch.set_num_threads({n['torch_threads']}). The same network and standardisation "
        f"((x - 127.5) / 128) as the served model; MTCNN crops are not aligned.",
        f"- Gallery for FindMe: {g['gallery_faces']} faces for facesearch ({g['gallery_real_faces']} real "
        f"from the photos + synthetic, upserted into the search service in {g['fill_seconds']} s), "
        f"{n['gallery_faces']} vectors for naive (its own real faces + the same synthetic vectors). "
        f"Synthetic: unit vectors around random identity centres (`bench.search_latency.face_vectors`).",
        f"- FindMe: reference {'/'.join(REFERENCE)} ({s['queries']} calls after one warm-up, limit "
        f"{FIND_LIMIT}, threshold {g['threshold']}); by person_id: {PERSON} enrolled from the same photo. "
        f"Naive: `MTCNN()` (largest face) + network + numpy `matrix @ v` with the same threshold; "
        f"'by person' is the numpy search alone with the stored vector.",
        "",
        "| measure | facesearch | naive | speed-up (facesearch vs naive) | others % CPU (facesearch / naive) |",
        "|---|---:|---:|---:|---:|",
        f"| IndexPhotos, photos/s | **{gi['photos_per_s']}** | {ni['photos_per_s']} | "
        f"**{ratio(gi['photos_per_s'], ni['photos_per_s'])}** | {others(gi)} / {others(ni)} |",
        f"| IndexPhotos, faces/s | {gi['faces_per_s']} | {ni['faces_per_s']} | "
        f"{ratio(gi['faces_per_s'], ni['faces_per_s'])} | |",
        f"| IndexPhotos, seconds for {s['photos']} photos | {gi['seconds']} | {ni['seconds']} | | |",
        f"| faces stored | {gi['faces_stored']} | {ni['faces_stored']} | | |",
        f"| IndexPhotos again (duplicates), photos/s | {again['photos_per_s']} ({again['seconds']} s) | "
        f"no skipping: as the first pass | | {others(again)} / |",
        f"| FindMe by reference photo, p50 / p99 ms | **{lat(g['find_me_photo'])}** | {lat(n['find_me_photo'])} | "
        f"**{ratio(n['find_me_photo']['p50_ms'], g['find_me_photo']['p50_ms'])}** (p50) | "
        f"{others(g['find_me_photo'])} / {others(n['find_me_photo'])} |",
        f"| FindMe by person_id (search only), p50 / p99 ms | {lat(g['find_me_person'])} | "
        f"{lat(n['find_me_person'])} | {ratio(n['find_me_person']['p50_ms'], g['find_me_person']['p50_ms'])} (p50) | "
        f"{others(g['find_me_person'])} / {others(n['find_me_person'])} |",
        "",
        "Speed-up: facesearch photos/s / naive photos/s, or naive latency / facesearch latency; above 1x "
        "facesearch is faster. Naive 'by person_id' is the numpy search alone, in this process, without any "
        "network hop. 'others': the share of the machine's CPU time that processes other than this benchmark "
        "used during that part.",
        "",
        f"Statuses, first pass: {statuses}. Second pass: {again_statuses} (photos where no face was "
        f"found are stored as nothing, so they are detected again).",
        "",
        "Accuracy (labels.json; a photo's repeats count as that photo):",
        "",
        *accuracy_lines,
        "",
        f"Faces per photo against labels.json (the first copy of each of the {fc['photos']} photos, "
        f"{fc['labelled_faces']} labelled faces): facesearch stored {fc['gateway_faces']} and matches the "
        f"labelled count on {fc['gateway_matching']}/{fc['photos']} photos; naive kept {fc['naive_faces']} "
        f"(every face MTCNN returns at its default thresholds) and matches on {fc['naive_matching']}/"
        f"{fc['photos']}. Photos where the counts differ (labelled / facesearch / naive):",
        "",
        *(f"- {key}: {want} / {ours} / {theirs}" for key, want, ours, theirs in fc["differing"]),
        *(["- none"] if not fc["differing"] else []),
        "",
        "Reading:",
        "",
        *(f"- {line}" for line in reading(r)),
    ]
    return "\n".join(lines) + "\n"


def reading(r: dict) -> list[str]:
    """The numbers in plain words."""
    g, n = r["gateway"], r["naive"]
    gi, ni, again = g["index"], n["index"], g["index_again"]
    index_ratio = gi["photos_per_s"] / ni["photos_per_s"]
    photo, person = g["find_me_photo"]["p50_ms"], g["find_me_person"]["p50_ms"]
    naive_photo, naive_search = n["find_me_photo"]["p50_ms"], n["find_me_person"]["p50_ms"]
    ours = r["accuracy"][f"gateway_person_{PERSON}"]["archive"]
    theirs = r["accuracy"][f"naive_photo_{PERSON}"]["archive"]
    verdict = (
        f"FindMe for {PERSON} through facesearch found {ours['true_photos']}/{ours['labelled_photos']} of "
        f"{PERSON}'s photos (recall {ours['recall']}) against {theirs['true_photos']}/{theirs['labelled_photos']} "
        f"for the naive script (recall {theirs['recall']}), with precision {ours['precision']} against "
        f"{theirs['precision']}"
    )
    if ours["recall"] >= theirs["recall"] and ours["precision"] >= theirs["precision"]:
        verdict += ": at least as good on both"
    elif ours["recall"] >= theirs["recall"]:
        verdict += (
            f": it finds as many or more, but also returns {len(ours['wrong'])} photo(s) without "
            f"{PERSON} at threshold {g['threshold']}"
        )
    else:
        verdict += ": it finds fewer of them"
    return [
        f"Indexing: {gi['photos_per_s']} photos/s through the gateway against {ni['photos_per_s']} for the "
        f"naive script on the same photos and cores: {'faster' if index_ratio >= 1 else 'slower'}, "
        f"{index_ratio:.2f}x ({gi['faces_stored']} faces stored against {ni['faces_stored']}); "
        f"while facesearch indexed, {load_remark(gi['load'])}; while the naive script did, "
        f"{load_remark(ni['load'])}.",
        f"Sending the same photos again takes {again['seconds']} s against {gi['seconds']} s the first time: "
        "duplicates are skipped by their hash; the photos without a face are detected again.",
        f"FindMe with a photo, {g['gallery_faces']} faces stored: {photo} ms p50 against {naive_photo} ms naive. "
        f"By an enrolled person it is {person} ms, so about {photo - person:.0f} ms of the photo call is "
        "detecting and embedding the reference.",
        f"Search alone: {person} ms through gateway and search service (two gRPC hops, the enrolled "
        f"person's vectors fetched, then the query) against {naive_search} ms for numpy over "
        f"{n['gallery_faces']} vectors in memory.",
        f"Accuracy: {verdict}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--photos", type=int, help="photos indexed (default: every labelled photo once)")
    parser.add_argument("--gallery", type=int, default=10_000, help="gallery faces for FindMe (real + synthetic)")
    parser.add_argument("--queries", type=int, default=50, help="timed FindMe calls per way")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the naive script")
    parser.add_argument("--models", type=Path, default=REPO / "var" / "models", help="model repository")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic vectors")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    add_quiet_options(parser, wait_s=30.0)
    parser.add_argument("--render", type=Path, help="only rewrite the markdown beside this results JSON file")
    args = parser.parse_args()
    if args.render:
        print(f"rewrote {render_again(args.render, markdown)}")
        return

    meter = meter_for(args)
    photos, sets = load_photos(args.data, args.photos)
    synthetic = synthetic_vectors(args.gallery, args.seed)
    print(f"{len(photos)} photos from {args.data}, gallery {args.gallery}, {args.queries} queries")
    with tempfile.TemporaryDirectory(prefix="facesearch-e2e-") as work:
        gateway = run_gateway(args, photos, synthetic, Path(work), meter)
    naive = run_naive(args, photos, synthetic, gateway["threshold"], meter)
    load = meter.summary()
    meter.stop()
    result = {
        "benchmark": NAME,
        "command": " ".join(["python -m bench.gateway_end_to_end", *sys.argv[1:]]),
        "settings": {
            "data": str(args.data),
            "photos": len(photos),
            "distinct_photos": len({p.key for p in photos}),
            "gallery": args.gallery,
            "queries": args.queries,
            "seed": args.seed,
            "quiet_percent": meter.quiet_percent,
        },
        "gateway": gateway,
        "naive": naive,
        "accuracy": accuracies(gateway, naive, sets, photos),
        "face_counts": face_counts(sets, gateway["index"]["faces_by_photo"], naive["index"]["faces_by_photo"]),
        "load": load,
        "machine": machine_facts(["torch", "numpy", "grpcio", "onnxruntime", "facenet-pytorch", "qdrant-edge-py"]),
    }
    if gateway["more_pages"]:
        print("warning: FindMe had more matches than one page; accuracy counts the first page only")
    json_path, md_path = write_results(args.out, NAME, result, markdown)
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
