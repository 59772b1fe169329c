"""Clustering: how pure and complete the clusters are, and what a run costs.

Two parts, both through the gateway's own clustering run (``gateway.clustering``) against a
real search service (the edge backend, on disk in a temporary folder):

- labelled photos: every photo of ../shared/data indexed into one tenant by the whole suite
  in this process (``launcher.in_process.LocalSuite``: detector, Triton serving
  facenet-casia, search, gateway; default settings), then a full run started with
  StartClustering. Pairwise precision, recall and F1 over the faces the labels name (a pair
  in one cluster is right when both are one identity, wrong when the labels say they are
  two people: ``evaluation.calibration.pair_kind``), the clusters of the photoprism set's
  M and W, and whether a face of the compreface group photos joined them. The same faces'
  vectors are then clustered again in-process at a few other settings, for comparison.
- synthetic faces (as the search benchmark makes them: 20 faces per identity, same-person
  cosine about 0.75): a full run over N faces, then 1% more faces and an incremental run;
  the time of each, and pairwise precision / recall against the identities.

Results: bench/results/clustering.{json,md}.

    python -m bench.clustering [--sizes 10000 100000] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from bench.report import DEFAULT_DATA, REPO, RESULTS, heading, measured
from bench.search_latency import SIZE, face_vectors
from evaluation.calibration import GENUINE, IMPOSTOR, found_faces, load_labels, pair_kind
from facesearch.v1 import common_pb2, search_pb2
from gateway.clustering import GALLERY, ClusteringRun
from gateway.dependencies import Dependencies
from gateway.downstream import SearchClient
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from launcher.in_process import KEYS, LocalSuite, prepare_model_repository
from sdk.client import FaceSearchClient, as_photo
from services.runtime.background import BackgroundServer
from services.runtime.deadlines import Deadline
from services.search.server import build_server as build_search
from services.search.settings import SearchSettings

MODEL = common_pb2.EmbeddingModel(id="facenet-casia", version="1", dimension=SIZE)
TENANT = "evaluation"
SETTINGS_COMPARED = [  # (cluster threshold, min neighbours); the first is the default
    (0.55, 2),
    (0.50, 2),
    (0.60, 2),
    (0.55, 1),
    (0.55, 3),
]


# --- pairwise measures ----------------------------------------------------------------------------


def pairwise(clusters: dict[str, str], kinds: dict[tuple[str, str], str]) -> dict:
    """Precision, recall and F1 over labelled pairs: ``clusters`` face -> cluster ("" none),
    ``kinds`` (face, face) -> GENUINE or IMPOSTOR."""
    right = wrong = missed = 0
    for (a, b), kind in kinds.items():
        together = bool(clusters.get(a)) and clusters.get(a) == clusters.get(b)
        if kind == GENUINE:
            right += together
            missed += not together
        elif together:
            wrong += 1
    precision = right / (right + wrong) if right + wrong else 1.0
    recall = right / (right + missed) if right + missed else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "pairs": {"right": right, "wrong": wrong, "missed": missed},
    }


def synthetic_pairwise(cluster_of: dict[str, str], identity_of: dict[str, int]) -> dict:
    """The same measures against synthetic identities, counted per cluster (no pair lists)."""
    by_cluster: dict[str, Counter] = defaultdict(Counter)
    for face, cluster in cluster_of.items():
        if cluster:
            by_cluster[cluster][identity_of[face]] += 1
    right = sum(n * (n - 1) // 2 for counts in by_cluster.values() for n in counts.values())
    together = sum(sum(c.values()) * (sum(c.values()) - 1) // 2 for c in by_cluster.values())
    true_pairs = sum(n * (n - 1) // 2 for n in Counter(identity_of.values()).values())
    precision = right / together if together else 1.0
    recall = right / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "clusters": len(by_cluster)}


# --- clustering faces in-process -----------------------------------------------------------------


@dataclass
class Store:
    """A search service of its own and the gateway dependencies a clustering run needs."""

    server: BackgroundServer
    deps: Dependencies

    @classmethod
    def start(cls, folder: Path, **gateway_settings) -> Store:
        server = BackgroundServer(build_search(SearchSettings(port=0, path=folder, optimize_after=1000)))
        settings = GatewaySettings(thresholds_file=None, cluster_after_new_faces=0, **gateway_settings)
        search = SearchClient(server.address, settings.retry_policy(), 64)
        deps = Dependencies(settings, None, search, MODEL, GatewayMetrics(CollectorRegistry()))  # type: ignore[arg-type]
        return cls(server, deps)

    def stop(self) -> None:
        self.server.stop()

    async def add(self, faces: list[search_pb2.FaceRecord]) -> None:
        for start in range(0, len(faces), 512):
            request = search_pb2.UpsertRequest(tenant=TENANT, model=MODEL, faces=faces[start : start + 512])
            await self.deps.search.upsert(request, Deadline.after(600))

    async def cluster(self, full: bool) -> tuple[float, dict]:
        """(seconds, counts) of one run."""
        started = time.perf_counter()
        counts = await ClusteringRun(self.deps, TENANT, full, lambda _: None).run(Deadline.after(24 * 3600))
        return time.perf_counter() - started, {"faces_to_do": counts.faces_to_do, "clustered": counts.clustered}

    async def assignments(self) -> dict[str, str]:
        """Face id -> cluster id."""
        request = search_pb2.ScrollRequest(
            tenant=TENANT, model=MODEL, page_size=1000, filter=search_pb2.FaceFilter(source=GALLERY)
        )
        faces = await self.deps.search.scroll_all(request, Deadline.after(600), limit=10_000_000)
        return {f.id: f.payload.cluster_id for f in faces}


def synthetic_faces(vectors: np.ndarray, start: int) -> list[search_pb2.FaceRecord]:
    return [
        search_pb2.FaceRecord(
            id=str(uuid.UUID(int=start + i + 1)),
            vector=vector.tolist(),
            payload=search_pb2.FacePayload(
                photo_id=f"photo-{start + i}",
                face_index=0,
                source=GALLERY,
                quality=common_pb2.FaceQuality(face_size=120, blur_variance=200),
            ),
        )
        for i, vector in enumerate(vectors)
    ]


async def synthetic(size: int, work: Path) -> dict:
    added = max(1, size // 100)
    chunks = list(face_vectors(size + added, seed=1, chunk=size))
    base, extra = chunks[0], chunks[1] if len(chunks) > 1 else None
    store = Store.start(work / f"synthetic-{size}")
    try:
        await store.add(synthetic_faces(base[1], 0))
        full_s, full = await store.cluster(full=True)
        await store.add(synthetic_faces(extra[1], size))
        incremental_s, incremental = await store.cluster(full=False)
        identity = {str(uuid.UUID(int=i + 1)): int(p) for i, p in enumerate(np.concatenate([base[2], extra[2]]))}
        quality = synthetic_pairwise(await store.assignments(), identity)
    finally:
        store.stop()
    return {
        "faces": size,
        "added": added,
        "full_run_s": full_s,
        "full": full,
        "incremental_run_s": incremental_s,
        "incremental": incremental,
        "incremental_share_of_full": incremental_s / full_s,
        "pairwise": quality,
    }


# --- the labelled photos through the suite --------------------------------------------------------


def labelled(data: Path, models: Path, work: Path) -> dict:
    photos = load_labels(data / "labels.json")
    embedder = prepare_model_repository(models)
    suite = LocalSuite(work / "suite", embedder, cluster_after_new_faces=0)
    try:
        with FaceSearchClient(suite.address, KEYS[TENANT], timeout_s=600) as client:
            results = list(client.index(as_photo(p.path, p.key) for p in photos))
            stored = {r.photo_id: r.faces_stored for r in results}
            started = time.perf_counter()
            client.start_clustering(full=True)
            status = client.wait_for_clustering(timeout_s=3600)
            served_s = time.perf_counter() - started
        faces = asyncio.run(_stored_faces(suite))
    finally:
        suite.stop()
    # The labels of each stored face ("photo#index").
    by_key = {p.key: p for p in photos}
    known = {}
    for photo_key, count in stored.items():
        for face in found_faces(by_key[photo_key], count):
            known[f"{photo_key}#{face.index}"] = face
    kinds = {}
    names = sorted(known)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            kind = pair_kind(known[a], known[b])
            if kind in (GENUINE, IMPOSTOR):
                kinds[(a, b)] = kind
    served = {f"{f.payload.photo_id}#{f.payload.face_index}": f.payload.cluster_id for f in faces}
    result = {
        "photos": len(photos),
        "faces": len(known),
        "labelled_pairs": {
            "same_person": sum(k == GENUINE for k in kinds.values()),
            "different_person": len(kinds) - sum(k == GENUINE for k in kinds.values()),
        },
        "served": {
            "status": {
                "clusters": status.clusters,
                "clustered": status.clustered_faces,
                "unclustered": status.unclustered_faces,
            },
            "seconds": served_s,
            **pairwise(served, kinds),
            "people": photoprism_people(served, by_key),
        },
        "compared": [],
    }
    for threshold, min_neighbours in SETTINGS_COMPARED:
        in_process = asyncio.run(_cluster_again(faces, work, threshold, min_neighbours))
        result["compared"].append(
            {
                "threshold": threshold,
                "min_neighbours": min_neighbours,
                **pairwise(in_process, kinds),
                "people": photoprism_people(in_process, by_key),
            }
        )
    return result


def photoprism_people(clusters: dict[str, str], photos: dict) -> dict:
    """For M and W: faces of theirs (in one-person photos or not), the largest cluster holding
    them and what else it holds; and any compreface group-photo face in their clusters."""
    out = {}
    for person in ("M", "W"):
        theirs = [k for k in clusters if k.startswith("photoprism/") and person in photos[k.split("#")[0]].people]
        counts = Counter(clusters[k] for k in theirs if clusters[k])
        if not counts:
            out[person] = {"photos": len({k.split("#")[0] for k in theirs}), "largest_cluster": 0}
            continue
        cluster, _ = counts.most_common(1)[0]
        holding = [k for k, c in clusters.items() if c == cluster]
        photos_in = {k.split("#")[0] for k in holding}
        out[person] = {
            "photos": len({k.split("#")[0] for k in theirs}),
            "largest_cluster": len(photos_in),
            "of_their_photos": sum(person in photos[p].people for p in photos_in),
            "other_photos": sorted(p for p in photos_in if person not in photos[p].people),
            "compreface_group_faces": sorted(
                k for k in holding if k.startswith("compreface/") and photos[k.split("#")[0]].faces > 1
            ),
        }
    return out


async def _stored_faces(suite: LocalSuite) -> list[search_pb2.FaceRecord]:
    search = SearchClient(suite.search_address, GatewaySettings(thresholds_file=None).retry_policy(), 64)
    search.send_service_token(suite.gateway_settings.service_token)
    try:
        request = search_pb2.ScrollRequest(
            tenant=TENANT, model=MODEL, page_size=1000, with_vectors=True, filter=search_pb2.FaceFilter(source=GALLERY)
        )
        return await search.scroll_all(request, Deadline.after(600), limit=10_000_000)
    finally:
        await search.close()


async def _cluster_again(
    faces: list[search_pb2.FaceRecord], work: Path, threshold: float, min_neighbours: int
) -> dict[str, str]:
    store = Store.start(
        work / f"labelled-{threshold}-{min_neighbours}",
        cluster_thresholds={MODEL.id: threshold},
        cluster_min_neighbours=min_neighbours,
    )
    try:
        fresh = []
        for face in faces:
            copy = search_pb2.FaceRecord()
            copy.CopyFrom(face)
            copy.payload.cluster_id, copy.payload.cluster_run, copy.payload.cluster_core = "", 0, False
            fresh.append(copy)
        await store.add(fresh)
        await store.cluster(full=False)
        keys = {f.id: f"{f.payload.photo_id}#{f.payload.face_index}" for f in faces}
        return {keys[i]: c for i, c in (await store.assignments()).items()}
    finally:
        store.stop()


# --- the report -----------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    lines = [
        *heading("Clustering: pure clusters, and the cost of a run", result),
        f"Command: `{result['command']}`.",
        "",
    ]
    if "labelled" in result:
        lab = result["labelled"]
        served = lab["served"]
        lines += [
            "## The labelled photos",
            "",
            f"{lab['photos']} photos of {result['data']} indexed into one tenant by the whole suite (default "
            f"settings), {lab['faces']} faces stored; {lab['labelled_pairs']['same_person']} same-person and "
            f"{lab['labelled_pairs']['different_person']} different-person pairs the labels tell.",
            "",
            f"A full run through the gateway (StartClustering; default settings) took {served['seconds']:.1f} s: "
            f"{served['status']['clusters']} clusters, {served['status']['clustered']} faces in them, "
            f"{served['status']['unclustered']} not. Pairwise precision **{served['precision']:.3f}**, recall "
            f"**{served['recall']:.3f}**, F1 {served['f1']:.3f} ({served['pairs']}).",
            "",
            "| threshold | min neighbours | precision | recall | F1 | M: largest cluster (theirs / other photos) "
            "| W: largest cluster (theirs / other photos) |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in [{"threshold": "served", "min_neighbours": "", **served}, *lab["compared"]]:
            cells = []
            for person in ("M", "W"):
                p = row["people"][person]
                cells.append(
                    f"{p.get('of_their_photos', 0)} of {p['photos']} / {len(p.get('other_photos', []))}"
                    + (
                        f"; group-photo strangers {len(p['compreface_group_faces'])}"
                        if p.get("compreface_group_faces")
                        else ""
                    )
                )
            lines.append(
                f"| {row['threshold']} | {row['min_neighbours']} | {row['precision']:.3f} | {row['recall']:.3f} "
                f"| {row['f1']:.3f} | {cells[0]} | {cells[1]} |"
            )
        lines.append("")
    lines += [
        "## Synthetic faces",
        "",
        "| faces | full run (s) | 1% added | incremental run (s) | incremental / full | precision | recall | F1 "
        "| clusters |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["synthetic"]:
        q = row["pairwise"]
        lines.append(
            f"| {row['faces']} | {row['full_run_s']:.1f} | {row['added']} | {row['incremental_run_s']:.2f} "
            f"| {row['incremental_share_of_full']:.3f} | {q['precision']:.3f} | {q['recall']:.3f} | {q['f1']:.3f} "
            f"| {q['clusters']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000], help="synthetic faces per run")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--models", type=Path, default=REPO / "var" / "models", help="model repository")
    parser.add_argument("--skip-labelled", action="store_true", help="the synthetic part only")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args()

    def measure() -> dict:
        result: dict = {"data": str(args.data)}
        with tempfile.TemporaryDirectory(prefix="facesearch-clustering-") as work:
            if not args.skip_labelled:
                result["labelled"] = labelled(args.data, args.models, Path(work))
                print(result["labelled"]["served"], flush=True)
            result["synthetic"] = []
            for size in args.sizes:
                result["synthetic"].append(asyncio.run(synthetic(size, Path(work))))
                print(result["synthetic"][-1], flush=True)
        return result

    measured("clustering", measure, ["numpy", "qdrant-edge-py", "grpcio"], args.out, markdown)


if __name__ == "__main__":
    main()
