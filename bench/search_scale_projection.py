"""The search store at 1M and 2M faces side by side, and 10M projected on paper.

Reads the search latency results (bench/results/search_latency_<N>[_<variant>].json): the
unquantized 1M run, and the archive layout (int8 vectors with rescoring, originals on disk)
at 1M and 2M. Writes bench/results/search_scale.md. Run it again when a run lands:

    python -m bench.search_scale_projection [--variant int8-vectors-on-disk]

The projection is arithmetic, not a measurement: each size that grows with the number of
faces is fitted as a line through the measured points (through the origin when only one
run is there), latency as a line in log N (an HNSW search visits about log N layers).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench.report import RESULTS

TARGET = 10_000_000
MACHINE_GIB = 24
SIZE = 512
HNSW_M = 16
DEFAULT_VARIANT = "int8-vectors-on-disk"

# (label, key, unit) of the figures compared side by side.
FIGURES = (
    ("upsert rate", "upsert_points_per_s", "faces/s"),
    ("index build", "index_build_s", "s"),
    ("query p50", "query_p50_ms", "ms"),
    ("query p99", "query_p99_ms", "ms"),
    ("filtered query p50", "filtered_query_p50_ms", "ms"),
    ("filtered query p99", "filtered_query_p99_ms", "ms"),
    ("recall@10", "recall_at_10", ""),
    ("filtered recall@10", "filtered_recall_at_10", ""),
    ("largest score error", "max_score_error", ""),
    ("disk, all", "disk_mb", "MiB"),
    ("disk, float32 vectors", "disk_vectors_mb", "MiB"),
    ("disk, int8 vectors", "disk_quantized_vectors_mb", "MiB"),
    ("disk, HNSW graph", "disk_hnsw_mb", "MiB"),
    ("disk, payload and its indexes", "disk_payload_mb", "MiB"),
    ("store RSS during queries, after the build", "store_rss_mb_during_queries", "MiB"),
    ("of it file-backed (page cache)", "store_rss_file_backed_mb_during_queries", "MiB"),
    ("store RSS peak, upsert and build", "store_rss_peak_build_mb", "MiB"),
    ("restarted service: open time", "reopened_open_s", "s"),
    ("restarted service: query p50", "reopened_query_p50_ms", "ms"),
    ("restarted service: store heap", "reopened_store_rss_anon_mb", "MiB"),
    ("restarted service: store file-backed", "reopened_store_rss_file_backed_mb", "MiB"),
    ("process peak RSS", "peak_rss", "MiB"),
)


def size_label(points: int) -> str:
    return f"{points / 1_000_000:g}M" if points >= 1_000_000 else f"{points / 1000:g}k"


def load_runs(results: Path, variant: str) -> tuple[dict | None, list[dict]]:
    """The unquantized 1M run from before (if there), and the variant's runs by size."""
    baseline_path = results / "search_latency_1000000.json"
    baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else None
    runs = [json.loads(p.read_text()) for p in sorted(results.glob(f"search_latency_*_{variant}.json"))]
    return baseline, sorted(runs, key=lambda run: run["points"])


def same_size_runs(results: Path) -> dict[int, list[dict]]:
    """Runs of more than one layout at the same size, by size (run back to back, so their
    figures compare)."""
    by_size: dict[int, list[dict]] = {}
    for path in sorted(results.glob("search_latency_*_*.json")):
        run = json.loads(path.read_text())
        if path.stem == f"search_latency_{run['points']}_{run.get('variant')}":  # not a kept extra run
            by_size.setdefault(run["points"], []).append(run)
    return {n: sorted(r, key=lambda run: run["variant"]) for n, r in sorted(by_size.items()) if len(r) > 1}


COMPARED = (
    ("index build (s)", "index_build_s"),
    ("query p50 (ms)", "query_p50_ms"),
    ("filtered query p50 (ms)", "filtered_query_p50_ms"),
    ("recall@10", "recall_at_10"),
    ("disk, all (MiB)", "disk_mb"),
    ("restarted service: store heap (MiB)", "reopened_store_rss_anon_mb"),
    ("restarted service: store file-backed (MiB)", "reopened_store_rss_file_backed_mb"),
    ("restarted service: query p50 (ms)", "reopened_query_p50_ms"),
)


def beam_width_table(runs: list[dict]) -> list[str]:
    """Recall@10 and p50 by HNSW beam width (hnsw_ef) for each run that measured them."""
    measured = [run for run in runs if run.get("hnsw_ef_sweep")]
    if not measured:
        return []
    widths = list(measured[0]["hnsw_ef_sweep"])
    lines = ["| hnsw_ef | " + " | ".join(f"{size_label(r['points'])}: recall@10, p50 ms" for r in measured) + " |"]
    lines.append("|---|" + "---|" * len(measured))
    for ef in widths:
        cells = [f"{r['hnsw_ef_sweep'][ef]['recall_at_10']}, {r['hnsw_ef_sweep'][ef]['p50_ms']}" for r in measured]
        lines.append(f"| {ef} | " + " | ".join(cells) + " |")
    return lines


def layout_comparison(results: Path) -> list[str]:
    lines = []
    for points, runs in same_size_runs(results).items():
        lines += [f"At {size_label(points)} faces, one layout after the other:", ""]
        lines.append("| figure | " + " | ".join(run["variant"] for run in runs) + " |")
        lines.append("|---|" + "---|" * len(runs))
        lines += [f"| {label} | " + " | ".join(fmt(figure(r, key)) for r in runs) + " |" for label, key in COMPARED]
        lines.append("")
    return lines


def figure(run: dict, key: str):
    if key == "peak_rss":
        return run.get("process_peak_rss_mb", run.get("peak_rss_mb"))
    if key == "store_anon":
        rss, file_backed = run.get("store_rss_mb_during_queries"), run.get("store_rss_file_backed_mb_during_queries")
        return None if rss is None or file_backed is None else round(rss - file_backed, 1)
    return run.get(key)


def linear(points: list[tuple[int, float]], n: int) -> float:
    """A line through two measured points (the latest two), or through the origin and one."""
    if len(points) == 1:
        (n1, y1) = points[0]
        return y1 * n / n1
    (n1, y1), (n2, y2) = points[-2:]
    return y1 + (y2 - y1) * (n - n1) / (n2 - n1)


def logarithmic(points: list[tuple[int, float]], n: int) -> float:
    if len(points) == 1:
        return points[0][1]  # one run: no growth measured; shown as measured
    (n1, y1), (n2, y2) = points[-2:]
    return y1 + (y2 - y1) * (math.log(n) - math.log(n1)) / (math.log(n2) - math.log(n1))


def measured_points(runs: list[dict], key: str) -> list[tuple[int, float]]:
    return [(run["points"], figure(run, key)) for run in runs if figure(run, key) is not None]


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) < 1e-2 and value:
        return f"{value:.1e}"
    if isinstance(value, (int, float)) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def side_by_side(baseline: dict | None, runs: list[dict]) -> list[str]:
    columns = ([("1M, float32 in RAM (before)", baseline)] if baseline else []) + [
        (f"{size_label(run['points'])}, {run.get('variant', '')}", run) for run in runs
    ]
    lines = ["| figure | " + " | ".join(name for name, _ in columns) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    for label, key, unit in FIGURES:
        cells = [fmt(figure(run, key)) for _, run in columns]
        lines.append(f"| {label}{f' ({unit})' if unit else ''} | " + " | ".join(cells) + " |")
    return lines


def projection(runs: list[dict]) -> tuple[list[str], dict]:
    """Rows of the 10M projection, and the figures the sizing paragraph uses."""
    gib = 1 / 1024
    rows, projected = [], {}
    fits = (
        ("disk, all", "disk_mb", linear, gib, "GiB"),
        ("disk, float32 vectors (page cache, not required in RAM)", "disk_vectors_mb", linear, gib, "GiB"),
        ("disk, int8 vectors (in RAM: quantization_always_ram)", "disk_quantized_vectors_mb", linear, gib, "GiB"),
        ("disk, HNSW graph (in RAM unless hnsw_on_disk)", "disk_hnsw_mb", linear, gib, "GiB"),
        ("disk, payload and its indexes (memory-mapped)", "disk_payload_mb", linear, gib, "GiB"),
        ("store RSS during queries after the build, anonymous (heap)", "store_anon", linear, gib, "GiB"),
        ("restarted service: store heap", "reopened_store_rss_anon_mb", linear, gib, "GiB"),
        ("restarted service: store file-backed", "reopened_store_rss_file_backed_mb", linear, gib, "GiB"),
        ("store RSS during queries, file-backed", "store_rss_file_backed_mb_during_queries", linear, gib, "GiB"),
        ("store RSS peak during upsert and build", "store_rss_peak_build_mb", linear, gib, "GiB"),
        ("index build", "index_build_s", linear, 1 / 3600, "h"),
        ("query p50", "query_p50_ms", logarithmic, 1, "ms"),
        ("query p99", "query_p99_ms", logarithmic, 1, "ms"),
        ("filtered query p50", "filtered_query_p50_ms", logarithmic, 1, "ms"),
    )
    for label, key, fit, scale, unit in fits:
        points = measured_points(runs, key)
        if not points:
            continue
        value = fit(points, TARGET) * scale
        projected[key] = value
        measured = ", ".join(f"{size_label(n)}: {y * scale:.2f}" for n, y in points)
        rows.append(f"| {label} | {measured} | {value:.2f} {unit} |")
    header = ["| figure | measured | 10M, projected |", "|---|---|---|"]
    return header + rows, projected


def paper_sizing(projected: dict) -> list[str]:
    """RAM at 10M from first principles beside the fitted figures."""
    gib = 2**30
    int8 = TARGET * (SIZE + 4) / gib  # one byte a dimension and a 4-byte offset a vector
    graph = TARGET * 2 * HNSW_M * 4 / gib  # level 0: up to 2m links of 4 bytes a point, before compression
    float32 = TARGET * SIZE * 4 / gib
    restarted = "reopened_store_rss_anon_mb" in projected
    heap = projected.get("reopened_store_rss_anon_mb" if restarted else "store_anon", 0.0)
    cached = projected.get(
        "reopened_store_rss_file_backed_mb" if restarted else "store_rss_file_backed_mb_during_queries", 0.0
    )
    lines = [
        f"- int8 vectors: 10M x ({SIZE} + 4) B = {int8:.1f} GiB, kept in RAM (`quantization_always_ram`).",
        f"- HNSW links, level 0 at most: 10M x 2m x 4 B (m = {HNSW_M}) = {graph:.1f} GiB uncompressed; "
        "the engine stores them compressed (see the measured graph size above), upper levels add ~1/m.",
        f"- float32 originals: 10M x {SIZE} x 4 B = {float32:.1f} GiB on disk, read for rescoring "
        "(oversampling x top_k vectors a query) through the page cache; not required in RAM.",
        "- Payload and its indexes are memory-mapped; the index pages a filter touches are what needs to stay cached.",
        f"- Resident at 10M, {'a restarted service' if restarted else 'after the build'}, projected from "
        f"the runs: {heap:.1f} GiB of heap and {cached:.1f} GiB of file-backed pages, {heap + cached:.1f} GiB "
        f"against {MACHINE_GIB} GiB. The heap holds the int8 vectors ({int8:.1f} GiB by the arithmetic "
        "above), the id tracker and the payload index structures"
        + ("" if restarted else ", and what the allocator kept from building")
        + "; the file-backed part is the graph and the pages of originals and payload the queries read, "
        "which the kernel can drop and read again.",
    ]
    if "store_rss_peak_build_mb" in projected:
        lines.append(
            f"- Building the whole index at once peaks at a projected "
            f"{projected['store_rss_peak_build_mb']:.1f} GiB resident (file-backed pages included). "
            "The benchmark indexes all its faces in one optimize(); a service indexing as faces arrive "
            "(`optimize_after`) builds in smaller steps, which this projection does not measure."
        )
    return lines


def render(baseline: dict | None, runs: list[dict], variant: str, compared: list[str]) -> str:
    lines = [
        "# Search store at scale: 1M and 2M faces measured, 10M projected",
        "",
        "Edge backend (Qdrant's engine in-process), 512-dimension synthetic face vectors "
        "(`bench.search_latency`), 2-CPU machine shared with other work. Written by "
        "`python -m bench.search_scale_projection` from the results JSON files.",
        "",
        f"Archive layout (`{variant}`): int8 scalar quantization (quantile 0.99) kept in RAM, "
        "float32 originals memory-mapped on disk, HNSW graph in RAM, search with oversampling 2 "
        "and rescoring with the originals (scores are exact cosines).",
        "",
        "## Measured",
        "",
        *side_by_side(baseline, runs),
        "",
        "Store RSS is the benchmark process's resident memory less its own vector file and less "
        "what it held before the store was opened; the file-backed part is page cache of the "
        "shard's memory-mapped files, which the kernel can drop under pressure. The run before "
        "(float32 in RAM) recorded only the process peak, which included the benchmark's own "
        "arrays (about 4.5 GB at 1M). The process peak (ru_maxrss) counts every resident page, "
        "file-backed ones included (the benchmark's own vector file and the shard's memory-mapped "
        "files), so it is no measure of the memory needed. A restarted service is a fresh process "
        "that opens the built "
        "store and answers the same probes; its heap is what the store needs resident, free of "
        "what building left in the allocator.",
        "",
    ]
    widths = beam_width_table(runs)
    if widths:
        lines += [
            "## Recall by beam width",
            "",
            "The measured runs searched with hnsw_ef 128 (the figures above); the same probes at other "
            "widths (oversampling 2). Recall at a fixed width falls as the collection grows; the "
            "service's default is 256.",
            "",
            *widths,
            "",
        ]
    if compared:
        lines += ["## Layouts compared", "", *compared]
    if not runs:
        return "\n".join([*lines, "No run of this layout yet.", ""])
    sizes = ", ".join(size_label(run["points"]) for run in runs)
    table, projected = projection(runs)
    basis = (
        "a line through the two largest runs that measured it"
        if len(runs) > 1
        else "proportional to the one run there is (no growth measured yet; re-run this script when the 2M run lands)"
    )
    lines += [
        "## 10M, projected on paper",
        "",
        f"A projection, not a measurement: from the runs at {sizes}, each size is extrapolated as "
        f"{basis}; latencies as a line in log N, at the runs' hnsw_ef 128 (whose recall falls with size: "
        "see the beam-width table; a wider beam costs about 2x the latency per doubling of hnsw_ef). "
        "Build times depend on how busy the shared machine was during each run (its results file "
        "records the load), so the build-time line is rough.",
        "",
        *table,
        "",
        "From first principles:",
        "",
        *paper_sizing(projected),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--variant", default=DEFAULT_VARIANT)
    args = parser.parse_args()
    baseline, runs = load_runs(args.results, args.variant)
    out = args.results / "search_scale.md"
    out.write_text(render(baseline, runs, args.variant, layout_comparison(args.results)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
