"""Search benchmark: the edge backend (Qdrant's engine in-process) at archive scale.

Synthetic vectors shaped like real face embeddings: identities with a unit
centre each, faces spread around it so that same-person cosine similarity is
about 0.75 (L2 distance ~0.7) and different-person about 0 (L2 ~1.4), as
measured with FaceNet on real photos. Measures upsert rate, index build time,
query latency p50/p99 with and without a person filter, recall@10 against
exact search (with and without the filter), how far returned scores are from the
exact cosine, recall and latency over a few oversampling factors, disk by kind of
file, and memory. The store's layout (quantization, on-disk vectors and graph) comes
from the flags; the store's settings are read from the store object used; the
machine's load is measured over the run and over each phase (``bench.report.LoadMeter``).

Memory: the benchmark keeps its copy of the vectors in a memory-mapped file, and the
store's resident memory is this process's RSS less that file's resident pages and less
what the process held before the store was opened (``StoreMemory``); it is sampled
every second, and read after the upsert, after the index build and during the queries.

Results go to bench/results/search_latency_<N>_<variant>.{json,md}.

    python -m bench.search_latency --points 100000 [--queries 200] [--quantization int8 ...]
    python -m bench.search_latency --render bench/results/search_latency_1000000.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
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
from services.search.store.edge import EdgeFaceStore, VectorLayout

SIZE = 512
MODEL = "facenet-casia"
COLLECTION = f"faces-{MODEL}-{SIZE}"
FACES_PER_PERSON = 20
# Per-dimension noise giving same-person cosine similarity ~0.75 around a unit centre.
SPREAD = 0.6 / np.sqrt(SIZE)
OVERSAMPLING_SWEEP = (1.0, 2.0, 4.0)
HNSW_EF_SWEEP = (64, 128, 256, 512)
TRUTH_CHUNK = 100_000


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


class StoreMemory:
    """The store's resident memory: this process's RSS (from /proc/self/smaps) less the
    pages of the benchmark's own vector file and less a baseline taken before the store
    existed; a thread samples it so the peak is known."""

    def __init__(self, own_file: Path, interval_s: float = 1.0) -> None:
        self.own_file = str(own_file)
        self.interval_s = interval_s
        self.baseline = 0
        self.baseline = self.bytes()["rss"]
        self.peak = 0
        self._peak_lock = threading.Lock()
        self._period = 0  # a sample read during an earlier period (before restart_peak) is dropped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="store-memory", daemon=True)

    def bytes(self) -> dict[str, int]:
        """Resident bytes now: all of them (rss), and the file-backed part (file)."""
        rss = file_backed = 0
        mapping, kb = "", {}
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                first = line.split(maxsplit=1)[0]
                if not first.endswith(":"):  # a mapping's header line: address range ... path
                    rss, file_backed = self._add(mapping, kb, rss, file_backed)
                    parts = line.split(maxsplit=5)
                    mapping, kb = (parts[5].strip() if len(parts) > 5 else ""), {}
                elif first in ("Rss:", "Anonymous:"):
                    kb[first] = int(line.split()[1])
        rss, file_backed = self._add(mapping, kb, rss, file_backed)
        return {"rss": max(0, rss - self.baseline), "file": file_backed}

    def _add(self, mapping: str, kb: dict[str, int], rss: int, file_backed: int) -> tuple[int, int]:
        if not kb or mapping == self.own_file:
            return rss, file_backed
        resident = kb.get("Rss:", 0) * 1024
        return rss + resident, file_backed + resident - kb.get("Anonymous:", 0) * 1024

    def _note(self, rss: int, period: int) -> None:
        with self._peak_lock:
            if period == self._period:
                self.peak = max(self.peak, rss)

    def restart_peak(self) -> int:
        """The peak so far; the next starts now."""
        with self._peak_lock:
            peak, self.peak = self.peak, 0
            self._period += 1
            return peak

    def mb(self) -> dict[str, float]:
        period = self._period
        now = self.bytes()
        self._note(now["rss"], period)
        return {"store_rss_mb": round(now["rss"] / 2**20, 1), "store_rss_file_backed_mb": round(now["file"] / 2**20, 1)}

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            period = self._period
            self._note(self.bytes()["rss"], period)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_by_kind(path: Path) -> dict[str, float]:
    """MiB on disk under a shard folder: original vectors, quantized vectors, HNSW graph,
    payload and its indexes, the rest (id tracker, configuration)."""
    kinds = dict.fromkeys(("vectors", "quantized_vectors", "hnsw", "payload", "other"), 0)
    for file in (p for p in path.rglob("*") if p.is_file()):
        parts = file.relative_to(path).parts
        if file.name.startswith("quantized"):
            kind = "quantized_vectors"
        elif "vector_index" in parts:
            kind = "hnsw"
        elif "vector_storage" in parts:
            kind = "vectors"
        elif any(part.startswith("payload") for part in parts):
            kind = "payload"
        else:
            kind = "other"
        kinds[kind] += file.stat().st_size
    return {f"{kind}_mb": round(size / 2**20, 1) for kind, size in kinds.items()}


def percentile_ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)) * 1000, 3)


def store_settings(store: EdgeFaceStore, batch: int) -> dict:
    """The edge store's settings as the object used holds them, and the upsert batch."""
    names = ("hnsw_m", "hnsw_ef_construct", "hnsw_ef", "optimize_after", "indexing_threshold_kb", "rescore")
    settings = {"backend": "edge", **{name: getattr(store, name, None) for name in names}}
    settings.update(asdict(store.layout))
    settings["oversampling"] = store.oversampling
    return {**settings, "upsert_batch": batch}


def variant_name(layout: VectorLayout) -> str:
    """int8-vectors-on-disk, none, none-hnsw-on-disk, ..."""
    parts = [layout.quantization]
    if layout.vectors_on_disk:
        parts.append("vectors-on-disk")
    if layout.hnsw_on_disk:
        parts.append("hnsw-on-disk")
    if layout.quantization != "none" and not layout.quantization_always_ram:
        parts.append("quantized-on-disk")
    return "-".join(parts)


def exact_top(probes: np.ndarray, vectors: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Rows of the exact top-k per probe (cosine of unit vectors), read in chunks of the
    memory-mapped vectors; ``allowed`` masks the rows a filter admits."""
    best_scores = np.full((len(probes), 0), -np.inf, np.float32)
    best_rows = np.zeros((len(probes), 0), np.int64)
    for start in range(0, len(vectors), TRUTH_CHUNK):
        scores = probes @ np.asarray(vectors[start : start + TRUTH_CHUNK]).T
        if allowed is not None:
            scores[:, ~allowed[start : start + TRUTH_CHUNK]] = -np.inf
        rows = np.arange(start, start + scores.shape[1])
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, np.broadcast_to(rows, scores.shape)], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_rows = np.take_along_axis(best_rows, keep, axis=1)
    return best_rows


def recall(answers: list[list[int]], truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(found) & set(rows)) / len(rows) for found, rows in zip(answers, truth)])), 4)


def own_memory_mb() -> dict[str, float]:
    """This process's resident memory now: anonymous (heap) and file-backed, MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {kind: int(fields[f"Rss{kind.title()}"].split()[0]) / 1024 for kind in ("anon", "file")}


def reopened(work: Path, probes_file: Path, store_options: dict) -> dict:
    """In a fresh process (``--reopen``): opens the built store as a restarted service would,
    answers the probes twice (the first pass faults pages in), and reports the memory the
    store added to the process and the second pass's latency."""
    before = own_memory_mb()
    began = time.perf_counter()
    store = EdgeFaceStore(work, optimize_after=2**62, **store_options)
    store.wait_for_optimizers()
    open_seconds = time.perf_counter() - began
    index = FaceIndex(store, {MODEL: SIZE})
    probes = np.load(probes_file)
    latencies = []
    for _ in range(2):
        latencies.clear()
        for probe in probes:
            began = time.perf_counter()
            index.query("bench", MODEL, SIZE, [probe.tolist()], top_k=10)
            latencies.append(time.perf_counter() - began)
    after = own_memory_mb()
    store.close()
    return {
        "reopened_open_s": round(open_seconds, 1),
        "reopened_query_p50_ms": percentile_ms(latencies, 50),
        "reopened_store_rss_anon_mb": round(after["anon"] - before["anon"], 1),
        "reopened_store_rss_file_backed_mb": round(after["file"] - before["file"], 1),
    }


def measure_reopened(work: Path, probes: np.ndarray) -> dict:
    """``reopened`` in a child process, with this run's store flags."""
    probes_file = work.with_name(work.name + "-probes.npy")
    np.save(probes_file, probes)
    layout_flags = [a for a in sys.argv[1:] if a not in ("--render",)]
    command = [
        sys.executable,
        "-m",
        "bench.search_latency",
        *layout_flags,
        "--reopen",
        str(work),
        "--probes",
        str(probes_file),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    finally:
        probes_file.unlink()
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(points: int, queries: int, batch: int, work: Path, meter: LoadMeter, store_options: dict) -> dict:
    vectors_file = work.with_name(work.name + "-vectors.f32")
    all_vectors = np.lib.format.open_memmap(vectors_file, mode="w+", dtype=np.float32, shape=(points, SIZE))
    all_people = np.zeros(points, np.int64)
    memory = StoreMemory(vectors_file)
    memory.start()
    store = EdgeFaceStore(work, optimize_after=points + 1, **store_options)  # the index is built once, below
    index = FaceIndex(store, {MODEL: SIZE}, max_batch=batch)
    phases, rss = {}, {}
    phase_start = meter.reading()
    upsert_seconds = 0.0
    for start, vectors, person in face_vectors(points):
        all_vectors[start : start + len(vectors)] = vectors
        all_people[start : start + len(vectors)] = person
        for offset in range(0, len(vectors), batch):
            rows = range(offset, min(offset + batch, len(vectors)))
            faces = [
                NewFace(vectors[i], {"photo_hash": f"{start + i}", "person_id": f"person-{person[i]}"}) for i in rows
            ]
            began = time.perf_counter()
            index.upsert("bench", MODEL, SIZE, faces)
            upsert_seconds += time.perf_counter() - began
    all_vectors.flush()
    phases["upsert"] = meter.usage(phase_start, phase_start := meter.reading())
    rss["after_upsert"] = memory.mb()
    began = time.perf_counter()
    store.optimize(COLLECTION)
    build_seconds = time.perf_counter() - began
    phases["index_build"] = meter.usage(phase_start, phase_start := meter.reading())
    rss["after_build"] = memory.mb()
    peak_until_queries = memory.restart_peak()

    rng = np.random.default_rng(1)
    picks = rng.choice(points, size=queries, replace=False)
    probes = np.asarray(all_vectors[picks]) + rng.normal(scale=SPREAD, size=(queries, SIZE)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    person_filter = FaceFilter(person_ids=tuple(f"person-{p}" for p in range(0, 1000, 7)))

    def timed(face_filter: FaceFilter | None) -> tuple[list[float], list[list[int]], list[float]]:
        latencies, answers, score_errors = [], [], []
        for probe in probes:
            began = time.perf_counter()
            [hits] = index.query("bench", MODEL, SIZE, [probe.tolist()], top_k=10, face_filter=face_filter)
            latencies.append(time.perf_counter() - began)
            rows = [int(h.payload["photo_hash"]) for h in hits]
            answers.append(rows)
            exact_scores = np.asarray(all_vectors[sorted(rows)]) @ probe if rows else np.zeros(0)
            found = dict(zip(sorted(rows), exact_scores))
            score_errors += [abs(h.score - float(found[row])) for h, row in zip(hits, rows)]
        return latencies, answers, score_errors

    timed(None)  # warm-up: the first queries fault in the graph and the vectors
    plain, answers, errors = timed(None)
    rss["during_queries"] = memory.mb()
    filtered, filtered_answers, filtered_errors = timed(person_filter)

    def swept(setting: str, values) -> dict:
        """The probes again with the store's ``setting`` at each value (then as it was)."""
        configured, answers_by_value = getattr(store, setting), {}
        for value in values:
            setattr(store, setting, value)
            latencies, found, _ = timed(None)
            answers_by_value[str(value)] = {"p50_ms": percentile_ms(latencies, 50), "answers": found}
        setattr(store, setting, configured)
        return answers_by_value

    sweep = swept("oversampling", OVERSAMPLING_SWEEP)
    ef_sweep = swept("hnsw_ef", HNSW_EF_SWEEP)
    phases["queries"] = meter.usage(phase_start, meter.reading())
    rss["peak_during_queries"] = round(memory.peak / 2**20, 1)

    truth = exact_top(probes, all_vectors, 10)
    allowed = np.isin(all_people, np.arange(0, 1000, 7))
    filtered_truth = exact_top(probes, all_vectors, 10, allowed)
    for measured in (*sweep.values(), *ef_sweep.values()):
        measured["recall_at_10"] = recall(measured.pop("answers"), truth)
    first_person = np.asarray(all_vectors[all_people == all_people[0]])
    same = float(np.mean((first_person @ first_person.T)[np.triu_indices(len(first_person), 1)]))
    pairs = np.asarray(all_vectors[:2000])
    other = float(np.mean(np.sum(pairs[::2] * pairs[1::2], axis=1)))
    disk = folder_bytes(work)
    disk_kinds = disk_by_kind(work)
    settings = store_settings(store, batch)
    store.close()
    memory.stop()
    vectors_file.unlink()
    restarted = measure_reopened(work, probes)
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
        "recall_at_10": recall(answers, truth),
        "filtered_recall_at_10": recall(filtered_answers, filtered_truth),
        "max_score_error": float(f"{max(errors + filtered_errors, default=0.0):.2e}"),
        "disk_mb": round(disk / 2**20, 1),
        **{f"disk_{kind}": size for kind, size in disk_kinds.items()},
        **{f"{key}_after_upsert": value for key, value in rss["after_upsert"].items()},
        **{f"{key}_after_build": value for key, value in rss["after_build"].items()},
        **{f"{key}_during_queries": value for key, value in rss["during_queries"].items()},
        "store_rss_peak_build_mb": round(peak_until_queries / 2**20, 1),
        "store_rss_peak_queries_mb": rss["peak_during_queries"],
        **restarted,
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "same_person_mean_cosine": round(same, 3),
        "random_pair_mean_cosine": round(other, 3),
        "target": "at 1M points: p50 < 10 ms with recall@10 >= 0.95",
        "oversampling_sweep": sweep,
        "hnsw_ef_sweep": ef_sweep,
        "store_settings": settings,
        "load_by_phase": phases,
    }


RECORD_KEYS = (
    *("machine", "load", "load_by_phase", "store_settings", "command"),
    *("oversampling_sweep", "hnsw_ef_sweep", "variant"),
)


def markdown(result: dict) -> str:
    """The figures as a table; the machine, the store's settings and the load where the run
    recorded them (runs before these were recorded say so)."""
    rows = "\n".join(f"| {key} | {value} |" for key, value in result.items() if key not in RECORD_KEYS)
    m = result["machine"]
    if "packages" in m:
        machine = machine_line(m)
    else:
        machine = f"{m['date']}, {m['cpu_count']} CPUs, Python {m['python']}, {m['platform']}."
    variant = f", {result['variant']}" if "variant" in result else ""
    lines = [f"# Search latency, edge backend{variant}, {result['points']} points", "", machine, ""]
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
    if result.get("oversampling_sweep"):
        lines += ["", "Unfiltered queries at other oversampling factors (same probes, after the runs above):", ""]
        lines += ["| oversampling | p50 ms | recall@10 |", "|---|---|---|"]
        lines += [f"| {f} | {m['p50_ms']} | {m['recall_at_10']} |" for f, m in result["oversampling_sweep"].items()]
    if result.get("hnsw_ef_sweep"):
        lines += ["", "Unfiltered queries at other HNSW beam widths (hnsw_ef), configured oversampling:", ""]
        lines += ["| hnsw_ef | p50 ms | recall@10 |", "|---|---|---|"]
        lines += [f"| {ef} | {m['p50_ms']} | {m['recall_at_10']} |" for ef, m in result["hnsw_ef_sweep"].items()]
    return "\n".join(lines) + "\n"


def layout_options(parser: argparse.ArgumentParser) -> None:
    default = VectorLayout()
    parser.add_argument("--quantization", choices=("none", "int8"), default="int8")
    parser.add_argument("--quantile", type=float, default=default.quantization_quantile)
    parser.add_argument("--quantized-on-disk", action="store_true", help="do not keep the quantized vectors in RAM")
    parser.add_argument("--vectors-on-disk", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--hnsw-on-disk", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--rescore", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--oversampling", type=float, default=2.0)


def store_options_from(args: argparse.Namespace) -> dict:
    layout = VectorLayout(
        quantization=args.quantization,
        quantization_quantile=args.quantile,
        quantization_always_ram=not args.quantized_on_disk,
        vectors_on_disk=args.vectors_on_disk,
        hnsw_on_disk=args.hnsw_on_disk,
    )
    return {"layout": layout, "rescore": args.rescore, "oversampling": args.oversampling}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=None, help="folder for the shard (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", type=Path, help="only rewrite the markdown beside this results JSON file")
    parser.add_argument("--reopen", type=Path, help=argparse.SUPPRESS)  # the child of measure_reopened
    parser.add_argument("--probes", type=Path, help=argparse.SUPPRESS)
    layout_options(parser)
    args = parser.parse_args()
    if args.reopen:
        print(json.dumps(reopened(args.reopen, args.probes, store_options_from(args))))
        return
    if args.render:
        print(f"rewrote {render_again(args.render, markdown)}")
        return
    # A stop (SIGTERM) unwinds like an interrupt, so the temporary shard folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    store_options = store_options_from(args)
    variant = variant_name(store_options["layout"])
    meter = LoadMeter()
    meter.start()
    work = args.work or Path(tempfile.mkdtemp(prefix="facesearch-bench-")) / "shards"
    try:
        result = run(args.points, args.queries, args.batch, work, meter, store_options)
    finally:
        if args.work is None:
            shutil.rmtree(work.parent, ignore_errors=True)
    result["variant"] = variant
    result["load"] = meter.summary()
    meter.stop()
    result["command"] = " ".join(["python -m bench.search_latency", *sys.argv[1:]])
    result["machine"] = machine_facts(["numpy", "qdrant-edge-py"])
    json_path, md_path = write_results(args.out, f"search_latency_{args.points}_{variant}", result, markdown)
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
