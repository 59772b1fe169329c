"""Search benchmark: the edge backend (Qdrant's engine in-process) at archive scale.

Synthetic vectors shaped like real face embeddings: identities with a unit
centre each, faces spread around it so that same-person cosine similarity is
about 0.75 (L2 distance ~0.7) and different-person about 0 (L2 ~1.4), as
measured with FaceNet on real photos. Measures upsert rate, index build time,
query latency p50/p99 with and without a person filter, recall@10 against
exact search, disk and memory. The store's settings are read from the store object
used; the machine's load is measured over the run and over each phase
(``bench.report.LoadMeter``). Results go to bench/results/search_latency_<N>.{json,md}.

    python -m bench.search_latency --points 100000 [--queries 200]
    python -m bench.search_latency --render bench/results/search_latency_1000000.json
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import (
    RESULTS,
    LoadMeter,
    load_line,
    machine_facts,
    machine_line,
    phase_line,
    render_again,
    write_results,
)
from services.search.faces import FaceFilter, FaceIndex, NewFace
from services.search.store.edge import EdgeFaceStore

SIZE = 512
MODEL = "facenet-casia"
FACES_PER_PERSON = 20
# Per-dimension noise giving same-person cosine similarity ~0.75 around a unit centre.
SPREAD = 0.6 / np.sqrt(SIZE)


def face_vectors(count: int, seed: int = 0, chunk: int = 50_000):
    """Yields (start, vectors, person ids) chunks of clustered unit vectors."""
    rng = np.random.default_rng(seed)
    people = max(1, count // FACES_PER_PERSON)
    centres = rng.normal(size=(people, SIZE)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        person = rng.integers(0, people, size=n)
        vectors = centres[person] + rng.normal(scale=SPREAD, size=(n, SIZE)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield start, vectors, person


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def percentile_ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)) * 1000, 3)


def store_settings(store: EdgeFaceStore, batch: int) -> dict:
    """The edge store's settings as the object used holds them, and the upsert batch."""
    names = ("hnsw_m", "hnsw_ef_construct", "hnsw_ef", "optimize_after", "indexing_threshold_kb")
    return {"backend": "edge", **{name: getattr(store, name, None) for name in names}, "upsert_batch": batch}


def run(points: int, queries: int, batch: int, work: Path, meter: LoadMeter) -> dict:
    store = EdgeFaceStore(work, optimize_after=points + 1)  # build the index once, explicitly
    index = FaceIndex(store, {MODEL: SIZE}, max_batch=batch)
    phases = {}
    phase_start = meter.reading()
    all_vectors = np.zeros((points, SIZE), np.float32)
    all_people = np.zeros(points, np.int64)
    upsert_seconds = 0.0
    for start, vectors, person in face_vectors(points):
        all_vectors[start : start + len(vectors)] = vectors
        all_people[start : start + len(vectors)] = person
        for offset in range(0, len(vectors), batch):
            rows = range(offset, min(offset + batch, len(vectors)))
            faces = [
                NewFace(vectors[i], {"photo_hash": f"photo-{start + i}", "person_id": f"person-{person[i]}"})
                for i in rows
            ]
            began = time.perf_counter()
            index.upsert("bench", MODEL, SIZE, faces)
            upsert_seconds += time.perf_counter() - began
    phases["upsert"] = meter.usage(phase_start, phase_start := meter.reading())
    began = time.perf_counter()
    store.optimize(f"faces-{MODEL}-{SIZE}")
    build_seconds = time.perf_counter() - began
    phases["index_build"] = meter.usage(phase_start, phase_start := meter.reading())

    rng = np.random.default_rng(1)
    picks = rng.choice(points, size=queries, replace=False)
    probes = all_vectors[picks] + rng.normal(scale=SPREAD, size=(queries, SIZE)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)

    def timed(face_filter: FaceFilter | None) -> tuple[list[float], list[list[str]]]:
        latencies, answers = [], []
        for probe in probes:
            began = time.perf_counter()
            [hits] = index.query("bench", MODEL, SIZE, [probe.tolist()], top_k=10, face_filter=face_filter)
            latencies.append(time.perf_counter() - began)
            answers.append([h.payload["photo_hash"] for h in hits])
        return latencies, answers

    plain, answers = timed(None)
    filtered, _ = timed(FaceFilter(person_ids=tuple(f"person-{p}" for p in range(0, 1000, 7))))
    phases["queries"] = meter.usage(phase_start, meter.reading())
    exact = np.argsort(-(probes @ all_vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(found) & {f"photo-{i}" for i in truth}) / 10 for found, truth in zip(answers, exact)])
    first_person = all_vectors[all_people == all_people[0]]
    same = float(np.mean((first_person @ first_person.T)[np.triu_indices(len(first_person), 1)]))
    other = float(np.mean(np.sum(all_vectors[:2000:2] * all_vectors[1:2001:2], axis=1)))
    disk = folder_bytes(work)
    settings = store_settings(store, batch)
    store.close()
    return {
        "points": points,
        "queries": queries,
        "upsert_batch": batch,
        "upsert_points_per_s": round(points / upsert_seconds),
        "index_build_s": round(build_seconds, 1),
        "query_p50_ms": percentile_ms(plain, 50),
        "query_p99_ms": percentile_ms(plain, 99),
        "filtered_query_p50_ms": percentile_ms(filtered, 50),
        "filtered_query_p99_ms": percentile_ms(filtered, 99),
        "recall_at_10": round(float(recall), 4),
        "disk_mb": round(disk / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "same_person_mean_cosine": round(same, 3),
        "random_pair_mean_cosine": round(other, 3),
        "target": "at 1M points: p50 < 10 ms with recall@10 >= 0.95",
        "store_settings": settings,
        "load_by_phase": phases,
    }


RECORD_KEYS = ("machine", "load", "load_by_phase", "store_settings", "command")


def markdown(result: dict) -> str:
    """The figures as a table; the machine, the store's settings and the load where the run
    recorded them (runs before these were recorded say so)."""
    rows = "\n".join(f"| {key} | {value} |" for key, value in result.items() if key not in RECORD_KEYS)
    m = result["machine"]
    if "packages" in m:
        machine = machine_line(m)
    else:
        machine = f"{m['date']}, {m['cpu_count']} CPUs, Python {m['python']}, {m['platform']}."
    lines = [f"# Search latency, edge backend, {result['points']} points", "", machine, ""]
    if "command" in result:
        lines += [f"Command: `{result['command']}`.", ""]
    if "store_settings" in result:
        lines += [
            "Store: " + ", ".join(f"{key} {value}" for key, value in result["store_settings"].items()) + ".",
            "",
        ]
    if "load" in result:
        lines += [load_line(result["load"]), ""]
        lines += [f"- {phase_line(name, usage)}." for name, usage in result.get("load_by_phase", {}).items()]
        lines.append("")
    else:
        lines += ["This run recorded neither the machine's load nor the store's settings.", ""]
    lines += ["| measure | value |", "|---|---|", rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=None, help="folder for the shard (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", type=Path, help="only rewrite the markdown beside this results JSON file")
    args = parser.parse_args()
    if args.render:
        print(f"rewrote {render_again(args.render, markdown)}")
        return
    meter = LoadMeter()
    meter.start()
    work = args.work or Path(tempfile.mkdtemp(prefix="facesearch-bench-"))
    try:
        result = run(args.points, args.queries, args.batch, work, meter)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["load"] = meter.summary()
    meter.stop()
    result["command"] = " ".join(["python -m bench.search_latency", *sys.argv[1:]])
    result["machine"] = machine_facts(["numpy", "qdrant-edge-py"])
    json_path, md_path = write_results(args.out, f"search_latency_{args.points}", result, markdown)
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
