"""Embedder throughput: FaceNet served by Triton with dynamic batching against one-at-a-time torch, faces per second.

Everything runs on this machine, in this order:

1. Crops: the project's detector (MTCNN, default settings, in a spawned child process) on
   every photo listed in the data folder's labels.json; its aligned 160 x 160 crops,
   repeated to ``--faces`` faces.
2. Models: ``prepare_models`` (the project's provisioning) writes the ``--flavour`` model
   repository into a temporary folder (or ``--repository``).
3. Serving configuration: each ``--configs`` candidate (instances, intra-op threads,
   dynamic-batching queue delay) is served by a real Triton (the project's ``TritonServer``,
   free ports) and measured briefly at the highest concurrency; the fastest is kept (of
   those within 5% of it, the one with the shortest queue delay). A single candidate
   skips this.
Then ``--passes`` passes (default 2), each measuring 4 to 6 once, on one Triton server:

4. Triton, with the chosen configuration, at each ``--concurrency`` level over all the
   faces: that many requests in flight at once, each of
   ``--faces-per-request`` faces (default one: what many concurrent gateway calls look
   like), sent with the project's async ``TritonEmbedder`` (``create_embedder``).
   Faces/s end to end (gRPC, the python backend, the model), p50/p99 request latency, and
   Triton's own statistics over the timed part (executions vs inferences: the average
   batch the dynamic batcher formed; its batch-size histogram; queue and compute times).
5. Baseline (Triton idle): one-at-a-time in-process torch, ``load_casia_facenet()`` wrapped in
   ``ServedFaceNet``, one crop per forward call, ``torch.set_num_threads(--threads)``; on the
   CPU also with one thread, and the target is judged against the faster of the two (on a
   busy 2-core machine torch's two OpenMP threads can be several times slower than one).
6. References (not part of the target): the served model alone, without a server, at
   ``--model-batch`` crops per run (onnx-python: ONNX Runtime through the project's
   ``InProcessEmbedder``, with the chosen configuration's threads; torch-cuda-python: the
   TorchScript model.pt on the GPU, input already on the device, synchronised); on the
   CPU also ONNX Runtime one crop per run, which separates what batching gains from what
   ONNX Runtime gains over torch.

Warm-up calls are not timed. Results go to bench/results/<name>.{json,md}; the name is
``embedder_throughput`` for onnx-python and ``embedder_throughput_<flavour>`` otherwise.

Targets: onnx-python (CPU): Triton at its best concurrency >= 1.5 x the one-at-a-time torch
faces/s, in every pass. torch-cuda-python (one CUDA GPU, fp16): >= 20,000 faces/s end to end
through Triton and >= 50,000 faces/s for the model alone. The GPU path has not been run
on a GPU in this project yet (no GPU machine; ``--device cpu`` runs its code path on the
CPU); expect to raise ``--faces-per-request`` there, since one Python client process cannot
send 20,000 single-face gRPC requests a second.

    python -m bench.embedder_throughput [--passes 2] [--concurrency 1,4,16] [--faces 256]
    python -m bench.embedder_throughput --flavour torch-cuda-python --concurrency 1,4,16,64
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import platform
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient

from services.embedder.client.factory import create_embedder
from services.embedder.serving.provisioning import prepare_models
from services.embedder.serving.serve import build_server, check_servable
from services.embedder.serving.triton_server import TritonServer
from services.embedder.settings import EmbedderSettings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("FACESEARCH_TEST_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"

TARGET_SPEEDUP = 1.5  # CPU: Triton at its best concurrency vs one-at-a-time torch
GPU_TARGET_END_TO_END = 20_000  # faces/s through Triton, torch-cuda-python on one GPU
GPU_TARGET_MODEL_ALONE = 50_000  # faces/s of the model alone on that GPU
TUNING_TIE = 0.05  # candidate configurations this close in faces/s count as equally fast

# Per flavour: what the run looks like unless the options say otherwise.
FLAVOUR_DEFAULTS: dict[str, dict] = {
    "onnx-python": {
        "device": "cpu",
        "precision": "fp32",
        "faces": 256,
        "tune_faces": 128,
        "concurrency": "1,4,16",
        "max_batch_size": 16,
        "preferred": "4,8,16",
        # 1 instance; intra-op threads = the whole budget or one (leaving a core to gRPC and
        # the client); a short and a longer queue delay. {t} is --threads.
        "configs": "1x{t}@500,1x1@500,1x{t}@2000,1x1@2000",
        "model_batch": 16,
    },
    "torch-cuda-python": {
        "device": "cuda",
        "precision": "fp16",
        "faces": 16384,
        "tune_faces": 4096,
        "concurrency": "1,4,16,64",
        "max_batch_size": 64,
        "preferred": "16,32,64",
        "configs": "1x{t}@500,2x{t}@500",
        "model_batch": 256,
    },
}


@dataclass(frozen=True)
class ServingConfig:
    """Triton model instances, intra-op threads per instance, dynamic batching queue delay."""

    instances: int
    intra_op_threads: int
    max_queue_delay_us: int

    @property
    def label(self) -> str:
        return f"{self.instances}x{self.intra_op_threads}@{self.max_queue_delay_us}"

    @classmethod
    def parse(cls, text: str) -> ServingConfig:
        """``INSTANCESxTHREADS@DELAY_US``, e.g. ``1x2@500``."""
        try:
            counts, delay = text.strip().split("@")
            instances, threads = counts.lower().split("x")
            config = cls(int(instances), int(threads), int(delay))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected INSTANCESxTHREADS@DELAY_US, e.g. 1x2@500") from None
        if config.instances < 1 or config.intra_op_threads < 1 or config.max_queue_delay_us < 0:
            raise argparse.ArgumentTypeError(f"{text!r}: instances and threads >= 1, delay >= 0")
        return config


# --- crops ---------------------------------------------------------------------------------


def detect_crops(data: Path, threads: int) -> tuple[np.ndarray, dict]:
    """The detector's aligned crops of every photo in labels.json (default options), found in a
    spawned child process, so that nothing the detector leaves behind in torch (thread pools,
    allocator state) affects the measurements in this one."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_detect_crops, data, threads).result()


def _detect_crops(data: Path, threads: int) -> tuple[np.ndarray, dict]:
    from services.detector.backends import create_backend
    from services.detector.detection import FaceDetector
    from services.detector.images import ImageLimits, decode_image
    from services.detector.settings import DetectorSettings

    torch.set_num_threads(threads)
    settings = DetectorSettings(torch_threads=threads)
    detector = FaceDetector(create_backend(settings), settings)
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    options = detector.default_options()
    sets = json.loads((data / "labels.json").read_text())["sets"]
    paths = [data / set_name / name for set_name, photo_set in sets.items() for name in photo_set["photos"]]
    start = time.perf_counter()
    crops = []
    for path in paths:
        image = decode_image(path.read_bytes(), limits, min_side=settings.max_side)
        [detection] = detector.detect([image], options)
        crops += [face.crop for face in detection.faces if face.crop is not None]
    seconds = time.perf_counter() - start
    if not crops:
        raise SystemExit(f"the detector found no faces in the {len(paths)} photos of {data}")
    info = {"data": str(data), "photos": len(paths), "crops": len(crops), "detection_seconds": round(seconds, 1)}
    return np.stack(crops).astype(np.uint8), info


def repeat_faces(crops: np.ndarray, count: int) -> np.ndarray:
    """``count`` faces: the crops in order, again and again (face i is crop i mod len(crops))."""
    return np.ascontiguousarray(crops[np.arange(count) % len(crops)])


# --- Triton ----------------------------------------------------------------------------------


def embedder_settings(args: argparse.Namespace, repository: Path, work_dir: Path, config: ServingConfig):
    return EmbedderSettings(
        backend="triton",
        flavour=args.flavour,
        model_repository=repository,
        work_dir=work_dir,
        port=0,
        http_port=0,
        metrics_port=None,
        torch_device=args.device,
        precision=args.precision,
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=args.preferred,
        max_queue_delay_us=config.max_queue_delay_us,
        instances=config.instances,
        intra_op_threads=config.intra_op_threads,
        client_batch_size=args.faces_per_request,
        request_timeout_s=120.0,
        startup_timeout_s=300.0,
        log_level="WARNING",
    )


def start_triton(settings: EmbedderSettings) -> tuple[TritonServer, float]:
    """Prepares the flavour's repository for these settings (configs rewritten as needed) and
    starts Triton on it; returns the server and how long it took to become ready."""
    prepare_models(settings, flavours=[settings.flavour])
    server = build_server(settings)
    start = time.perf_counter()
    server.start()
    return server, time.perf_counter() - start


def triton_statistics(url: str, model: str, version: str) -> dict:
    """Triton's cumulative statistics of the model: counts, times (ns), executions per batch size."""
    with grpcclient.InferenceServerClient(url) as client:
        reply = client.get_inference_statistics(model, version, as_json=True)
    [stats] = [s for s in reply["model_stats"] if s.get("version", version) == version]
    inference = stats.get("inference_stats", {})
    batch_stats = stats.get("batch_stats", [])

    def ns(key: str) -> int:
        return int(inference.get(key, {}).get("ns", 0))

    return {
        "inference_count": int(stats.get("inference_count", 0)),
        "execution_count": int(stats.get("execution_count", 0)),
        "success_count": int(inference.get("success", {}).get("count", 0)),
        "queue_ns": ns("queue"),
        "compute_input_ns": ns("compute_input"),
        "compute_infer_ns": ns("compute_infer"),
        "compute_output_ns": ns("compute_output"),
        # Per execution (one batch), unlike the per-request inference_stats above.
        "executions_by_batch": {
            int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0)) for b in batch_stats
        },
        "batch_compute_infer_ns": sum(int(b.get("compute_infer", {}).get("ns", 0)) for b in batch_stats),
    }


def settled_statistics(server: TritonServer, settings: EmbedderSettings, before: dict, requests: int) -> dict:
    """Triton's statistics once they count all ``requests`` sent since ``before`` (Triton records
    a request's success just after answering it), or as they are after a second."""
    deadline = time.monotonic() + 1.0
    while True:
        after = triton_statistics(server.grpc_url, settings.model_id, settings.model_version)
        if after["success_count"] - before["success_count"] >= requests or time.monotonic() > deadline:
            return after
        time.sleep(0.02)


def statistics_delta(before: dict, after: dict) -> dict:
    """What Triton did between two ``triton_statistics`` readings, with averages."""
    delta = {key: after[key] - before[key] for key in after if key != "executions_by_batch"}
    batches = {
        size: count - before["executions_by_batch"].get(size, 0)
        for size, count in sorted(after["executions_by_batch"].items())
    }
    executions = max(delta["execution_count"], 1)
    requests = max(delta["success_count"], 1)
    return {
        "requests": delta["success_count"],
        "inference_count": delta["inference_count"],
        "execution_count": delta["execution_count"],
        "average_batch": round(delta["inference_count"] / executions, 2),
        "executions_by_batch": {str(size): count for size, count in batches.items() if count},
        # Triton's inference_stats add each request's share: the whole execution of its batch.
        "queue_ms_per_request": round(delta["queue_ns"] / requests / 1e6, 2),
        "compute_infer_ms_per_request": round(delta["compute_infer_ns"] / requests / 1e6, 2),
        "compute_input_output_ms_per_request": round(
            (delta["compute_input_ns"] + delta["compute_output_ns"]) / requests / 1e6, 2
        ),
        "compute_infer_ms_per_execution": round(delta["batch_compute_infer_ns"] / executions / 1e6, 2),
    }


async def _drive(embedder, faces: np.ndarray, concurrency: int, per_request: int) -> tuple[float, list[float]]:
    """Sends the faces ``per_request`` at a time with ``concurrency`` requests in flight;
    returns the wall-clock seconds and each request's latency."""
    starts = iter(range(0, len(faces), per_request))  # shared: each worker takes the next request
    latencies: list[float] = []

    async def worker() -> None:
        for start in starts:
            sent = time.perf_counter()
            await embedder.embed(faces[start : start + per_request])
            latencies.append(time.perf_counter() - sent)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies


def measure_triton(
    server: TritonServer, settings: EmbedderSettings, faces: np.ndarray, concurrency: int, per_request: int
) -> dict:
    """Faces/s and request latency through Triton at one concurrency level, with Triton's statistics."""

    async def run() -> tuple[float, list[float], dict, dict]:
        # One client, as a gateway has; its in-flight limit raised so that it is not the bottleneck.
        embedder = create_embedder(settings, url=server.grpc_url, max_in_flight=max(concurrency, 1))
        async with embedder:
            start = triton_statistics(server.grpc_url, settings.model_id, settings.model_version)
            warm = faces[: max(2 * concurrency, 8) * per_request]
            _, warm_latencies = await _drive(embedder, warm, concurrency, per_request)  # not timed
            before = settled_statistics(server, settings, start, len(warm_latencies))
            seconds, latencies = await _drive(embedder, faces, concurrency, per_request)
            after = settled_statistics(server, settings, before, len(latencies))
        return seconds, latencies, before, after

    seconds, latencies, before, after = asyncio.run(run())
    return {
        "concurrency": concurrency,
        "faces_per_request": per_request,
        "faces": len(faces),
        "seconds": round(seconds, 3),
        "faces_per_s": round(len(faces) / seconds, 2),
        **latency_summary(latencies),
        "triton": statistics_delta(before, after),
    }


def triton_vectors(server: TritonServer, settings: EmbedderSettings, crops: np.ndarray) -> np.ndarray:
    async def run() -> np.ndarray:
        async with create_embedder(settings, url=server.grpc_url) as embedder:
            return (await embedder.embed(crops)).vectors

    return asyncio.run(run())


def server_version(server: TritonServer) -> str:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return client.get_server_metadata(as_json=True).get("version", "?")


def tune(args: argparse.Namespace, repository: Path, work: Path, faces: np.ndarray) -> tuple[ServingConfig, list[dict]]:
    """Each candidate configuration measured briefly at the highest concurrency; the fastest wins."""
    if len(args.configs) == 1:
        return args.configs[0], []
    trials = []
    concurrency = max(args.concurrency)
    for config in args.configs:
        settings = embedder_settings(args, repository, work / f"triton-{config.label}", config)
        server, _ = start_triton(settings)
        try:
            result = measure_triton(server, settings, faces[: args.tune_faces], concurrency, args.faces_per_request)
        finally:
            server.stop()
        trials.append(
            {
                "config": config.label,
                **asdict(config),
                "concurrency": concurrency,
                "faces": result["faces"],
                "faces_per_s": result["faces_per_s"],
                "p50_ms": result["p50_ms"],
                "average_batch": result["triton"]["average_batch"],
            }
        )
        print(
            f"  config {config.label:>10}: {result['faces_per_s']:8.1f} faces/s, "
            f"average batch {result['triton']['average_batch']}"
        )
    # At the highest concurrency the queue is never empty, so the queue delay hardly matters
    # there, while at low concurrency it is added to lone requests: among the candidates
    # within TUNING_TIE of the fastest, the shortest delay wins (then the faster).
    fastest = max(t["faces_per_s"] for t in trials)
    close = [t for t in trials if t["faces_per_s"] >= (1 - TUNING_TIE) * fastest]
    best = min(close, key=lambda t: (t["max_queue_delay_us"], -t["faces_per_s"]))
    return ServingConfig(best["instances"], best["intra_op_threads"], best["max_queue_delay_us"]), trials


# --- without a server --------------------------------------------------------------------------


def measure_torch_one_at_a_time(
    faces: np.ndarray, crops: np.ndarray, thread_counts: list[int], device: str, precision: str
) -> tuple[dict[int, dict], np.ndarray]:
    """The baseline: ServedFaceNet(load_casia_facenet()) in this process, one crop per forward call,
    result copied back to the CPU each time, with each of ``thread_counts`` torch threads in turn.
    Returns the summary per thread count and the crops' vectors."""
    from services.embedder.serving.weights.facenet_casia import load_casia_facenet
    from services.embedder.serving.weights.onnx_export import ServedFaceNet

    model = ServedFaceNet(load_casia_facenet()).to(device)
    if precision == "fp16":
        model = model.half()

    def one(crop: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(crop[None]).to(device)).cpu().numpy()

    summaries = {}
    with torch.inference_mode():
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for crop in faces[:8]:  # warm-up, not timed
                one(crop)
            latencies = []
            began = time.perf_counter()
            for crop in faces:
                sent = time.perf_counter()
                one(crop)
                latencies.append(time.perf_counter() - sent)
            seconds = time.perf_counter() - began
            summaries[threads] = {
                "torch_threads": threads,
                "faces": len(faces),
                "seconds": round(seconds, 3),
                "faces_per_s": round(len(faces) / seconds, 2),
                **latency_summary(latencies),
            }
        vectors = np.concatenate([one(crop) for crop in crops])
    return summaries, vectors


def measure_onnx_inprocess(settings: EmbedderSettings, faces: np.ndarray, batch: int, threads: int) -> dict:
    """The served model.onnx in this process (InProcessEmbedder, ONNX Runtime CPU), ``batch`` crops per run."""
    in_process = settings.model_copy(
        update={"backend": "inprocess", "client_batch_size": batch, "intra_op_threads": threads}
    )

    async def run() -> tuple[float, list[float]]:
        async with create_embedder(in_process) as embedder:
            await _drive(embedder, faces[: 4 * batch], 1, batch)  # warm-up, not timed
            return await _drive(embedder, faces, 1, batch)

    seconds, latencies = asyncio.run(run())
    return {
        "crops_per_run": batch,
        "intra_op_threads": threads,
        "faces": len(faces),
        "seconds": round(seconds, 3),
        "faces_per_s": round(len(faces) / seconds, 2),
        **latency_summary(latencies),
    }


def measure_torchscript_alone(settings: EmbedderSettings, faces: np.ndarray, batch: int) -> dict:
    """The served model.pt as the torch-cuda-python model runs it, ``batch`` crops per run, the
    input already on the device, timed between synchronisations (compute only)."""
    path = Path(settings.model_repository) / settings.flavour / settings.model_id / settings.model_version / "model.pt"
    device = torch.device(settings.torch_device)
    dtype = torch.float16 if settings.precision == "fp16" else torch.float32
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x; the served model is one
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load", category=FutureWarning)
        module = torch.jit.load(str(path), map_location=device)
    module = module.to(dtype=dtype).eval()
    runs = max(1, len(faces) // batch)
    batches = [torch.from_numpy(repeat_faces(faces, batch)).to(device)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode(), torch.jit.optimized_execution(False):
        for _ in range(3):  # warm-up, not timed
            module(batches[0])
        sync()
        began = time.perf_counter()
        for _ in range(runs):
            module(batches[0])
        sync()
        seconds = time.perf_counter() - began
    return {
        "crops_per_run": batch,
        "precision": settings.precision,
        "device": str(device),
        "faces": runs * batch,
        "seconds": round(seconds, 4),
        "faces_per_s": round(runs * batch / seconds, 1),
    }


# --- summary -----------------------------------------------------------------------------------


def latency_summary(latencies: list[float]) -> dict:
    values = np.asarray(latencies) * 1000
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "mean_ms": round(float(values.mean()), 2),
    }


def machine_facts(_args: argparse.Namespace, triton_version: str) -> dict:
    import onnxruntime

    processor = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = {
        "cpu_count": os.cpu_count(),
        "processor": processor,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "triton_server": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return facts


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far (/proc/stat's first line: user, nice, system, idle, iowait,
    irq, softirq, steal, ...), in clock ticks; empty where there is no /proc/stat."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return []


def cpu_use(start: list[int], end: list[int]) -> dict:
    """Shares of the CPU time between two ``cpu_ticks`` readings: busy at normal priority (this
    benchmark and anything else), busy at a lowered priority (nice), idle, stolen by the hypervisor."""
    if len(start) < 8 or len(end) < 8:
        return {}
    user, nice, system, idle, iowait, irq, softirq, steal = (b - a for a, b in zip(start, end))
    total = max(user + nice + system + idle + iowait + irq + softirq + steal, 1)
    return {
        "busy_percent": round(100 * (user + system + irq + softirq) / total, 1),
        "niced_percent": round(100 * nice / total, 1),
        "idle_percent": round(100 * (idle + iowait) / total, 1),
        "steal_percent": round(100 * steal / total, 1),
    }


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    cosine = np.sum(a * b, axis=1)
    return {"min_cosine": round(float(cosine.min()), 6), "max_abs_diff": float(np.abs(a - b).max())}


def evaluate(args: argparse.Namespace, passes: list[dict]) -> dict:
    """Per pass: Triton's best concurrency against the baseline (and, on a GPU, the absolute targets)."""
    verdicts = []
    for number, run in enumerate(passes, 1):
        best = max(run["triton"], key=lambda r: r["faces_per_s"])
        baseline = max((run[k] for k in ("baseline", "baseline_1_thread") if k in run), key=lambda b: b["faces_per_s"])
        speedup = best["faces_per_s"] / baseline["faces_per_s"]
        verdict = {
            "pass": number,
            "best_concurrency": best["concurrency"],
            "best_faces_per_s": best["faces_per_s"],
            "baseline_faces_per_s": baseline["faces_per_s"],
            "baseline_torch_threads": baseline["torch_threads"],
            "speedup_vs_specified_baseline": round(best["faces_per_s"] / run["baseline"]["faces_per_s"], 2),
            "speedup": round(speedup, 2),
            "met": speedup >= TARGET_SPEEDUP,
        }
        if args.flavour == "torch-cuda-python":
            alone = run["model_alone"]["faces_per_s"]
            verdict.update(
                model_alone_faces_per_s=alone,
                met=best["faces_per_s"] >= GPU_TARGET_END_TO_END and alone >= GPU_TARGET_MODEL_ALONE,
            )
        verdicts.append(verdict)
    if args.flavour == "torch-cuda-python":
        target = (
            f">= {GPU_TARGET_END_TO_END:,} faces/s end to end through Triton at the best concurrency and "
            f">= {GPU_TARGET_MODEL_ALONE:,} faces/s for the model alone, in every pass"
        )
    else:
        target = (
            f"Triton at its best concurrency >= {TARGET_SPEEDUP}x the one-at-a-time torch faces/s (the faster "
            "of its runs with the whole thread budget and with one thread), in every pass"
        )
    return {"target": target, "per_pass": verdicts, "target_met": all(v["met"] for v in verdicts)}


def markdown(result: dict) -> str:
    m, cfg, crops = result["machine"], result["serving"], result["crops"]
    cpu = result["flavour"] == "onnx-python"
    lines = [
        "# Embedder throughput",
        "",
        f"{m['date']}; {m['cpu_count']} CPUs ({m['processor']}), {m['memory_gib']} GiB"
        + (f", GPU {m['gpu']}" if m["gpu"] else ", no GPU")
        + f"; Triton {m['triton_server']}, torch {m['torch']}, ONNX Runtime {m['onnxruntime']}, "
        f"Python {m['python']}, {m['platform']}. Load average at the start: {result['load_average_start']}, "
        f"at the end: {result['load_average_end']}. CPU time during the run: "
        + ", ".join(f"{key.removesuffix('_percent')} {value}%" for key, value in result["cpu_use"].items())
        + " (niced: programs at a lowered priority, not this benchmark).",
        "",
        f"Crops: {crops['crops']} aligned 160 x 160 crops that the detector found in {crops['photos']} photos "
        f"({crops['data']}), repeated to {result['faces']} faces per measurement. "
        f"{len(result['passes'])} passes; every figure below is one pass.",
        "",
        *([result["note"], ""] if result["note"] else []),
        f"Served: flavour `{result['flavour']}` ({cfg['device']}, {cfg['precision']}), model "
        f"`{cfg['model_id']}` version {cfg['model_version']}, max_batch_size {cfg['max_batch_size']}, "
        f"preferred batch sizes {cfg['preferred_batch_sizes']}, **{cfg['instances']} instance(s) x "
        f"{cfg['intra_op_threads']} intra-op thread(s), max_queue_delay {cfg['max_queue_delay_us']} us**. "
        f"Requests of {result['faces_per_request']} face(s), sent by one `TritonEmbedder` client "
        f"(max_in_flight = the concurrency).",
        "",
    ]
    if result["tuning"]:
        lines += [
            f"Configuration chosen from these candidates (instances x threads @ queue delay us), each measured "
            f"once on {result['tuning'][0]['faces']} faces at concurrency {result['tuning'][0]['concurrency']}: "
            f"the fastest, or of those within {TUNING_TIE:.0%} of it the one with the shortest queue delay "
            "(which lone requests wait at low concurrency):",
            "",
            "| candidate | faces/s | p50 ms | average batch |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {t['config']}{' (chosen)' if t['config'] == cfg['label'] else ''} | {t['faces_per_s']} | "
            f"{t['p50_ms']} | {t['average_batch']} |"
            for t in result["tuning"]
        ]
        lines.append("")
    lines += [
        "| pass | way | concurrency | faces/s | p50 ms | p99 ms | Triton average batch | executions by batch size |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for number, run in enumerate(result["passes"], 1):
        for r in run["triton"]:
            t = r["triton"]
            histogram = ", ".join(f"{size}: {count}" for size, count in t["executions_by_batch"].items())
            lines.append(
                f"| {number} | Triton ({r['faces_per_request']} face/request) | {r['concurrency']} | "
                f"**{r['faces_per_s']}** | {r['p50_ms']} | {r['p99_ms']} | {t['average_batch']} | {histogram} |"
            )
        for key in ("baseline", "baseline_1_thread"):
            if key in run:
                b = run[key]
                lines.append(
                    f"| {number} | baseline: in-process torch, one crop per call, {b['torch_threads']} thread(s) | 1 | "
                    f"**{b['faces_per_s']}** | {b['p50_ms']} | {b['p99_ms']} | | |"
                )
        if "onnx_one_at_a_time" in run:
            o = run["onnx_one_at_a_time"]
            lines.append(
                f"| {number} | reference: in-process ONNX Runtime, one crop per run, {o['intra_op_threads']} threads "
                f"| 1 | {o['faces_per_s']} | {o['p50_ms']} | {o['p99_ms']} | | |"
            )
        a = run["model_alone"]
        lines.append(
            f"| {number} | reference: model alone, {a['crops_per_run']} crops per run (no server) | | "
            f"{a['faces_per_s']} | {a.get('p50_ms', '')} | {a.get('p99_ms', '')} | | |"
        )
    lines += [
        "",
        "Triton's statistics per level (timed part only): queue ms per request, model compute ms per execution:",
        "",
    ]
    for number, run in enumerate(result["passes"], 1):
        lines.append(
            f"- pass {number}: "
            + "; ".join(
                f"c={r['concurrency']}: {r['triton']['requests']} requests in {r['triton']['execution_count']} "
                f"executions, queue {r['triton']['queue_ms_per_request']} ms, compute "
                f"{r['triton']['compute_infer_ms_per_execution']} ms "
                f"({r['triton']['compute_infer_ms_per_execution'] / max(r['triton']['average_batch'], 1):.1f} ms/face)"
                for r in run["triton"]
            )
        )
    verdict = result["evaluation"]
    lines += ["", f"Target: {verdict['target']}.", ""]
    for v in verdict["per_pass"]:
        extra = f", model alone {v['model_alone_faces_per_s']} faces/s" if "model_alone_faces_per_s" in v else ""
        lines.append(
            f"- pass {v['pass']}: best Triton {v['best_faces_per_s']} faces/s at concurrency "
            f"{v['best_concurrency']} vs baseline {v['baseline_faces_per_s']} faces/s "
            f"(torch, {v['baseline_torch_threads']} thread(s)): **{v['speedup']}x** "
            f"({v['speedup_vs_specified_baseline']}x against the {result['threads']}-thread baseline)"
            f"{extra}: {'met' if v['met'] else 'not met'}"
        )
    lines += ["", f"**Target {'met' if verdict['target_met'] else 'not met'}.**", ""]
    if cpu:
        lines += [
            "Where the speed-up comes from (per pass: ONNX Runtime vs torch, both one crop per run; "
            "batching in the model alone; Triton at its best vs ONNX Runtime one crop per run in-process):",
            "",
        ]
        for number, run in enumerate(result["passes"], 1):
            torch_best = max(run[k]["faces_per_s"] for k in ("baseline", "baseline_1_thread") if k in run)
            onnx_one = run["onnx_one_at_a_time"]["faces_per_s"]
            best = max(r["faces_per_s"] for r in run["triton"])
            alone = run["model_alone"]
            lines.append(
                f"- pass {number}: ONNX Runtime / torch {onnx_one / torch_best:.2f}x; model alone at "
                f"{alone['crops_per_run']} crops / 1 crop {alone['faces_per_s'] / onnx_one:.2f}x; "
                f"Triton best / ONNX Runtime 1 crop {best / onnx_one:.2f}x; Triton best / model alone "
                f"{best / alone['faces_per_s']:.2f}x"
            )
        lines.append("")
    lines.append(
        f"Vectors: Triton vs the torch baseline on the {crops['crops']} distinct crops: min cosine "
        f"{result['agreement']['min_cosine']}, max abs difference {result['agreement']['max_abs_diff']:.2e}."
    )
    if cpu:
        lines += [
            "",
            "## GPU",
            "",
            "The GPU part of this benchmark (the `torch-cuda-python` flavour, fp16, through Triton at "
            f"concurrency 1-64 on an H100; targets {GPU_TARGET_END_TO_END:,} faces/s end to end and "
            f"{GPU_TARGET_MODEL_ALONE:,} faces/s for the model alone) needs a GPU machine, which this run did "
            "not have. The same script runs it there (not yet tested on a GPU):",
            "",
            "```sh",
            "python -m bench.embedder_throughput --flavour torch-cuda-python --concurrency 1,4,16,64 "
            "[--faces-per-request 16]",
            "```",
            "",
            "It writes bench/results/embedder_throughput_torch-cuda-python.{json,md}. One Python client "
            "process will not send 20,000 single-face requests a second; raise `--faces-per-request` "
            "(each request then carries that many crops, as the gateway's `client_batch_size` does).",
        ]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: positive integers, comma-separated")
    return values


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=sorted(FLAVOUR_DEFAULTS), default="onnx-python")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--repository", type=Path, help="model repository (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="CPU thread budget: the torch baseline's threads")
    parser.add_argument("--detector-threads", type=int, default=1, help="torch threads of the detector (not timed)")
    parser.add_argument("--faces", type=int, help="faces per measurement")
    parser.add_argument("--tune-faces", type=int, help="faces per candidate configuration")
    parser.add_argument("--concurrency", type=int_list, help="requests in flight, comma-separated")
    parser.add_argument("--faces-per-request", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--preferred", type=int_list, help="dynamic batching preferred batch sizes")
    parser.add_argument("--configs", help="candidates INSTANCESxTHREADS@DELAY_US, comma-separated")
    parser.add_argument("--model-batch", type=int, help="crops per run of the model alone")
    parser.add_argument("--precision", choices=["fp16", "fp32"])
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], help="torch-cuda-python only: cpu runs its code path without a GPU"
    )
    parser.add_argument("--passes", type=int, default=2, help="passes over every measurement")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--name", help="results file name (default: by flavour)")
    parser.add_argument("--note", default="", help="a remark on the run's conditions, put into the results")
    args = parser.parse_args()

    defaults = FLAVOUR_DEFAULTS[args.flavour]
    if args.device and args.flavour == "onnx-python" and args.device != "cpu":
        parser.error("the onnx-python flavour runs on the CPU")
    args.device = args.device or defaults["device"]
    args.precision = args.precision or defaults["precision"]
    args.faces = args.faces or defaults["faces"]
    args.tune_faces = min(args.tune_faces or defaults["tune_faces"], args.faces)
    args.concurrency = args.concurrency or int_list(defaults["concurrency"])
    args.max_batch_size = args.max_batch_size or defaults["max_batch_size"]
    args.preferred = args.preferred or int_list(defaults["preferred"])
    args.model_batch = args.model_batch or defaults["model_batch"]
    configs = args.configs or defaults["configs"].format(t=args.threads)
    args.configs = list(dict.fromkeys(ServingConfig.parse(c) for c in configs.split(",")))
    args.name = args.name or (
        "embedder_throughput" if args.flavour == "onnx-python" else f"embedder_throughput_{args.flavour}"
    )
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--flavour {args.flavour} needs a CUDA GPU, and torch sees none here")
    return args


def main() -> None:
    args = parse_args()
    load_start = [round(v, 2) for v in os.getloadavg()]
    ticks_start = cpu_ticks()
    with tempfile.TemporaryDirectory(prefix="embedder-bench-") as temporary:
        work = Path(temporary)
        repository = (args.repository or work / "models").absolute()

        print(f"crops: detecting faces in {args.data} ...")
        crops, crop_info = detect_crops(args.data, args.detector_threads)
        faces = repeat_faces(crops, args.faces)
        print(
            f"  {crop_info['crops']} crops from {crop_info['photos']} photos in {crop_info['detection_seconds']} s; "
            f"{len(faces)} faces per measurement"
        )

        print(f"models: preparing {args.flavour} in {repository} ...")
        first = embedder_settings(args, repository, work / "triton", args.configs[0])
        check_servable(first)
        began = time.perf_counter()
        prepare_models(first, flavours=[args.flavour])
        print(f"  ready in {time.perf_counter() - began:.1f} s")

        if len(args.configs) > 1:
            print(f"configuration: {len(args.configs)} candidates at concurrency {max(args.concurrency)} ...")
        config, trials = tune(args, repository, work, faces)
        settings = embedder_settings(args, repository, work / "triton", config)
        print(f"serving with {config.label} (instances x intra-op threads @ queue delay us)")

        # Each pass measures everything once: Triton at every level, then (Triton idle) the
        # baseline and the references, so that every pass compares figures taken minutes apart.
        # The baseline as specified uses the whole thread budget; on a CPU it runs with one
        # thread too: on a busy machine torch's OpenMP threads can lose far more to waiting for
        # each other than a second core gains, and the target is judged against the faster.
        thread_counts = [args.threads] + ([1] if args.device == "cpu" and args.threads != 1 else [])
        passes: list[dict] = []
        server, startup = start_triton(settings)
        try:
            version = server_version(server)
            served_vectors = triton_vectors(server, settings, crops)
            for number in range(1, args.passes + 1):
                run: dict = {"triton": []}
                passes.append(run)
                for concurrency in args.concurrency:
                    result = measure_triton(server, settings, faces, concurrency, args.faces_per_request)
                    run["triton"].append(result)
                    print(
                        f"  pass {number} Triton c={concurrency:<3}: {result['faces_per_s']:9.1f} faces/s, "
                        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                        f"average batch {result['triton']['average_batch']}"
                    )
                by_threads, baseline_vectors = measure_torch_one_at_a_time(
                    faces, crops, thread_counts, args.device, args.precision
                )
                run["baseline"] = by_threads[args.threads]
                if 1 in by_threads and args.threads != 1:
                    run["baseline_1_thread"] = by_threads[1]
                for threads, summary in by_threads.items():
                    print(
                        f"  pass {number} baseline torch one at a time, {threads} thread(s): "
                        f"{summary['faces_per_s']:.1f} faces/s"
                    )
                if args.flavour == "onnx-python":
                    run["onnx_one_at_a_time"] = measure_onnx_inprocess(settings, faces, 1, config.intra_op_threads)
                    run["model_alone"] = measure_onnx_inprocess(
                        settings, faces, args.model_batch, config.intra_op_threads
                    )
                else:
                    run["model_alone"] = measure_torchscript_alone(settings, faces, args.model_batch)
                for key in ("onnx_one_at_a_time", "model_alone"):
                    if key in run:
                        print(f"  pass {number} {key}: {run[key]['faces_per_s']:.1f} faces/s")
        finally:
            server.stop()

    result = {
        "benchmark": args.name,
        "flavour": args.flavour,
        "faces": len(faces),
        "faces_per_request": args.faces_per_request,
        "concurrency": args.concurrency,
        "threads": args.threads,
        "note": args.note,
        "crops": crop_info,
        "serving": {
            "label": config.label,
            **asdict(config),
            "device": args.device,
            "precision": args.precision,
            "model_id": settings.model_id,
            "model_version": settings.model_version,
            "max_batch_size": args.max_batch_size,
            "preferred_batch_sizes": args.preferred,
            "triton_startup_s": round(startup, 1),
        },
        "tuning": trials,
        "passes": passes,
        "agreement": agreement(served_vectors, baseline_vectors),
        "load_average_start": load_start,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "cpu_use": cpu_use(ticks_start, cpu_ticks()),
        "machine": machine_facts(args, version),
    }
    result["evaluation"] = evaluate(args, passes)
    result["target"] = result["evaluation"]["target"]
    result["target_met"] = result["evaluation"]["target_met"]

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    report = markdown(result)
    (args.out / f"{args.name}.md").write_text(report)
    print(report)
    print(f"results: {args.out / (args.name + '.json')}, {args.out / (args.name + '.md')}")


if __name__ == "__main__":
    main()
