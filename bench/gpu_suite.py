"""Every GPU benchmark in turn, on a machine with an NVIDIA GPU, with the GPU named in the results.

First ``nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv`` and
``nvidia-smi -L`` are recorded; without ``nvidia-smi`` (or when it fails) the suite says so
and exits with status 2, running nothing. Then each step runs as a child process
(``python -m bench.<module> ...`` in the repository, its own results written under
``bench/results/gpu_suite/`` so that the CPU results beside this file are kept):

1. ``detector``: ``bench.detector_throughput`` with the detector on CUDA (the benchmark builds
   its ``DetectorSettings`` from the environment: ``FACESEARCH_DETECTOR_DEVICE=cuda``).
   Target: >= 300 photos/s.
2. ``embedder-<flavour>``: ``bench.embedder_throughput --flavour <flavour>`` for each GPU
   flavour of ``services.embedder.serving.flavours`` (instances of kind ``KIND_GPU``) that
   the benchmark measures; a GPU flavour it has no ``--flavour`` for is listed as skipped,
   with the reason. Target: >= 20,000 faces/s end to end through Triton on one H100.
   ``embedder-onnxruntime-onnx`` needs Triton's onnxruntime backend: where the tritonserver
   the benchmark starts (the one bundled in nvidia-pytriton) has none, the benchmark exits
   before measuring, saying so, and the step is recorded as failed with that message.
3. ``indexing``: ``bench.indexing_throughput --detector-device cuda --embedder-flavour
   torch-cuda-python``: IndexPhotos end to end per detector backend and embedding model, the
   detector and Triton's model on the GPU, against the naive script (which stays on the CPU).

For each step the results record its command, exit status, duration, the result files it
wrote and, where its results hold it, the figure its target is about. A step that fails does
not stop the next. Results: bench/results/gpu_suite.{json,md}.

    python -m bench.gpu_suite [--steps detector,embedder-torch-cuda-python,indexing] [--timeout-s 3600]
    python -m bench.gpu_suite --plan    # the steps and their commands, nothing run (no GPU needed)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import REPO, RESULTS, machine_facts, write_results

NAME = "gpu_suite"
DETECTOR_TARGET_PHOTOS_PER_S = 300.0
EMBEDDER_TARGET_FACES_PER_S = 20_000.0
TARGET_GPU = "one H100"
NVIDIA_SMI_QUERIES = (
    ("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"),
    ("nvidia-smi", "-L"),
)
NO_GPU_STATUS = 2
OUTPUT_TAIL_LINES = 40


@dataclass(frozen=True)
class Step:
    """One benchmark run: ``python -m <module> <args>`` with ``env`` added to the environment;
    ``skipped``: why it cannot run (then it is listed, never run)."""

    name: str
    module: str
    args: tuple[str, ...]
    target: str
    env: dict[str, str] = field(default_factory=dict)
    skipped: str = ""
    figure: Callable[[list[Path]], str] | None = None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]

    def command(self) -> str:
        prefix = [f"{key}={shlex.quote(value)}" for key, value in self.env.items()]
        return " ".join([*prefix, "python", "-m", self.module, *map(shlex.quote, self.args)])


# --- reading a step's figure from its results -------------------------------------------------


def results_named(files: list[Path], stem: str) -> dict:
    for path in files:
        if path.name == f"{stem}.json":
            return json.loads(path.read_text())
    raise LookupError(f"no {stem}.json written")


def detector_figure(files: list[Path]) -> str:
    photos_per_s = results_named(files, "detector_throughput")["facesearch"]["photos_per_s"]
    met = "met" if photos_per_s >= DETECTOR_TARGET_PHOTOS_PER_S else "not met"
    return f"{photos_per_s} photos/s through the detector ({met})"


def embedder_figure(flavour: str) -> Callable[[list[Path]], str]:
    def figure(files: list[Path]) -> str:
        rows = results_named(files, f"embedder_throughput_{flavour}")["evaluation"]["per_pass"]
        best = max(rows, key=lambda row: row["best_faces_per_s"])
        slowest_pass = min(row["best_faces_per_s"] for row in rows if row["configuration"] == best["configuration"])
        met = "met" if slowest_pass >= EMBEDDER_TARGET_FACES_PER_S else "not met"
        return (
            f"{best['best_faces_per_s']} faces/s through Triton at best ({best['configuration']}, concurrency "
            f"{best['best_concurrency']}), {slowest_pass} in its slowest pass ({met})"
        )

    return figure


def indexing_figure(files: list[Path]) -> str:
    result = results_named(files, "indexing_throughput")
    indexes = [(row, name, index) for row in result["rows"] for name, index in row["sets"].items()]
    row, name, index = max(indexes, key=lambda item: item[2]["photos_per_s"])
    met = sum(bool(i.get("target_met")) for _, _, i in indexes)
    against = f"{index['speedup_photos']}x the naive script" if "speedup_photos" in index else "naive script not run"
    return (
        f"best {index['photos_per_s']} photos/s ({row['backend']} / {row['model']}, {name} set, {against}); "
        f"{result['target_speedup']:g}x met by {met} of {len(indexes)} rows"
    )


# --- the plan ---------------------------------------------------------------------------------


def gpu_flavours() -> list[str]:
    """The embedder flavours that serve on NVIDIA GPUs."""
    from services.embedder.serving.flavours import FLAVOUR_TABLE

    return [flavour.name for flavour in FLAVOUR_TABLE if flavour.instance_kind == "KIND_GPU"]


def embedder_benchmark_flavours() -> set[str]:
    """The flavours ``bench.embedder_throughput --flavour`` measures."""
    from bench.embedder_throughput import FLAVOUR_DEFAULTS

    return set(FLAVOUR_DEFAULTS)


def plan(out: Path) -> list[Step]:
    """Every GPU benchmark, in the order they run, writing their results into ``out``."""
    where = ("--out", str(out))
    steps = [
        Step(
            "detector",
            "bench.detector_throughput",
            (
                "--batch-size",
                "32",
                "--workers",
                "4",
                "--threads",
                "4",
                "--detector-threads",
                "4",
                "--repeat",
                "3",
                *where,
            ),
            f">= {DETECTOR_TARGET_PHOTOS_PER_S:g} photos/s detection",
            env={"FACESEARCH_DETECTOR_DEVICE": "cuda"},
            figure=detector_figure,
        )
    ]
    measured = embedder_benchmark_flavours()
    for flavour in gpu_flavours():
        skipped = "" if flavour in measured else f"bench.embedder_throughput has no --flavour {flavour}"
        steps.append(
            Step(
                f"embedder-{flavour}",
                "bench.embedder_throughput",
                ("--flavour", flavour, "--concurrency", "1,4,16,64", "--faces-per-request", "16", *where),
                f">= {EMBEDDER_TARGET_FACES_PER_S:,.0f} faces/s embedding through Triton on {TARGET_GPU}",
                skipped=skipped and f"{skipped} (it measures {', '.join(sorted(measured))})",
                figure=embedder_figure(flavour),
            )
        )
    steps.append(
        Step(
            "indexing",
            "bench.indexing_throughput",
            ("--detector-device", "cuda", "--embedder-flavour", "torch-cuda-python", "--threads", "4", *where),
            "IndexPhotos photos/s >= 15x the naive script's on the same photos",
            figure=indexing_figure,
        )
    )
    return steps


# --- running it -------------------------------------------------------------------------------


def nvidia_smi() -> dict[str, str] | None:
    """What ``NVIDIA_SMI_QUERIES`` print; None without nvidia-smi or when it fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    answers = {}
    for query in NVIDIA_SMI_QUERIES:
        try:
            done = subprocess.run(query, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        answers[" ".join(query)] = done.stdout.strip()
    return answers


def run_step(step: Step, out: Path, timeout_s: float) -> dict:
    record = {"name": step.name, "command": step.command(), "target": step.target}
    if step.skipped:
        print(f"== {step.name}: skipped, {step.skipped}", flush=True)
        return {**record, "skipped": step.skipped}
    print(f"== {step.name}: {step.command()}", flush=True)
    began_wall, began = time.time(), time.perf_counter()
    try:
        done = subprocess.run(
            step.argv(),
            cwd=REPO,
            env={**os.environ, **step.env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        status = None
        output = "".join(x.decode() if isinstance(x, bytes) else x or "" for x in (expired.stdout, expired.stderr))
        output += f"\n(stopped after {timeout_s:g} s)"
    seconds = time.perf_counter() - began
    files = sorted(p for p in out.iterdir() if p.is_file() and p.stat().st_mtime >= began_wall)
    lines = output.splitlines()
    figure = f"failed: {lines[-1].strip()}".replace("|", "/") if status != 0 and lines else ""
    if step.figure is not None and status == 0:
        try:
            figure = step.figure(files)
        except (LookupError, KeyError, ValueError, TypeError) as error:
            figure = f"not read from its results ({error})"
    print(f"   exit status {status}, {seconds:.0f} s; {figure or 'no figure'}", flush=True)
    return {
        **record,
        "exit_status": status,
        "seconds": round(seconds, 1),
        "result_files": [str(p.relative_to(REPO) if p.is_relative_to(REPO) else p) for p in files],
        "figure": figure,
        "output_tail": lines[-OUTPUT_TAIL_LINES:],
    }


def markdown(r: dict) -> str:
    lines = [
        "# GPU suite: every GPU benchmark on one machine",
        "",
        f"{r['machine']['date']}; {r['machine']['cpu_count']} CPUs ({r['machine']['processor']}), Python "
        f"{r['machine']['python']}, {r['machine']['platform']}.",
        "",
        "nvidia-smi:",
        "",
    ]
    for query, answer in r["nvidia_smi"].items():
        lines += [f"`{query}`:", "", "```", answer, "```", ""]
    lines += [
        f"Command: `{r['command']}`. Targets: >= {DETECTOR_TARGET_PHOTOS_PER_S:g} photos/s detection, >= "
        f"{EMBEDDER_TARGET_FACES_PER_S:,.0f} faces/s embedding through Triton on {TARGET_GPU}.",
        "",
        "| step | command | exit status | seconds | target | figure | result files |",
        "|---|---|---|---:|---|---|---|",
    ]
    for s in r["steps"]:
        if "skipped" in s:
            lines.append(f"| {s['name']} | `{s['command']}` | skipped: {s['skipped']} | | {s['target']} | | |")
            continue
        files = ", ".join(f"`{f}`" for f in s["result_files"]) or "none"
        lines.append(
            f"| {s['name']} | `{s['command']}` | {s['exit_status']} | {s['seconds']} | {s['target']} | "
            f"{s['figure']} | {files} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="store_true", help="print the steps and their commands; run nothing")
    parser.add_argument("--steps", help="only these steps, comma-separated (default: all)")
    parser.add_argument("--timeout-s", type=float, default=3 * 3600.0, help="longest run of one step")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu_suite.{json,md}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    gpus = None
    if not args.plan:
        gpus = nvidia_smi()  # before anything heavy is imported
        if gpus is None:
            print(
                "bench.gpu_suite needs an NVIDIA GPU: nvidia-smi is not on PATH or fails here, so no GPU "
                "benchmark was run (--plan lists them).",
                file=sys.stderr,
            )
            return NO_GPU_STATUS
    steps_out = args.out.absolute() / NAME
    steps = plan(steps_out.relative_to(REPO) if steps_out.is_relative_to(REPO) else steps_out)
    if args.steps:
        chosen = [name.strip() for name in args.steps.split(",") if name.strip()]
        unknown = sorted(set(chosen) - {s.name for s in steps})
        if unknown:
            parser.error(f"unknown steps {', '.join(unknown)} (of {', '.join(s.name for s in steps)})")
        steps = [s for s in steps if s.name in chosen]
    if gpus is None:
        for number, step in enumerate(steps, 1):
            state = f"skipped: {step.skipped}" if step.skipped else step.command()
            print(f"{number}. {step.name}: {state}\n   target: {step.target}")
        return 0
    for answer in gpus.values():
        print(answer)
    steps_out.mkdir(parents=True, exist_ok=True)
    records = [run_step(step, steps_out, args.timeout_s) for step in steps]
    result = {
        "benchmark": NAME,
        "command": " ".join(["python -m bench.gpu_suite", *(sys.argv[1:] if argv is None else argv)]),
        "nvidia_smi": gpus,
        "steps": records,
        "machine": machine_facts(["torch", "onnxruntime", "nvidia-pytriton"]),
    }
    json_path, md_path = write_results(args.out, NAME, result, markdown)
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")
    failed = [r["name"] for r in records if "skipped" not in r and r["exit_status"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
