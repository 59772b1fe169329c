"""Gateway end to end: IndexPhotos photos/s and FindMe latency at 10k faces, against the naive script.

Everything runs in this process, in this order, on the same photos:

1. The suite (``launcher.in_process.LocalSuite``): detector, a real Triton serving FaceNet
   (the ``--models`` repository, default var/models), search on the edge store and the
   gateway, on loopback, with the project's default settings.
2. IndexPhotos: ``--photos`` photos (every photo in labels.json, photoprism first, repeated
   as needed) streamed through the gateway in one call with ``FaceSearchClient.index``;
   photos/s and faces/s. Each repeat gets distinct bytes (a JPEG COM marker inserted after
   the APPn segments: same pixels, another SHA-256), so the gateway's duplicate skipping
   does not apply. Then a second pass over the same photos, all duplicates.
3. The tenant's gallery is filled to ``--gallery`` faces with synthetic face-like vectors
   (``bench.search_latency.face_vectors``: identity clusters, same-person cosine ~0.75)
   upserted straight into the search service.
4. FindMe, ``--queries`` calls each: with one reference photo (photoprism/2.jpg: detect +
   embed + search) and by an enrolled person_id (M, enrolled from the same photo: search
   only); p50/p99. The answers are checked against labels.json (photos showing M).
5. The naive script a user would write (suite stopped first): per photo PIL decode,
   facenet-pytorch ``MTCNN(keep_all=True)`` detect + crop, ``InceptionResnetV1`` with our
   CASIA weights (``load_casia_facenet``, the network Triton serves) on the crops, vectors
   kept in a numpy array; ``torch.set_num_threads(--threads)``. FindMe: the reference
   through ``MTCNN()`` (default settings: the largest face) and the network, then numpy
   brute-force cosine over the same number of vectors (its own real ones + the same
   synthetic ones), the gateway's threshold.

Model loading and one warm-up call per way are not timed. Results go to
bench/results/gateway_end_to_end.md.

    python -m bench.gateway_end_to_end [--photos 82] [--gallery 10000] [--queries 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch

from bench.search_latency import face_vectors
from facesearch.v1 import common_pb2, facesearch_pb2, search_pb2, search_pb2_grpc
from launcher.in_process import KEYS, LocalSuite, prepare_model_repository
from sdk.client import FaceSearchClient

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("FACESEARCH_TEST_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"
TENANT = "acme"
MODEL = common_pb2.EmbeddingModel(id="facenet-casia", version="1", dimension=512)
GALLERY = search_pb2.FACE_SOURCE_GALLERY
UPSERT_BATCH = 1000  # the search service takes at most 1024 faces per Upsert
REFERENCE = ("photoprism", "2.jpg")  # FindMe's reference photo, and M's enrolment
PERSON = "M"
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


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after its APPn segments: same pixels, other bytes."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    at = 2
    while jpeg[at] == 0xFF and 0xE0 <= jpeg[at + 1] <= 0xEF:  # APP0..APP15 (JFIF, Exif, ...)
        at += 2 + int.from_bytes(jpeg[at + 2 : at + 4], "big")
    payload = text.encode()
    return jpeg[:at] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[at:]


def load_photos(data: Path, count: int) -> tuple[list[BenchPhoto], dict]:
    """``count`` photos: every labelled photo (photoprism first, so short runs still hold
    the accuracy check's photos), again and again; repeats get distinct bytes."""
    sets = json.loads((data / "labels.json").read_text())["sets"]
    order = sorted(sets, key=lambda name: name != "photoprism")
    files = [(f"{s}/{name}", (data / s / name).read_bytes()) for s in order for name in sets[s]["photos"]]
    photos = []
    for i in range(count):
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


def run_gateway(args: argparse.Namespace, photos: list[BenchPhoto], synthetic: np.ndarray, work: Path) -> dict:
    embedder = prepare_model_repository(args.models)
    suite = LocalSuite(work, embedder)
    try:
        with (
            FaceSearchClient(suite.address, KEYS[TENANT]) as client,
            FaceSearchClient(suite.address, KEYS["globex"]) as other,
            grpc.insecure_channel(suite.search_address) as channel,
        ):
            search = search_pb2_grpc.SearchStub(channel)
            smallest = min(photos, key=lambda p: len(p.content))
            list(other.index([smallest.message()]))  # warm-up (another tenant), not timed
            first = index_through_gateway(client, photos)
            print(f"gateway IndexPhotos: {first}")
            second = index_through_gateway(client, photos)
            print(f"gateway IndexPhotos again (duplicates): {second}")

            real = gallery_faces(search)
            fill_seconds = fill_gallery(search, synthetic[: max(0, args.gallery - real)])
            wait_for_search_optimizers()
            size = gallery_faces(search)
            print(f"gallery: {real} real + {size - real} synthetic faces = {size}")

            reference = facesearch_pb2.Photo(id="reference", content=reference_bytes(args.data))
            by_photo, photo_answer = timed(lambda: client.find_me([reference], limit=FIND_LIMIT), args.queries)
            enrolled = client.enroll(f"person {PERSON}", [reference])
            person_id = enrolled.person_id
            by_person, person_answer = timed(
                lambda: client.find_me(person_id=person_id, limit=FIND_LIMIT), args.queries
            )
            threshold = person_answer.settings.similarity_threshold
    finally:
        suite.stop()
    return {
        "index": first,
        "index_again": second,
        "gallery_real_faces": real,
        "gallery_faces": size,
        "fill_seconds": round(fill_seconds, 1),
        "find_me_photo": latency(by_photo),
        "find_me_person": latency(by_person),
        "threshold": round(threshold, 4),
        "matches_photo": [(m.photo_id, m.similarity) for m in photo_answer.matches],
        "matches_person": [(m.photo_id, m.similarity) for m in person_answer.matches],
        "more_pages": bool(photo_answer.next_page_token or person_answer.next_page_token),
    }


def reference_bytes(data: Path) -> bytes:
    return (data / REFERENCE[0] / REFERENCE[1]).read_bytes()


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


def run_naive(args: argparse.Namespace, photos: list[BenchPhoto], synthetic: np.ndarray, threshold: float) -> dict:
    naive = Naive(args.threads)
    seconds, real, ids = naive.index(photos)
    print(f"naive index: {seconds:.1f} s, {len(real)} faces")
    extra = synthetic[: max(0, args.gallery - len(real))]
    matrix = np.concatenate([real, extra]).astype(np.float32)
    all_ids = np.array(ids + [f"synthetic-{i:06d}" for i in range(len(extra))], dtype=object)
    reference = reference_bytes(args.data)

    def find_by_photo():
        [vector] = naive.embed(reference, naive.detect_largest)
        return brute_force(matrix, all_ids, vector, threshold)

    by_photo, photo_answer = timed(find_by_photo, args.queries)
    [stored] = naive.embed(reference, naive.detect_largest)  # "enrolled": the vector kept
    by_vector, vector_answer = timed(lambda: brute_force(matrix, all_ids, stored, threshold), args.queries)
    return {
        "index": {
            "seconds": round(seconds, 2),
            "photos_per_s": round(len(photos) / seconds, 2),
            "faces_stored": len(real),
            "faces_per_s": round(len(real) / seconds, 2),
            "faces_by_photo": {p.photo_id: ids.count(p.photo_id) for p in photos},
        },
        "gallery_faces": len(matrix),
        "find_me_photo": latency(by_photo),
        "find_me_person": latency(by_vector),
        "matches_photo": photo_answer,
        "matches_person": vector_answer,
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


def accuracy(matches: list[tuple[str, float]], sets: dict, photos: list[BenchPhoto]) -> dict:
    """The matched photos (repeats folded into their file) against labels.json's photos of M."""
    indexed = {p.key for p in photos}
    truth = {
        f"{s}/{name}"
        for s, photo_set in sets.items()
        for name, label in photo_set["photos"].items()
        if PERSON in label["people"] and f"{s}/{name}" in indexed
    }
    found = {photo_id.split("#")[0] for photo_id, _ in matches}
    hits = found & truth
    return {
        "matches": len(matches),
        "photos": len(found),
        "true_photos": len(hits),
        "labelled_photos": len(truth),
        "precision": round(len(hits) / len(found), 3) if found else 0.0,
        "recall": round(len(hits) / len(truth), 3) if truth else 0.0,
        "missed": sorted(truth - found),
        "wrong": {k: round(max(v for i, v in matches if i.split("#")[0] == k), 3) for k in sorted(found - truth)},
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


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def markdown(r: dict) -> str:
    m, g, n, s, fc = r["machine"], r["gateway"], r["naive"], r["settings"], r["face_counts"]
    gi, ni, again = g["index"], n["index"], g["index_again"]
    statuses = ", ".join(f"{k} {v}" for k, v in gi["statuses"].items())
    again_statuses = ", ".join(f"{k} {v}" for k, v in again["statuses"].items())

    def lat(x: dict) -> str:
        return f"{x['p50_ms']} / {x['p99_ms']}"

    def acc(a: dict) -> str:
        return (
            f"{a['true_photos']}/{a['labelled_photos']} photos of {PERSON} found, {a['photos']} photos "
            f"returned ({a['matches']} matches with repeats): precision {a['precision']}, recall {a['recall']}"
            + (f"; missed {', '.join(a['missed'])}" if a["missed"] else "")
            + (
                f"; wrong (best similarity) {', '.join(f'{k} ({v})' for k, v in a['wrong'].items())}"
                if a["wrong"]
                else ""
            )
        )

    lines = [
        "# Gateway end to end: IndexPhotos and FindMe against the naive script",
        "",
        f"{m['date']}, {m['cpu_count']} CPUs ({m['processor']}), {m['platform']}, Python {m['python']}, "
        f"torch {m['torch']}. Load average at the start: {s['load_average_start']}, at the end: "
        f"{m['load_average']} (the machine was shared; figures within ~20% are within its noise).",
        "",
        "Settings:",
        "",
        f"- Photos: {s['photos']} = the {s['distinct_photos']} photos of labels.json (photoprism first) "
        f"repeated; each repeat is made distinct bytes by a JPEG COM marker inserted after the APPn "
        f"segments (same pixels, new SHA-256), so the gateway does not skip it as a duplicate.",
        "- facesearch: `launcher.in_process.LocalSuite` in this process with the project's defaults: the "
        "detector (MTCNN, torch 1 thread x 2 workers), a real Triton (ONNX Runtime via the python "
        "backend, 1 instance x 1 thread, dynamic batching), search on the edge store, the gateway; "
        "one `FaceSearchClient.index` stream for all photos, then the same stream again.",
        f"- naive: facenet-pytorch `MTCNN(keep_all=True)` per photo at full size (decode with PIL, "
        f"EXIF-rotated), `InceptionResnetV1` with the CASIA weights on that photo's crops, vectors in a "
        f"numpy array; torch.set_num_threads({s['threads']}). The same network and standardisation "
        f"((x - 127.5) / 128) as the served model; MTCNN crops are not aligned.",
        f"- Gallery for FindMe: {g['gallery_faces']} faces for facesearch ({g['gallery_real_faces']} real "
        f"from the photos + synthetic, upserted into the search service in {g['fill_seconds']} s), "
        f"{n['gallery_faces']} vectors for naive (its own real faces + the same synthetic vectors). "
        f"Synthetic: unit vectors around random identity centres, same-person cosine ~0.75.",
        f"- FindMe: reference {'/'.join(REFERENCE)} ({s['queries']} calls after one warm-up, limit "
        f"{FIND_LIMIT}, threshold {g['threshold']}); by person_id: {PERSON} enrolled from the same photo. "
        f"Naive: `MTCNN()` (largest face) + network + numpy `matrix @ v` with the same threshold; "
        f"'by person' is the numpy search alone with the stored vector.",
        "",
        "| measure | facesearch | naive | speed-up (facesearch vs naive) |",
        "|---|---:|---:|---:|",
        f"| IndexPhotos, photos/s | **{gi['photos_per_s']}** | {ni['photos_per_s']} | "
        f"**{ratio(gi['photos_per_s'], ni['photos_per_s'])}** |",
        f"| IndexPhotos, faces/s | {gi['faces_per_s']} | {ni['faces_per_s']} | "
        f"{ratio(gi['faces_per_s'], ni['faces_per_s'])} |",
        f"| IndexPhotos, seconds for {s['photos']} photos | {gi['seconds']} | {ni['seconds']} | |",
        f"| faces stored | {gi['faces_stored']} | {ni['faces_stored']} | |",
        f"| IndexPhotos again (duplicates), photos/s | {again['photos_per_s']} ({again['seconds']} s) | "
        "no skipping: as the first pass | |",
        f"| FindMe by reference photo, p50 / p99 ms | **{lat(g['find_me_photo'])}** | {lat(n['find_me_photo'])} | "
        f"**{ratio(n['find_me_photo']['p50_ms'], g['find_me_photo']['p50_ms'])}** (p50) |",
        f"| FindMe by person_id (search only), p50 / p99 ms | {lat(g['find_me_person'])} | "
        f"{lat(n['find_me_person'])} | {ratio(n['find_me_person']['p50_ms'], g['find_me_person']['p50_ms'])} (p50) |",
        "",
        "Speed-up: facesearch photos/s / naive photos/s, or naive latency / facesearch latency; above 1x "
        "facesearch is faster. "
        "Naive 'by person_id' is the numpy search alone, in this process, without any network hop.",
        "",
        f"Statuses, first pass: {statuses}. Second pass: {again_statuses} (photos where no face was "
        f"found are stored as nothing, so they are detected again).",
        "",
        f"Accuracy ({PERSON}, labels.json; a photo's repeats count as that photo):",
        "",
        f"- facesearch FindMe by person_id: {acc(r['accuracy']['gateway_person'])}",
        f"- facesearch FindMe by reference photo: {acc(r['accuracy']['gateway_photo'])}",
        f"- naive brute force by reference photo: {acc(r['accuracy']['naive_photo'])}",
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
    ours, theirs = r["accuracy"]["gateway_person"], r["accuracy"]["naive_photo"]
    verdict = (
        f"FindMe for {PERSON} through facesearch found {ours['true_photos']}/{ours['labelled_photos']} of "
        f"{PERSON}'s photos (recall {ours['recall']}) against {theirs['true_photos']}/{theirs['labelled_photos']} "
        f"for the naive script (recall {theirs['recall']}), with precision {ours['precision']} against "
        f"{theirs['precision']}"
    )
    if ours["recall"] >= theirs["recall"] and ours["precision"] >= theirs["precision"]:
        verdict += ": at least as good on both, so the speed is not from doing less"
    elif ours["recall"] >= theirs["recall"]:
        verdict += (
            f": it finds as many or more, but also returns {len(ours['wrong'])} photo(s) without "
            f"{PERSON} at threshold {g['threshold']}"
        )
    else:
        verdict += ": it finds fewer of them; weigh the speed against that"
    return [
        f"Indexing: {gi['photos_per_s']} photos/s through the gateway against {ni['photos_per_s']} for the "
        f"naive script on the same photos and cores: {'faster' if index_ratio >= 1 else 'slower'}, "
        f"{index_ratio:.2f}x ({gi['faces_stored']} faces stored against {ni['faces_stored']}).",
        f"Sending the same photos again takes {again['seconds']} s against {gi['seconds']} s the first time: "
        "duplicates are skipped by their hash; the photos without a face are detected again.",
        f"FindMe with a photo, {g['gallery_faces']} faces stored: {photo} ms p50 against {naive_photo} ms naive. "
        f"By an enrolled person it is {person} ms, so about {photo - person:.0f} ms of the photo call is "
        "detecting and embedding the reference.",
        f"Search alone: {person} ms through gateway and search service (two gRPC hops, the enrolled "
        f"person's vectors fetched, then the query) against {naive_search} ms for numpy over "
        f"{n['gallery_faces']} vectors in memory: at this size exact search is cheap; the service's "
        "cost is its hops and the lookup of the person's vectors, for a store on disk shared by tenants.",
        f"Accuracy: {verdict}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--photos", type=int, default=82, help="photos indexed (default: the 41 photos twice)")
    parser.add_argument("--gallery", type=int, default=10_000, help="gallery faces for FindMe (real + synthetic)")
    parser.add_argument("--queries", type=int, default=50, help="timed FindMe calls per way")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the naive script")
    parser.add_argument("--models", type=Path, default=REPO / "var" / "models", help="model repository")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic vectors")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()

    load_start = [round(x, 2) for x in os.getloadavg()]
    photos, sets = load_photos(args.data, args.photos)
    synthetic = synthetic_vectors(args.gallery, args.seed)
    print(f"{len(photos)} photos from {args.data}, gallery {args.gallery}, {args.queries} queries")
    with tempfile.TemporaryDirectory(prefix="facesearch-e2e-") as work:
        gateway = run_gateway(args, photos, synthetic, Path(work))
    naive = run_naive(args, photos, synthetic, gateway["threshold"])
    result = {
        "settings": {
            "photos": len(photos),
            "distinct_photos": len({p.key for p in photos}),
            "queries": args.queries,
            "threads": args.threads,
            "load_average_start": load_start,
        },
        "gateway": gateway,
        "naive": naive,
        "accuracy": {
            "gateway_person": accuracy(gateway["matches_person"], sets, photos),
            "gateway_photo": accuracy(gateway["matches_photo"], sets, photos),
            "naive_photo": accuracy(naive["matches_photo"], sets, photos),
        },
        "face_counts": face_counts(sets, gateway["index"]["faces_by_photo"], naive["index"]["faces_by_photo"]),
        "machine": machine(),
    }
    if gateway["more_pages"]:
        print("warning: FindMe had more matches than one page; accuracy counts the first page only")
    report = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway_end_to_end.md").write_text(report)
    print(report)
    print(f"results: {args.out / 'gateway_end_to_end.md'}")


if __name__ == "__main__":
    main()
