"""Embedder throughput: FaceNet served by Triton with dynamic batching against one crop at a time in-process, faces/s.

Everything runs on this machine, in this order:

1. Crops: the project's detector (MTCNN, default settings, in a spawned child process) on
   every photo listed in the data folder's labels.json; its 160 x 160 crops (as the model takes them),
   repeated to ``--faces`` faces.
2. Models: ``prepare_models`` (the project's provisioning) writes the ``--flavour`` model
   repository into a temporary folder (or ``--repository``).
3. Tuning: each ``--configs`` candidate (instances, intra-op threads, dynamic-batching
   queue delay, with ``--max-batch-size`` and ``--preferred``) is served by a real Triton
   (the project's ``TritonServer``, free ports) and measured briefly at the highest
   concurrency; the fastest is kept (of those within 5% of it, the one with the shortest
   queue delay). ``--configs none`` skips tuning.

Then ``--passes`` passes (default 2), each measuring everything once:

4. Triton in two configurations, one after the other, each on a server of its own:
   the **shipped default** (the serving fields of ``EmbedderSettings`` as they ship) and
   the **tuned** one chosen in 3. Each at every ``--concurrency`` level over all the
   faces: that many requests in flight at once, each of ``--faces-per-request`` faces
   (default one: what many concurrent gateway calls look like), sent with the project's
   async ``TritonEmbedder`` (``create_embedder``). Faces/s end to end (gRPC, the python
   backend, the model), p50/p99 request latency, and Triton's own statistics over the
   timed part (the average batch the dynamic batcher formed, its batch-size histogram,
   queue and compute times). What each server runs is read back from it
   (``get_model_config``).
5. The naive alternatives (Triton stopped), one crop per call, in this process: torch
   (``load_casia_facenet()`` wrapped in ``ServedFaceNet``, the network Triton serves), and
   ONNX Runtime on the served model.onnx (a plain ``InferenceSession``; CPU only), each
   with ``--threads`` threads and with one, the faster of the two counting.
6. A reference: the model alone, without a server, ``--model-batch`` crops per run: ONNX
   Runtime on the CPU for onnx-python; the TorchScript model.pt on the device for
   torch-cuda-python; for onnxruntime-onnx the served model.onnx in ONNX Runtime with the CUDA
   execution provider (fp32, no TensorRT), recorded as skipped, with the reason, where the
   onnxruntime installed here has no working CUDA provider (the CPU build has none).

With ``--shared-memory none,system`` (the client's ``shared_memory`` setting, comma-separated)
each Triton level in 4 is measured once per way of passing the crops, one right after the other
against the same server: inside the gRPC requests (``none``) and through POSIX (``system``) or
CUDA (``cuda``, GPU machines) shared memory; faces/s and latency are reported side by side. The
first one listed is the one the rest of the report (tuning, speed-ups) uses; the order alternates
from pass to pass. Shared memory saves the copy of the crops through gRPC, which shows only where
that copy, not the model, limits the faces/s: large requests (``--faces-per-request``) to a fast
model.

Speed-ups are reported for both Triton configurations against both naive alternatives.
Warm-up calls are not timed. The machine's load is measured over the run and over each
measurement (``bench.report.LoadMeter``). Before each timed part the benchmark waits
(``--quiet-wait-s`` at most) until other processes use at most ``--quiet-percent`` of
the CPU, and a part they disturbed anyway is measured again (``--attempts``; the least
disturbed try counts, every try is recorded). Odd passes measure Triton first, even
passes the naive ways first. Results go to bench/results/<name>.{json,md}; the name is
``embedder_throughput`` for onnx-python and ``embedder_throughput_<flavour>`` otherwise.

Targets: onnx-python (CPU): Triton at its best concurrency >= 1.5 x the one-at-a-time torch
faces/s, in every pass. torch-cuda-python (one CUDA GPU, fp16): >= 20,000 faces/s end to end
through Triton and >= 50,000 faces/s for the model alone. onnxruntime-onnx (one CUDA GPU,
TensorRT in fp16): >= 20,000 faces/s end to end through Triton. One Python client process cannot
send 20,000 single-face gRPC requests a second: raise ``--faces-per-request`` there.

onnxruntime-onnx needs Triton's onnxruntime backend. The tritonserver this benchmark starts is
the one bundled in nvidia-pytriton; where that has no onnxruntime backend the benchmark exits
before measuring anything, saying so (as it does, sooner, for either GPU flavour without a GPU).

    python -m bench.embedder_throughput [--passes 2] [--concurrency 1,4,16] [--faces 256]
    python -m bench.embedder_throughput --flavour torch-cuda-python --concurrency 1,4,16,64
    python -m bench.embedder_throughput --flavour onnxruntime-onnx --faces-per-request 16
    python -m bench.embedder_throughput --faces-per-request 16 --shared-memory none,system
    python -m bench.embedder_throughput --render bench/results/embedder_throughput.json
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient

from bench.report import (
    DEFAULT_DATA,
    RESULTS,
    LoadMeter,
    add_quiet_options,
    describe_triton_config,
    least_disturbed,
    load_line,
    machine_facts,
    machine_line,
    meter_for,
    quiet_remark,
    render_again,
    settings_of,
    triton_model_config,
    write_results,
)
from services.embedder.client.factory import create_embedder
from services.embedder.serving import flavours
from services.embedder.serving.provisioning import ProvisioningError, prepare_models
from services.embedder.serving.serve import build_server, bundled_backends, check_servable
from services.embedder.serving.triton_server import TritonServer
from services.embedder.settings import EmbedderSettings

TARGET_SPEEDUP = 1.5  # CPU: Triton at its best concurrency vs one-at-a-time torch
GPU_TARGET_END_TO_END = 20_000  # faces/s through Triton, each GPU flavour on one GPU
GPU_TARGET_MODEL_ALONE = 50_000  # faces/s of torch-cuda-python's model alone on that GPU
GPU_FLAVOURS = ("torch-cuda-python", "onnxruntime-onnx")
TUNING_TIE = 0.05  # candidate configurations this close in faces/s count as equally fast
SHIPPED, TUNED = "shipped default", "tuned"
SHARED_MEMORY_MODES = ("none", "system", "cuda")  # the client's shared_memory setting
SERVING_FIELDS = ("instances", "intra_op_threads", "max_queue_delay_us", "max_batch_size", "preferred_batch_sizes")

# What a GPU flavour's run looks like, beside its candidate configurations.
GPU_SIZES = {
    "device": "cuda",
    "precision": "fp16",
    "faces": 16384,
    "tune_faces": 4096,
    "concurrency": "1,4,16,64",
    "max_batch_size": 64,
    "preferred": "16,32,64",
    "model_batch": 256,
}
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
    "torch-cuda-python": {**GPU_SIZES, "configs": "1x{t}@500,2x{t}@500"},
    # Triton's onnxruntime backend with TensorRT on the GPU; its config has no intra-op threads,
    # so the candidates differ in instances only.
    "onnxruntime-onnx": {**GPU_SIZES, "configs": "1x1@500,2x1@500"},
}


@dataclass(frozen=True)
class ServingConfig:
    """What shapes serving: Triton model instances, intra-op threads per instance, the dynamic
    batcher's queue delay, largest batch and preferred batch sizes."""

    instances: int
    intra_op_threads: int
    max_queue_delay_us: int
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.instances}x{self.intra_op_threads}@{self.max_queue_delay_us} b{self.max_batch_size}"

    @classmethod
    def parse(cls, text: str, max_batch_size: int, preferred: list[int]) -> ServingConfig:
        """``INSTANCESxTHREADS@DELAY_US``, e.g. ``1x2@500``."""
        try:
            counts, delay = text.strip().split("@")
            instances, threads = counts.lower().split("x")
            config = cls(int(instances), int(threads), int(delay), max_batch_size, tuple(preferred))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected INSTANCESxTHREADS@DELAY_US, e.g. 1x2@500") from None
        if config.instances < 1 or config.intra_op_threads < 1 or config.max_queue_delay_us < 0:
            raise argparse.ArgumentTypeError(f"{text!r}: instances and threads >= 1, delay >= 0")
        return config

    @classmethod
    def shipped(cls) -> ServingConfig:
        """The serving fields of ``EmbedderSettings`` as they ship (their defaults, not the
        environment's or a config file's)."""
        fields = EmbedderSettings.model_fields
        values = {name: fields[name].get_default(call_default_factory=True) for name in SERVING_FIELDS}
        values["preferred_batch_sizes"] = tuple(values["preferred_batch_sizes"])
        return cls(**values)

    def as_dict(self) -> dict:
        return {"label": self.label, **asdict(self), "preferred_batch_sizes": list(self.preferred_batch_sizes)}


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
    info = {
        "data": str(data),
        "photos": len(paths),
        "crops": len(crops),
        "detection_seconds": round(seconds, 1),
        "detector_settings": settings_of(settings),
    }
    return np.stack(crops).astype(np.uint8), info


def repeat_faces(crops: np.ndarray, count: int) -> np.ndarray:
    """``count`` faces: the crops in order, again and again (face i is crop i mod len(crops))."""
    return np.ascontiguousarray(crops[np.arange(count) % len(crops)])


# --- Triton ----------------------------------------------------------------------------------


def embedder_settings(
    args: argparse.Namespace, repository: Path, work_dir: Path, config: ServingConfig
) -> EmbedderSettings:
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
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=list(config.preferred_batch_sizes),
        max_queue_delay_us=config.max_queue_delay_us,
        instances=config.instances,
        intra_op_threads=config.intra_op_threads,
        client_batch_size=args.faces_per_request,
        shared_memory=args.shared_memory[0],
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
    server: TritonServer,
    settings: EmbedderSettings,
    faces: np.ndarray,
    concurrency: int,
    per_request: int,
    meter: LoadMeter,
) -> dict:
    """Faces/s and request latency through Triton at one concurrency level, with Triton's
    statistics and the machine's load over the timed part."""

    async def run() -> tuple[float, list[float], dict, dict, dict, dict]:
        # One client, as a gateway has; its in-flight limit raised so that it is not the bottleneck.
        embedder = create_embedder(settings, url=server.grpc_url, max_in_flight=max(concurrency, 1))
        async with embedder:
            start = triton_statistics(server.grpc_url, settings.model_id, settings.model_version)
            warm = faces[: max(2 * concurrency, 8) * per_request]
            _, warm_latencies = await _drive(embedder, warm, concurrency, per_request)  # not timed
            before = settled_statistics(server, settings, start, len(warm_latencies))
            quiet = meter.settle()
            first = meter.reading()
            seconds, latencies = await _drive(embedder, faces, concurrency, per_request)
            load = meter.usage(first, meter.reading())
            after = settled_statistics(server, settings, before, len(latencies))
        return seconds, latencies, before, after, load, quiet

    seconds, latencies, before, after, load, quiet = asyncio.run(run())
    return {
        "concurrency": concurrency,
        "shared_memory": settings.shared_memory,
        "faces_per_request": per_request,
        "faces": len(faces),
        "seconds": round(seconds, 3),
        "faces_per_s": round(len(faces) / seconds, 2),
        **latency_summary(latencies),
        "triton": statistics_delta(before, after),
        "load": load,
        "quiet": quiet,
    }


def triton_vectors(server: TritonServer, settings: EmbedderSettings, crops: np.ndarray) -> np.ndarray:
    async def run() -> np.ndarray:
        async with create_embedder(settings, url=server.grpc_url) as embedder:
            return (await embedder.embed(crops)).vectors

    return asyncio.run(run())


def server_version(server: TritonServer) -> str:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return client.get_server_metadata(as_json=True).get("version", "?")


def serve_and_measure(
    settings: EmbedderSettings,
    faces: np.ndarray,
    concurrencies: list[int],
    per_request: int,
    meter: LoadMeter,
    crops: np.ndarray | None = None,
    shared_memory: tuple[str, ...] = ("none",),
    reverse: bool = False,
) -> dict:
    """One Triton server for these settings: its model config as it reports it, then every
    concurrency level, once per ``shared_memory`` mode of the client (in that order, or the
    other way round with ``reverse``); with ``crops``, also their vectors (for the agreement
    check). ``levels`` holds the first mode's measurements, ``shared_memory_levels`` every
    mode's."""
    server, startup = start_triton(settings)
    try:
        result: dict = {
            "triton_startup_s": round(startup, 1),
            "triton_version": server_version(server),
            "model_config": triton_model_config(server.grpc_url, settings.model_id, settings.model_version),
            "levels": [],
        }
        by_mode: dict[str, list[dict]] = {mode: [] for mode in shared_memory}
        for concurrency in concurrencies:
            for mode in reversed(shared_memory) if reverse else shared_memory:
                client_settings = settings.model_copy(update={"shared_memory": mode})
                by_mode[mode].append(
                    least_disturbed(
                        meter,
                        lambda concurrency=concurrency, client_settings=client_settings: measure_triton(
                            server, client_settings, faces, concurrency, per_request, meter
                        ),
                    )
                )
        result["levels"] = by_mode[shared_memory[0]]
        if len(shared_memory) > 1:
            result["shared_memory_levels"] = by_mode
        if crops is not None:
            result["vectors"] = triton_vectors(server, settings.model_copy(update={"shared_memory": "none"}), crops)
            for mode in shared_memory[1:]:
                mode_vectors = triton_vectors(server, settings.model_copy(update={"shared_memory": mode}), crops)
                result.setdefault("shared_memory_max_abs_diff", {})[mode] = float(
                    np.abs(mode_vectors - result["vectors"]).max()
                )
    finally:
        server.stop()
    return result


def tune(
    args: argparse.Namespace, repository: Path, work: Path, faces: np.ndarray, meter: LoadMeter
) -> tuple[ServingConfig | None, list[dict]]:
    """Each candidate configuration measured briefly at the highest concurrency; the fastest wins."""
    if not args.configs:
        return None, []
    if len(args.configs) == 1:
        return args.configs[0], []
    trials = []
    concurrency = max(args.concurrency)
    for config in args.configs:
        settings = embedder_settings(args, repository, work / f"triton-tune-{len(trials)}", config)
        measured = serve_and_measure(
            settings,
            faces[: args.tune_faces],
            [concurrency],
            args.faces_per_request,
            meter,
            shared_memory=args.shared_memory[:1],
        )
        [result] = measured["levels"]
        trials.append(
            {
                **config.as_dict(),
                "concurrency": concurrency,
                "faces": result["faces"],
                "faces_per_s": result["faces_per_s"],
                "p50_ms": result["p50_ms"],
                "average_batch": result["triton"]["average_batch"],
                "other_processes_cpu_percent": result["load"].get("cpu_percent", {}).get("other_processes"),
            }
        )
        print(
            f"  candidate {config.label:>14}: {result['faces_per_s']:8.1f} faces/s, "
            f"average batch {result['triton']['average_batch']}"
        )
    # At the highest concurrency the queue is never empty, so the queue delay hardly matters
    # there, while at low concurrency it is added to lone requests: among the candidates
    # within TUNING_TIE of the fastest, the shortest delay wins (then the faster).
    fastest = max(t["faces_per_s"] for t in trials)
    close = [t for t in trials if t["faces_per_s"] >= (1 - TUNING_TIE) * fastest]
    best = min(close, key=lambda t: (t["max_queue_delay_us"], -t["faces_per_s"]))
    return args.configs[trials.index(best)], trials


# --- without a server --------------------------------------------------------------------------


def measure_torch_one_at_a_time(
    faces: np.ndarray,
    crops: np.ndarray,
    thread_counts: list[int],
    device: str,
    precision: str,
    meter: LoadMeter,
    max_seconds: float,
) -> tuple[list[dict], np.ndarray]:
    """ServedFaceNet(load_casia_facenet()) in this process, one crop per forward call, result
    copied back to the CPU each time, with each of ``thread_counts`` torch threads in turn,
    over the faces or for ``max_seconds``, whichever ends first. Returns the summary per
    thread count and the crops' vectors."""
    from services.embedder.serving.weights.facenet_casia import load_casia_facenet
    from services.embedder.serving.weights.onnx_export import ServedFaceNet

    model = ServedFaceNet(load_casia_facenet()).to(device)
    if precision == "fp16":
        model = model.half()

    def one(crop: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(crop[None]).to(device)).cpu().numpy()

    def measure(threads: int) -> dict:
        latencies = []
        quiet = meter.settle()
        first = meter.reading()
        began = time.perf_counter()
        for crop in faces:
            sent = time.perf_counter()
            one(crop)
            latencies.append(time.perf_counter() - sent)
            if sent + latencies[-1] - began >= max_seconds:
                break
        seconds = time.perf_counter() - began
        return {
            "threads": threads,
            "device": device,
            "precision": precision,
            "faces": len(latencies),
            "seconds": round(seconds, 3),
            "faces_per_s": round(len(latencies) / seconds, 2),
            **latency_summary(latencies),
            "load": meter.usage(first, meter.reading()),
            "quiet": quiet,
        }

    summaries = []
    with torch.inference_mode():
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for crop in faces[:8]:  # warm-up, not timed
                one(crop)
            summaries.append(least_disturbed(meter, lambda threads=threads: measure(threads)))
        vectors = np.concatenate([one(crop) for crop in crops])
    return summaries, vectors


def measure_onnx_runtime(
    path: Path, faces: np.ndarray, batch: int, threads: int, meter: LoadMeter, max_seconds: float
) -> dict:
    """The served model.onnx in a plain ONNX Runtime session (CPU) in this process, ``batch``
    crops per run, ``threads`` intra-op threads, over the faces or for ``max_seconds``,
    whichever ends first."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    runs = [faces[i : i + batch] for i in range(0, len(faces), batch)]
    for crops in runs[:4]:  # warm-up, not timed
        session.run(None, {name: crops})
    latencies = []
    quiet = meter.settle()
    first = meter.reading()
    began = time.perf_counter()
    done = 0
    for crops in runs:
        sent = time.perf_counter()
        session.run(None, {name: crops})
        latencies.append(time.perf_counter() - sent)
        done += len(crops)
        if sent + latencies[-1] - began >= max_seconds:
            break
    seconds = time.perf_counter() - began
    return {
        "crops_per_run": batch,
        "threads": threads,
        "faces": done,
        "seconds": round(seconds, 3),
        "faces_per_s": round(done / seconds, 2),
        **latency_summary(latencies),
        "load": meter.usage(first, meter.reading()),
        "quiet": quiet,
    }


def measure_torchscript_alone(settings: EmbedderSettings, faces: np.ndarray, batch: int, meter: LoadMeter) -> dict:
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
        quiet = meter.settle()
        first = meter.reading()
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
        "load": meter.usage(first, meter.reading()),
        "quiet": quiet,
    }


def onnx_runtime_cuda_session(path: Path):
    """A plain ONNX Runtime session on the served model.onnx with the CUDA execution provider
    (and only it), or the reason there is none: the onnxruntime package installed here may be
    the CPU build, and a CUDA provider that cannot load its libraries leaves the CPU one."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return None, (
            f"ONNX Runtime {onnxruntime.__version__} here has no CUDAExecutionProvider (providers: "
            f"{', '.join(available)}); the onnxruntime-gpu build has it"
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        providers = ", ".join(session.get_providers())
        return None, f"ONNX Runtime could not start its CUDAExecutionProvider (the session has {providers})"
    return session, ""


def measure_onnx_runtime_cuda_alone(session, faces: np.ndarray, batch: int, meter: LoadMeter) -> dict:
    """The served model.onnx in ``session`` (``onnx_runtime_cuda_session``), ``batch`` crops per
    run, input and output bound on the GPU (I/O binding), so that each run is the model's
    compute, timed up to the outputs' synchronisation. Unlike Triton's onnxruntime-onnx model
    it runs without TensorRT, in the model file's fp32."""
    import onnxruntime

    runs = max(1, len(faces) // batch)
    crops = onnxruntime.OrtValue.ortvalue_from_numpy(repeat_faces(faces, batch), "cuda", 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, crops)
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda", 0)
    for _ in range(3):  # warm-up, not timed
        session.run_with_iobinding(binding)
    binding.synchronize_outputs()
    quiet = meter.settle()
    first = meter.reading()
    began = time.perf_counter()
    for _ in range(runs):
        session.run_with_iobinding(binding)
    binding.synchronize_outputs()
    seconds = time.perf_counter() - began
    return {
        "crops_per_run": batch,
        "precision": "fp32",
        "device": "cuda",
        "runtime": f"ONNX Runtime {onnxruntime.__version__}, CUDAExecutionProvider",
        "faces": runs * batch,
        "seconds": round(seconds, 4),
        "faces_per_s": round(runs * batch / seconds, 1),
        "load": meter.usage(first, meter.reading()),
        "quiet": quiet,
    }


# --- summary -----------------------------------------------------------------------------------


def latency_summary(latencies: list[float]) -> dict:
    values = np.asarray(latencies) * 1000
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "mean_ms": round(float(values.mean()), 2),
    }


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    cosine = np.sum(a * b, axis=1)
    return {"min_cosine": round(float(cosine.min()), 6), "max_abs_diff": float(np.abs(a - b).max())}


def fastest(summaries: list[dict]) -> dict:
    return max(summaries, key=lambda s: s["faces_per_s"])


def evaluate(flavour: str, passes: list[dict]) -> dict:
    """Per pass and configuration: Triton at its best concurrency against each naive alternative
    (the faster of its thread counts), and whether the target is met."""
    rows = []
    for number, run in enumerate(passes, 1):
        torch_best = fastest(run["torch_one_at_a_time"])
        onnx_best = fastest(run["onnx_runtime_one_at_a_time"]) if run.get("onnx_runtime_one_at_a_time") else None
        for name, measured in run["configurations"].items():
            best = fastest(measured["levels"])
            row = {
                "pass": number,
                "configuration": name,
                "best_concurrency": best["concurrency"],
                "best_faces_per_s": best["faces_per_s"],
                "torch_faces_per_s": torch_best["faces_per_s"],
                "torch_threads": torch_best["threads"],
                "speedup_vs_torch": round(best["faces_per_s"] / torch_best["faces_per_s"], 2),
            }
            if onnx_best is not None:
                row.update(
                    onnx_runtime_faces_per_s=onnx_best["faces_per_s"],
                    onnx_runtime_threads=onnx_best["threads"],
                    speedup_vs_onnx_runtime=round(best["faces_per_s"] / onnx_best["faces_per_s"], 2),
                )
            if flavour == "torch-cuda-python":
                alone = run["model_alone"]["faces_per_s"]
                row["met"] = best["faces_per_s"] >= GPU_TARGET_END_TO_END and alone >= GPU_TARGET_MODEL_ALONE
            elif flavour in GPU_FLAVOURS:
                row["met"] = best["faces_per_s"] >= GPU_TARGET_END_TO_END
            else:
                row["met"] = row["speedup_vs_torch"] >= TARGET_SPEEDUP
            rows.append(row)
    if flavour == "torch-cuda-python":
        target = (
            f">= {GPU_TARGET_END_TO_END:,} faces/s end to end through Triton at the best concurrency and "
            f">= {GPU_TARGET_MODEL_ALONE:,} faces/s for the model alone, in every pass"
        )
    elif flavour in GPU_FLAVOURS:
        target = f">= {GPU_TARGET_END_TO_END:,} faces/s end to end through Triton at the best concurrency in every pass"
    else:
        target = (
            f"Triton at its best concurrency >= {TARGET_SPEEDUP}x the one-at-a-time torch faces/s (the faster "
            "of its thread counts), in every pass"
        )
    names = list(dict.fromkeys(row["configuration"] for row in rows))
    met = {name: all(row["met"] for row in rows if row["configuration"] == name) for name in names}
    return {"target": target, "per_pass": rows, "target_met_by": met}


def spread(values: list[float], digits: int = 2) -> str:
    """Per-pass figures: ``a`` when they agree, else ``median (low-high)``."""
    low, high = round(min(values), digits), round(max(values), digits)
    middle = round(float(np.median(values)), digits)
    return f"{low}" if low == high else f"{middle} ({low}-{high})"


def measurements(result: dict) -> list[dict]:
    """Every timed part of the passes."""
    found = []
    for run in result["passes"]:
        for measured in run["configurations"].values():
            for levels in measured.get("shared_memory_levels", {"": measured["levels"]}).values():
                found += levels
        found += run["torch_one_at_a_time"] + run.get("onnx_runtime_one_at_a_time", []) + [run["model_alone"]]
    return found


def headline(result: dict) -> list[str]:
    """The figures that count, per configuration, over the passes."""
    rows = result["evaluation"]["per_pass"]
    lines = [
        f"Per configuration, over {len(result['passes'])} pass(es): median (lowest-highest) of the per-pass figures.",
        "",
    ]
    for name, met in result["evaluation"]["target_met_by"].items():
        mine = [r for r in rows if r["configuration"] == name]
        text = (
            f"**{name}** ({result['configurations'][name]['label']}): Triton best "
            f"{spread([r['best_faces_per_s'] for r in mine], 1)} faces/s; "
            f"{spread([r['speedup_vs_torch'] for r in mine])}x torch one crop at a time "
            f"({spread([r['torch_faces_per_s'] for r in mine], 1)} faces/s)"
        )
        if "speedup_vs_onnx_runtime" in mine[0]:
            text += (
                f", {spread([r['speedup_vs_onnx_runtime'] for r in mine])}x ONNX Runtime one crop at a time "
                f"({spread([r['onnx_runtime_faces_per_s'] for r in mine], 1)} faces/s)"
            )
        lines.append(f"- {text}; target {'met' if met else 'not met'}.")
    return lines


def shared_memory_section(result: dict) -> list[str]:
    """The levels measured once per ``--shared-memory`` mode, side by side (none when only one was)."""
    modes = result.get("shared_memory", ["none"])
    if len(modes) < 2:
        return []
    first = modes[0]
    faces_columns = " | ".join(f"{mode} faces/s" for mode in modes)
    ratio_columns = " | ".join(f"{mode} / {first}" for mode in modes[1:])
    p50_columns = " | ".join(f"{mode} p50 ms" for mode in modes)
    lines = [
        "",
        "## Shared memory",
        "",
        f"Each level measured once per way the client passes the crops (the `shared_memory` setting: "
        f"{', '.join(f'`{m}`' for m in modes)}), one right after the other against the same Triton, in "
        f"requests of {result['faces_per_request']} face(s) ({result['faces_per_request'] * 160 * 160 * 3:,} bytes "
        "of crops each); the order alternates from pass to pass. 'others': other processes' share of the CPU "
        "during each (one figure per way); a ratio says something about shared memory only where those agree.",
        "",
        f"| pass | configuration | concurrency | {faces_columns} | {ratio_columns} | {p50_columns} | others % CPU |",
        "|---:|---|---:|" + "---:|" * (2 * len(modes) + len(modes) - 1) + "---|",
    ]
    for number, run in enumerate(result["passes"], 1):
        for name, measured in run["configurations"].items():
            by_mode = measured["shared_memory_levels"]
            for index, concurrency in enumerate(r["concurrency"] for r in by_mode[first]):
                levels = [by_mode[mode][index] for mode in modes]
                base = levels[0]["faces_per_s"]
                others = ", ".join(
                    str(level.get("load", {}).get("cpu_percent", {}).get("other_processes", "")) for level in levels
                )
                lines.append(
                    f"| {number} | {name} | {concurrency} | "
                    + " | ".join(f"**{level['faces_per_s']}**" for level in levels)
                    + " | "
                    + " | ".join(f"{level['faces_per_s'] / base:.2f}x" for level in levels[1:])
                    + " | "
                    + " | ".join(str(level["p50_ms"]) for level in levels)
                    + f" | {others} |"
                )
    differences = {
        mode: difference
        for measured in result["passes"][0]["configurations"].values()
        for mode, difference in measured.get("shared_memory_max_abs_diff", {}).items()
    }
    if differences:
        lines += [
            "",
            "Vectors through shared memory against those inside the requests, on the distinct crops: "
            + "; ".join(f"{mode}: max abs difference {d:.2e}" for mode, d in differences.items())
            + ".",
        ]
    return lines


def markdown(result: dict) -> str:
    m, crops = result["machine"], result["crops"]
    cpu = result["device"] == "cpu"
    lines = [
        "# Embedder throughput",
        "",
        machine_line(m),
        "",
        load_line(result["load"]) + " Each measurement below has its own share of other processes (column 'others').",
        "",
        quiet_remark(measurements(result), result.get("quiet_percent")),
        "",
        f"Crops: {crops['crops']} 160 x 160 crops that the detector found in {crops['photos']} photos "
        f"({crops['data']}), repeated to {result['faces']} faces per measurement; requests of "
        f"{result['faces_per_request']} face(s) from one `TritonEmbedder` client (max_in_flight = the concurrency). "
        f"{len(result['passes'])} pass(es); every figure below is one pass. Flavour `{result['flavour']}` "
        f"({result['device']}, {result['precision']}), thread budget {result['threads']}. Order within each pass: "
        + ", ".join(f"pass {n}: {run['order']}" for n, run in enumerate(result["passes"], 1))
        + ".",
        "",
        "## Result",
        "",
        f"Target: {result['evaluation']['target']}.",
        "",
        *headline(result),
        "",
        "## Configurations",
        "",
        "| configuration | how it was chosen | as Triton reports it (`get_model_config`) |",
        "|---|---|---|",
    ]
    for name, config in result["configurations"].items():
        how = (
            "the serving fields of `EmbedderSettings` as they ship"
            if name == SHIPPED
            else f"the fastest of {len(result['tuning']) or 1} candidate(s) (below)"
        )
        reported = result["passes"][0]["configurations"][name]["model_config"]
        lines.append(f"| **{name}** {config['label']} | {how} | {describe_triton_config(reported)} |")
    lines.append("")
    if result["tuning"]:
        first = result["tuning"][0]
        lines += [
            f"Tuning: each candidate (instances x threads @ queue delay us, max batch) measured once on "
            f"{first['faces']} faces at concurrency {first['concurrency']}; the fastest, or of those within "
            f"{TUNING_TIE:.0%} of it the one with the shortest queue delay (which lone requests wait at low "
            "concurrency):",
            "",
            "| candidate | faces/s | p50 ms | average batch | others % CPU |",
            "|---|---:|---:|---:|---:|",
        ]
        tuned = result["configurations"].get(TUNED, {}).get("label")
        lines += [
            f"| {t['label']}{' (chosen)' if t['label'] == tuned else ''} | {t['faces_per_s']} | {t['p50_ms']} | "
            f"{t['average_batch']} | {t['other_processes_cpu_percent']} |"
            for t in result["tuning"]
        ]
        lines.append("")

    def others(measured: dict) -> str:
        value = measured.get("load", {}).get("cpu_percent", {}).get("other_processes")
        return "" if value is None else str(value)

    lines += [
        "## Measurements",
        "",
        "'others': the share of the machine's CPU time (all CPUs) that processes other than this benchmark "
        "used during that measurement; 'tries': how often it was measured (the least disturbed try is shown); "
        f"a naive way's loop stops after {result.get('max_seconds')} s ('faces timed').",
        "",
        "| pass | way | concurrency | faces timed | faces/s | p50 ms | p99 ms | Triton average batch | "
        "executions by batch size | others % CPU | tries |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]

    def row(number: int, way: str, concurrency: object, m: dict, batch: str = "", histogram: str = "") -> str:
        return (
            f"| {number} | {way} | {concurrency} | {m['faces']} | **{m['faces_per_s']}** | {m.get('p50_ms', '')} | "
            f"{m.get('p99_ms', '')} | {batch} | {histogram} | {others(m)} | {len(m.get('attempts', [])) or 1} |"
        )

    for number, run in enumerate(result["passes"], 1):
        for name, measured in run["configurations"].items():
            for r in measured["levels"]:
                t = r["triton"]
                histogram = ", ".join(f"{size}: {count}" for size, count in t["executions_by_batch"].items())
                lines.append(row(number, f"Triton, {name}", r["concurrency"], r, t["average_batch"], histogram))
        for b in run["torch_one_at_a_time"]:
            lines.append(row(number, f"naive: torch, one crop per call, {b['threads']} thread(s)", 1, b))
        for o in run.get("onnx_runtime_one_at_a_time", []):
            lines.append(row(number, f"naive: ONNX Runtime, one crop per run, {o['threads']} thread(s)", 1, o))
        a = run["model_alone"]
        if "skipped" in a:
            lines.append(
                f"| {number} | reference: model alone, {a['crops_per_run']} crops per run (no server) | | | "
                f"skipped: {a['skipped']} | | | | | | |"
            )
        else:
            lines.append(row(number, f"reference: model alone, {a['crops_per_run']} crops per run (no server)", "", a))
    lines += [
        "",
        "Triton's statistics per level (timed part only): queue ms per request, model compute ms per execution:",
        "",
    ]
    for number, run in enumerate(result["passes"], 1):
        for name, measured in run["configurations"].items():
            lines.append(
                f"- pass {number}, {name}: "
                + "; ".join(
                    f"c={r['concurrency']}: {r['triton']['requests']} requests in {r['triton']['execution_count']} "
                    f"executions, queue {r['triton']['queue_ms_per_request']} ms, compute "
                    f"{r['triton']['compute_infer_ms_per_execution']} ms "
                    f"({r['triton']['compute_infer_ms_per_execution'] / max(r['triton']['average_batch'], 1):.1f} "
                    "ms/face)"
                    for r in measured["levels"]
                )
            )
    lines += shared_memory_section(result)
    lines += [
        "",
        "## Speed-ups per pass",
        "",
        "Triton at its best concurrency against each naive way (the faster of its thread counts):",
        "",
        "| pass | configuration | best Triton faces/s (concurrency) | vs torch one at a time | "
        "vs ONNX Runtime one at a time | target |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for v in result["evaluation"]["per_pass"]:
        onnx = (
            f"**{v['speedup_vs_onnx_runtime']}x** ({v['onnx_runtime_faces_per_s']}, {v['onnx_runtime_threads']} "
            "thread(s))"
            if "speedup_vs_onnx_runtime" in v
            else "not measured"
        )
        lines.append(
            f"| {v['pass']} | {v['configuration']} | {v['best_faces_per_s']} ({v['best_concurrency']}) | "
            f"**{v['speedup_vs_torch']}x** ({v['torch_faces_per_s']}, {v['torch_threads']} thread(s)) | {onnx} | "
            f"{'met' if v['met'] else 'not met'} |"
        )
    if cpu and result["passes"][0].get("onnx_runtime_one_at_a_time"):
        lines += [
            "",
            "Where the speed-up comes from, per pass: ONNX Runtime vs torch (both one crop per call, faster "
            "thread count); batching in the model alone; each Triton configuration at its best vs ONNX Runtime "
            "one crop per run and vs the model alone:",
            "",
        ]
        for number, run in enumerate(result["passes"], 1):
            torch_best = fastest(run["torch_one_at_a_time"])["faces_per_s"]
            onnx_one = fastest(run["onnx_runtime_one_at_a_time"])["faces_per_s"]
            alone = run["model_alone"]
            parts = [
                f"ONNX Runtime / torch {onnx_one / torch_best:.2f}x",
                f"model alone at {alone['crops_per_run']} crops / 1 crop {alone['faces_per_s'] / onnx_one:.2f}x",
            ]
            for name, measured in run["configurations"].items():
                best = fastest(measured["levels"])["faces_per_s"]
                parts.append(
                    f"Triton {name} / ONNX Runtime 1 crop {best / onnx_one:.2f}x, / model alone "
                    f"{best / alone['faces_per_s']:.2f}x"
                )
            lines.append(f"- pass {number}: " + "; ".join(parts))
    lines += [
        "",
        "Vectors: Triton vs the torch network on the "
        f"{crops['crops']} distinct crops: "
        + "; ".join(
            f"{name}: min cosine {a['min_cosine']}, max abs difference {a['max_abs_diff']:.2e}"
            for name, a in result["agreement"].items()
        )
        + ".",
    ]
    if cpu:
        lines += [
            "",
            "This run measured the CPU only. The GPU flavours (targets "
            f"{GPU_TARGET_END_TO_END:,} faces/s end to end, and for torch-cuda-python {GPU_TARGET_MODEL_ALONE:,} "
            "faces/s for the model alone) are measured by the same script on a machine with a CUDA GPU, into "
            "bench/results/embedder_throughput_<flavour>.{json,md} (onnxruntime-onnx needs a tritonserver with "
            "the onnxruntime backend):",
            "",
            "```sh",
            "python -m bench.embedder_throughput --flavour torch-cuda-python --concurrency 1,4,16,64 "
            "[--faces-per-request 16]",
            "python -m bench.embedder_throughput --flavour onnxruntime-onnx --concurrency 1,4,16,64 "
            "[--faces-per-request 16]",
            "```",
        ]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: positive integers, comma-separated")
    return values


def shared_memory_list(text: str) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [m for m in modes if m not in SHARED_MEMORY_MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated, of {', '.join(SHARED_MEMORY_MODES)}")
    return modes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=sorted(FLAVOUR_DEFAULTS), default="onnx-python")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with labels.json")
    parser.add_argument("--repository", type=Path, help="model repository (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="CPU thread budget: the naive ways' threads")
    parser.add_argument("--detector-threads", type=int, default=1, help="torch threads of the detector (not timed)")
    parser.add_argument("--faces", type=int, help="faces per measurement")
    parser.add_argument("--tune-faces", type=int, help="faces per candidate configuration")
    parser.add_argument("--concurrency", type=int_list, help="requests in flight, comma-separated")
    parser.add_argument("--faces-per-request", type=int, default=1)
    parser.add_argument(
        "--shared-memory",
        type=shared_memory_list,
        default=("none",),
        help="how the client passes crops to Triton, comma-separated, each measured at every level: "
        f"{', '.join(SHARED_MEMORY_MODES)} (the first one counts for tuning and speed-ups)",
    )
    parser.add_argument("--max-batch-size", type=int, help="of the tuning candidates")
    parser.add_argument("--preferred", type=int_list, help="dynamic batching preferred batch sizes of the candidates")
    parser.add_argument(
        "--configs", help="tuning candidates INSTANCESxTHREADS@DELAY_US, comma-separated; 'none': no tuning"
    )
    parser.add_argument("--model-batch", type=int, help="crops per run of the model alone")
    parser.add_argument("--precision", choices=["fp16", "fp32"])
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], help="torch-cuda-python only: cpu runs its code path without a GPU"
    )
    parser.add_argument("--passes", type=int, default=2, help="passes over every measurement")
    add_quiet_options(parser, wait_s=20.0)
    parser.add_argument(
        "--max-seconds", type=float, default=30.0, help="longest timed loop of a naive way (fewer faces then)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--name", help="results file name (default: by flavour)")
    parser.add_argument("--render", type=Path, help="only rewrite the markdown beside this results JSON file")
    args = parser.parse_args()
    if args.render:
        return args

    defaults = FLAVOUR_DEFAULTS[args.flavour]
    if args.device and args.flavour == "onnx-python" and args.device != "cpu":
        parser.error("the onnx-python flavour runs on the CPU")
    if args.device and args.flavour == "onnxruntime-onnx" and args.device != "cuda":
        parser.error("the onnxruntime-onnx flavour runs on a CUDA GPU (Triton's onnxruntime backend with TensorRT)")
    args.device = args.device or defaults["device"]
    args.precision = args.precision or defaults["precision"]
    args.faces = args.faces or defaults["faces"]
    args.tune_faces = min(args.tune_faces or defaults["tune_faces"], args.faces)
    args.concurrency = args.concurrency or int_list(defaults["concurrency"])
    args.max_batch_size = args.max_batch_size or defaults["max_batch_size"]
    args.preferred = args.preferred or int_list(defaults["preferred"])
    args.model_batch = args.model_batch or defaults["model_batch"]
    configs = args.configs or defaults["configs"].format(t=args.threads)
    args.configs = (
        []
        if configs.strip().lower() == "none"
        else list(
            dict.fromkeys(ServingConfig.parse(c, args.max_batch_size, args.preferred) for c in configs.split(","))
        )
    )
    args.name = args.name or (
        "embedder_throughput" if args.flavour == "onnx-python" else f"embedder_throughput_{args.flavour}"
    )
    if "cuda" in args.shared_memory and not torch.cuda.is_available():
        parser.error("--shared-memory cuda needs a CUDA GPU, and torch sees none here")
    if args.device == "cuda" and not torch.cuda.is_available():
        needs = "a CUDA GPU and Triton's onnxruntime backend" if args.flavour == "onnxruntime-onnx" else "a CUDA GPU"
        parser.error(f"--flavour {args.flavour} needs {needs}, and torch sees no GPU here")
    return args


def check_triton_serves(settings: EmbedderSettings) -> None:
    """Exits, saying why, when the tritonserver this benchmark starts (the one bundled in
    nvidia-pytriton) lacks the flavour's backend, before anything is measured."""
    try:
        check_servable(settings)
    except ProvisioningError:
        backend = flavours.get(settings.flavour).backend
        here = sorted(bundled_backends())
        servable = [f.name for f in flavours.FLAVOUR_TABLE if f.backend in here]
        raise SystemExit(
            f"--flavour {settings.flavour} needs Triton's {backend} backend (on a CUDA GPU), and the tritonserver "
            f"this benchmark starts (bundled in nvidia-pytriton) has the {', '.join(here)} backend only: "
            f"nothing measured (it measures {', '.join(servable)} here)"
        ) from None


def main() -> None:
    args = parse_args()
    if args.render:
        print(f"rewrote {render_again(args.render, markdown)}")
        return
    meter = meter_for(args)
    with tempfile.TemporaryDirectory(prefix="embedder-bench-") as temporary:
        work = Path(temporary)
        repository = (args.repository or work / "models").absolute()
        shipped = ServingConfig.shipped()
        first = embedder_settings(args, repository, work / "triton", shipped)
        check_triton_serves(first)

        print(f"crops: detecting faces in {args.data} ...")
        crops, crop_info = detect_crops(args.data, args.detector_threads)
        faces = repeat_faces(crops, args.faces)
        print(
            f"  {crop_info['crops']} crops from {crop_info['photos']} photos in {crop_info['detection_seconds']} s; "
            f"{len(faces)} faces per measurement"
        )

        print(f"models: preparing {args.flavour} in {repository} ...")
        began = time.perf_counter()
        prepare_models(first, flavours=[args.flavour])
        print(f"  ready in {time.perf_counter() - began:.1f} s")

        if len(args.configs) > 1:
            print(f"tuning: {len(args.configs)} candidates at concurrency {max(args.concurrency)} ...")
        tuned, trials = tune(args, repository, work, faces, meter)
        configurations = {SHIPPED: shipped}
        if tuned is not None and tuned != shipped:
            configurations[TUNED] = tuned
        for name, config in configurations.items():
            print(f"{name}: {config.label} (instances x intra-op threads @ queue delay us, max batch)")
        settings = {
            name: embedder_settings(args, repository, work / f"triton-{index}", config)
            for index, (name, config) in enumerate(configurations.items())
        }

        # Each pass measures everything once: Triton in each configuration at every level and
        # (Triton stopped) the naive ways and the reference, so that every pass compares figures
        # taken minutes apart. The naive ways run with the whole thread budget and with one: on a
        # busy machine torch's OpenMP threads can lose more to waiting for each other than a
        # second core gains; the faster counts.
        thread_counts = [args.threads] + ([1] if args.device == "cpu" and args.threads != 1 else [])
        onnx_path = repository / "onnx-python" / first.model_id / first.model_version / "model.onnx"
        flavour_onnx_path = repository / args.flavour / first.model_id / first.model_version / "model.onnx"
        passes: list[dict] = []
        vectors: dict[str, np.ndarray] = {}
        for number in range(1, args.passes + 1):
            pass_start = meter.reading()
            run: dict = {"configurations": {}}
            passes.append(run)

            def triton_part(name: str, run: dict = run, number: int = number) -> None:
                measured = serve_and_measure(
                    settings[name],
                    faces,
                    args.concurrency,
                    args.faces_per_request,
                    meter,
                    crops if number == 1 else None,
                    shared_memory=args.shared_memory,
                    reverse=number % 2 == 0,
                )
                if "vectors" in measured:
                    vectors[name] = measured.pop("vectors")
                run["configurations"][name] = measured
                for levels in measured.get("shared_memory_levels", {"": measured["levels"]}).values():
                    for r in levels:
                        print(
                            f"  pass {number} Triton {name} c={r['concurrency']:<3} shared memory "
                            f"{r.get('shared_memory', 'none'):<6}: {r['faces_per_s']:9.1f} faces/s, p50 {r['p50_ms']} "
                            f"ms, p99 {r['p99_ms']} ms, average batch {r['triton']['average_batch']}"
                        )

            def naive_part(run: dict = run, number: int = number) -> None:
                run["torch_one_at_a_time"], vectors["torch"] = measure_torch_one_at_a_time(
                    faces, crops, thread_counts, args.device, args.precision, meter, args.max_seconds
                )
                if args.flavour == "onnx-python":
                    run["onnx_runtime_one_at_a_time"] = [
                        least_disturbed(
                            meter,
                            lambda threads=threads: measure_onnx_runtime(
                                onnx_path, faces, 1, threads, meter, args.max_seconds
                            ),
                        )
                        for threads in thread_counts
                    ]
                    run["model_alone"] = least_disturbed(
                        meter,
                        lambda: measure_onnx_runtime(
                            onnx_path, faces, args.model_batch, args.threads, meter, args.max_seconds
                        ),
                    )
                elif args.flavour == "onnxruntime-onnx":
                    session, reason = onnx_runtime_cuda_session(flavour_onnx_path)
                    run["model_alone"] = (
                        least_disturbed(
                            meter, lambda: measure_onnx_runtime_cuda_alone(session, faces, args.model_batch, meter)
                        )
                        if session is not None
                        else {"skipped": reason, "crops_per_run": args.model_batch, "device": args.device}
                    )
                else:
                    run["model_alone"] = least_disturbed(
                        meter, lambda: measure_torchscript_alone(settings[SHIPPED], faces, args.model_batch, meter)
                    )
                for key in ("torch_one_at_a_time", "onnx_runtime_one_at_a_time"):
                    for summary in run.get(key, []):
                        print(
                            f"  pass {number} {key}, {summary['threads']} thread(s): {summary['faces_per_s']} faces/s"
                        )
                alone = run["model_alone"]
                print(
                    f"  pass {number} model alone: "
                    + (f"skipped, {alone['skipped']}" if "skipped" in alone else f"{alone['faces_per_s']} faces/s")
                )

            # Odd passes: Triton in each configuration, then the naive ways; even passes the
            # other way round, so that a drift in the machine's speed favours neither.
            parts = [lambda name=name: triton_part(name) for name in settings] + [naive_part]
            for part in parts if number % 2 else reversed(parts):
                part()
            run["configurations"] = {name: run["configurations"][name] for name in settings}
            run["order"] = "Triton first" if number % 2 else "naive first"
            run["load"] = meter.usage(pass_start, meter.reading())
    load = meter.summary()
    meter.stop()

    triton_version = passes[0]["configurations"][SHIPPED]["triton_version"]
    result = {
        "benchmark": args.name,
        "command": " ".join(["python -m bench.embedder_throughput", *sys.argv[1:]]),
        "flavour": args.flavour,
        "device": args.device,
        "precision": args.precision,
        "faces": len(faces),
        "faces_per_request": args.faces_per_request,
        "concurrency": args.concurrency,
        "shared_memory": list(args.shared_memory),
        "threads": args.threads,
        "quiet_percent": meter.quiet_percent,
        "attempts": meter.attempts,
        "max_seconds": args.max_seconds,
        "crops": crop_info,
        "configurations": {name: config.as_dict() for name, config in configurations.items()},
        "embedder_settings": {name: settings_of(s) for name, s in settings.items()},
        "tuning": trials,
        "passes": passes,
        "agreement": {name: agreement(v, vectors["torch"]) for name, v in vectors.items() if name != "torch"},
        "load": load,
        "machine": machine_facts(["torch", "onnxruntime", "numpy", "tritonclient"], {"Triton server": triton_version}),
    }
    result["evaluation"] = evaluate(args.flavour, passes)
    json_path, md_path = write_results(args.out, args.name, result, markdown)
    print(md_path.read_text())
    print(f"results: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
