"""Load test: concurrent Verify, Identify and FindMe callers through the whole suite, past capacity.

The suite runs in this process (``launcher.in_process.LocalSuite``: detector, a real Triton
serving FaceNet from ``--models``, search on the edge store and the gateway, with the
shipped defaults), on loopback. A small archive is indexed first (the photoprism set) and
one person enrolled. Then, for each number of callers in ``--callers`` (4, 16, 64, 256),
that many callers call at once, each in a loop, for ``--seconds`` or until ``--calls``
calls of the level have started, whichever comes first: caller i calls Verify (two
one-person photos), Identify (a group photo) or FindMe (one reference photo) as i mod 3
says. A caller refused with RESOURCE_EXHAUSTED waits what the gateway asks
(``grpc-retry-pushback-ms``) and goes on, as the SDK's retry policy does; calls are made
with no retries of their own, so every refusal is counted. Each call's deadline is
``--timeout-s``.

Per level: calls and their statuses per RPC, p50/p99 latency of the answered calls and of
the refusals, calls/s; memory: the resident set (VmRSS, sampled every 0.2 s) of this
process, which holds the gateway, the detector and search (and the callers), and of
Triton's processes (the server and its model's stub); and the peak (VmHWM) of this process. Results go to
bench/results/load_test.{json,md}.

    python -m bench.load_test [--callers 4 16 64 256] [--seconds 20] [--calls 5000]
    python -m bench.load_test --render bench/results/load_test.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from bench.report import (
    DEFAULT_DATA,
    REPO,
    RESULTS,
    LoadMeter,
    load_line,
    machine_facts,
    machine_line,
    render_again,
    settings_of,
    write_results,
)
from facesearch.v1 import facesearch_pb2, facesearch_pb2_grpc
from gateway.admission import PUSHBACK_HEADER
from launcher.in_process import KEYS, LocalSuite, prepare_model_repository
from sdk.client import FaceSearchClient

NAME = "load_test"
TENANT = "acme"
KINDS = ("Verify", "Identify", "FindMe")
SAMPLE_S = 0.2
CALLERS_PER_CHANNEL = 32  # callers share a connection, as an app's threads would


@dataclass
class Budget:
    """The calls a level may still start, and until when."""

    calls: int
    until: float

    def take(self) -> bool:
        if self.calls <= 0 or time.monotonic() >= self.until:
            return False
        self.calls -= 1
        return True


@dataclass
class Level:
    callers: int
    latencies: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))


def rss_mb(pid: int | str = "self", field_name: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def tree_rss_mb(pid: int) -> float:
    """The resident sets of a process and all its descendants, added up (Triton runs the model
    in a Python-backend stub process of its own)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += rss_mb(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                pass
    return round(total, 1)


class MemorySampler:
    """The largest resident set of this process and of Triton's since ``reset``."""

    def __init__(self, triton_pid: int | None) -> None:
        self.triton_pid = triton_pid
        self.peak = {"process": 0.0, "triton": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak["process"] = max(self.peak["process"], rss_mb())
            if self.triton_pid is not None:
                self.peak["triton"] = max(self.peak["triton"], tree_rss_mb(self.triton_pid))

    def reset(self) -> dict[str, float]:
        peak = dict(self.peak)
        self.peak = {"process": rss_mb(), "triton": tree_rss_mb(self.triton_pid) if self.triton_pid else 0.0}
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def photo(data: Path, name: str) -> facesearch_pb2.Photo:
    return facesearch_pb2.Photo(content=(data / "photoprism" / name).read_bytes())


def requests(data: Path) -> dict[str, tuple[str, object]]:
    """Each RPC's method name and request."""
    return {
        "Verify": ("Verify", facesearch_pb2.VerifyRequest(a=photo(data, "2.jpg"), b=photo(data, "4.jpg"))),
        "Identify": ("Identify", facesearch_pb2.IdentifyRequest(photo=photo(data, "1.jpg"))),
        "FindMe": ("FindMe", facesearch_pb2.FindMeRequest(references=[photo(data, "6.jpg")], limit=50)),
    }


async def caller(stub, kind: str, request, budget: Budget, level: Level, timeout_s: float) -> None:
    method = getattr(stub, kind)
    metadata = (("authorization", f"Bearer {KEYS[TENANT]}"),)
    while budget.take():
        began = time.perf_counter()
        pushback_ms = 0
        try:
            await method(request, metadata=metadata, timeout=timeout_s)
            status = "OK"
        except grpc.aio.AioRpcError as error:
            status = error.code().name
            trailers = dict(error.trailing_metadata() or ())
            pushback_ms = int(trailers.get(PUSHBACK_HEADER, 0) or 0)
        level.latencies[(kind, status)].append(time.perf_counter() - began)
        if pushback_ms:
            await asyncio.sleep(pushback_ms / 1000)


async def run_level(
    address: str, callers: int, calls: int, seconds: float, timeout_s: float, data: Path
) -> tuple[Level, float]:
    level = Level(callers)
    per_kind = requests(data)
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20), ("grpc.channel_n", n)])
        for n in range((callers + CALLERS_PER_CHANNEL - 1) // CALLERS_PER_CHANNEL)
    ]
    stubs = [facesearch_pb2_grpc.FaceSearchStub(channel) for channel in channels]
    budget = Budget(calls, time.monotonic() + seconds)
    began = time.monotonic()
    try:
        await asyncio.gather(
            *(
                caller(
                    stubs[i // CALLERS_PER_CHANNEL], KINDS[i % 3], per_kind[KINDS[i % 3]][1], budget, level, timeout_s
                )
                for i in range(callers)
            )
        )
    finally:
        for channel in channels:
            await channel.close()
    return level, time.monotonic() - began


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def level_result(level: Level, seconds: float, memory: dict[str, float]) -> dict:
    by_rpc: dict[str, dict] = {}
    for kind in KINDS:
        statuses = {status: len(v) for (k, status), v in level.latencies.items() if k == kind}
        answered = level.latencies.get((kind, "OK"), [])
        refused = level.latencies.get((kind, "RESOURCE_EXHAUSTED"), [])
        by_rpc[kind] = {
            "statuses": dict(sorted(statuses.items())),
            "ok_p50_ms": percentile_ms(answered, 50),
            "ok_p99_ms": percentile_ms(answered, 99),
            "ok_max_ms": percentile_ms(answered, 100),
            "refused_p50_ms": percentile_ms(refused, 50),
            "refused_p99_ms": percentile_ms(refused, 99),
        }
    totals = Counter()
    for (_, status), values in level.latencies.items():
        totals[status] += len(values)
    return {
        "callers": level.callers,
        "seconds": round(seconds, 1),
        "calls": sum(totals.values()),
        "statuses": dict(sorted(totals.items())),
        "answered_per_s": round(totals["OK"] / seconds, 2) if seconds else None,
        "by_rpc": by_rpc,
        "rss_mb": {"process_max": memory["process"], "triton_max": memory["triton"]},
    }


def prepare_archive(client: FaceSearchClient, data: Path) -> dict:
    photos = sorted((data / "photoprism").glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
    results = list(client.index([facesearch_pb2.Photo(id=p.name, content=p.read_bytes()) for p in photos]))
    enrolled = client.enroll("M", [data / "photoprism" / "2.jpg"])
    return {"photos": len(results), "faces": sum(r.faces_stored for r in results), "enrolled": enrolled.reference_faces}


def run(args: argparse.Namespace, work: Path, meter: LoadMeter) -> dict:
    embedder = prepare_model_repository(args.models)
    suite = LocalSuite(work, embedder)
    sampler = MemorySampler(suite.triton.process.pid if suite.triton.process else None)
    try:
        with FaceSearchClient(suite.address, KEYS[TENANT], timeout_s=300) as client:
            archive = prepare_archive(client, args.data)
            for kind, (_, request) in requests(args.data).items():  # one warm-up call of each, not measured
                getattr(client._stub, kind)(request, metadata=client._metadata, timeout=120)
        idle = {"process": rss_mb(), "triton": tree_rss_mb(sampler.triton_pid) if sampler.triton_pid else 0.0}
        print(f"archive {archive}; idle RSS {idle}")
        levels = []
        sampler.reset()
        for callers in args.callers:
            reading = meter.reading()
            level, seconds = asyncio.run(
                run_level(suite.address, callers, args.calls, args.seconds, args.timeout_s, args.data)
            )
            result = level_result(level, seconds, sampler.reset())
            result["load"] = meter.usage(reading, meter.reading())
            levels.append(result)
            print(f"{callers} callers: {result['statuses']} in {result['seconds']} s, RSS {result['rss_mb']}")
        return {
            "archive": archive,
            "idle_rss_mb": idle,
            "peak_rss_mb": rss_mb(field_name="VmHWM"),
            "levels": levels,
            "gateway_settings": settings_of(
                suite.gateway_settings,
                exclude=("similarity_thresholds", "page_token_key", "detector_address", "search_address"),
            ),
        }
    finally:
        sampler.stop()
        suite.stop()


def markdown(result: dict) -> str:
    settings = result["settings"]
    gateway = result["run"]["gateway_settings"]
    lines = [
        "# Load test: Verify, Identify and FindMe callers at once",
        "",
        f"Command: `{result['command']}`. {machine_line(result['machine'])}",
        "",
        f"The whole suite in one process (gateway, detector, search on the edge store) and Triton serving "
        f"FaceNet in its own, shipped defaults: the gateway serves at most {gateway['max_concurrent_calls']} "
        f"calls and {gateway['max_request_mb']:g} MB of requests at once, retry hint "
        f"{gateway['retry_after_s']:g} s. Archive: {result['run']['archive']['photos']} photos "
        f"({result['run']['archive']['faces']} faces), one person enrolled. Each level: at most "
        f"{settings['seconds']:g} s and {settings['calls']} calls; a call's deadline {settings['timeout_s']:g} s; "
        "callers split evenly over Verify (two photos), Identify (a group photo) and FindMe (one reference); "
        "a refused caller waits the hint, then calls again.",
        "",
        "| callers | calls | OK | RESOURCE_EXHAUSTED | other errors | answered/s | OK p50 / p99 ms "
        "(Verify, Identify, FindMe) | refused p50 / p99 ms | RSS max MB (process, Triton) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in result["run"]["levels"]:
        statuses = level["statuses"]
        other = {k: v for k, v in statuses.items() if k not in ("OK", "RESOURCE_EXHAUSTED")}
        latency = ", ".join(f"{level['by_rpc'][k]['ok_p50_ms']} / {level['by_rpc'][k]['ok_p99_ms']}" for k in KINDS)
        refused = [
            (level["by_rpc"][k]["refused_p50_ms"], level["by_rpc"][k]["refused_p99_ms"])
            for k in KINDS
            if level["by_rpc"][k]["refused_p99_ms"] is not None
        ]
        lines.append(
            f"| {level['callers']} | {level['calls']} | {statuses.get('OK', 0)} | "
            f"{statuses.get('RESOURCE_EXHAUSTED', 0)} | {', '.join(f'{k} {v}' for k, v in other.items()) or 0} | "
            f"{level['answered_per_s']} | {latency} | "
            f"{' / '.join(str(max(r[i] for r in refused)) for i in (0, 1)) if refused else '-'} | "
            f"{level['rss_mb']['process_max']}, {level['rss_mb']['triton_max']} |"
        )
    idle = result["run"]["idle_rss_mb"]
    lines += [
        "",
        f"Idle RSS after indexing and warm-up: process {idle['process']} MB, Triton {idle['triton']} MB; "
        f"peak of the process over the whole run (VmHWM) {result['run']['peak_rss_mb']} MB.",
        "",
        load_line(result["load"]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--models", type=Path, default=REPO / "var" / "models", help="model repository")
    parser.add_argument("--callers", type=int, nargs="+", default=[4, 16, 64, 256], help="callers at once, per level")
    parser.add_argument("--seconds", type=float, default=20.0, help="longest a level starts calls")
    parser.add_argument("--calls", type=int, default=5000, help="most calls a level starts")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="each call's deadline")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--render", type=Path, help="only rewrite the markdown beside this results JSON file")
    args = parser.parse_args()
    if args.render:
        print(f"rewrote {render_again(args.render, markdown)}")
        return
    meter = LoadMeter()
    meter.start()
    with tempfile.TemporaryDirectory(prefix="facesearch-load-") as work:
        run_result = run(args, Path(work), meter)
    load = meter.summary()
    meter.stop()
    result = {
        "benchmark": NAME,
        "command": " ".join(["python -m bench.load_test", *sys.argv[1:]]),
        "settings": {
            "callers": args.callers,
            "seconds": args.seconds,
            "calls": args.calls,
            "timeout_s": args.timeout_s,
            "data": str(args.data),
        },
        "run": run_result,
        "load": load,
        "machine": machine_facts(["grpcio", "onnxruntime", "qdrant-edge-py", "numpy"]),
    }
    json_path, md_path = write_results(args.out, NAME, result, markdown)
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
