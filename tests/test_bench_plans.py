"""The benchmarks' plans, checked without running them: every step of ``bench.gpu_suite`` parses
with its benchmark's own argument parser and names registered flavours, the suite refuses to
run without nvidia-smi, and ``bench.indexing_throughput``'s re-encoded copies of the photos
are distinct files of the same pictures."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from bench import gpu_suite, indexing_throughput
from services.detector.settings import DetectorSettings
from services.embedder.serving import flavours
from tests.conftest import REPO, photo_bytes

OUT = Path("bench/results/gpu_suite")
# A JPEG, an RGBA PNG and a photo whose people are small: three kinds of source.
PHOTOS = (("photoprism", "11.jpg"), ("face_recognition", "alex_lacamoire_3.png"), ("photoprism", "12.jpg"))


class Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


def parsed_by_its_benchmark(step: gpu_suite.Step, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The step's arguments as its benchmark reads them, in the step's environment: through the
    module's ``parse_args`` (with its checks, a CUDA GPU assumed) where it has one, else
    through the parser its ``main`` builds, stopped as soon as that has parsed."""
    module = importlib.import_module(step.module)
    for key, value in step.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", [step.module, *step.args])
    if hasattr(module, "parse_args"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        return module.parse_args()
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed) as caught:
        module.main()
    return caught.value.namespace


GPU_FLAVOURS = [f.name for f in flavours.FLAVOUR_TABLE if f.instance_kind == "KIND_GPU"]


@pytest.fixture(scope="module")
def steps() -> list[gpu_suite.Step]:
    return gpu_suite.plan(OUT)


def test_every_gpu_step_parses_with_its_benchmarks_own_parser(steps, monkeypatch) -> None:
    runnable = [step for step in steps if not step.skipped]
    assert {step.module for step in runnable} == {
        "bench.detector_throughput",
        "bench.embedder_throughput",
        "bench.indexing_throughput",
    }
    embedder_flavours = []
    for step in runnable:
        with monkeypatch.context() as patch:
            args = parsed_by_its_benchmark(step, patch)
            assert args.out == OUT, step.name
            if step.module == "bench.detector_throughput":
                assert DetectorSettings(port=0).device == "cuda"  # the benchmark's detector, from the environment
            if step.module == "bench.embedder_throughput":
                assert args.device == "cuda" and args.flavour in flavours.REGISTRY
                assert step.name == f"embedder-{args.flavour}"
                embedder_flavours.append(args.flavour)
            if step.module == "bench.indexing_throughput":
                assert args.detector_device == "cuda" and args.embedder_device == "cuda"
                assert flavours.get(args.embedder_flavour).instance_kind == "KIND_GPU"
    assert embedder_flavours == GPU_FLAVOURS  # every GPU flavour's step parses, none left out


def test_no_embedder_step_is_skipped(steps) -> None:
    embedder = [step for step in steps if step.module == "bench.embedder_throughput"]
    assert [step.name for step in embedder] == [f"embedder-{name}" for name in GPU_FLAVOURS]
    assert {step.name: step.skipped for step in embedder if step.skipped} == {}
    assert set(GPU_FLAVOURS) <= gpu_suite.embedder_benchmark_flavours()


def test_the_gpu_steps_cover_every_gpu_flavour_by_its_registered_name(steps) -> None:
    gpu = GPU_FLAVOURS
    named = {
        flag: [step.args[step.args.index(flag) + 1] for step in steps if flag in step.args]
        for flag in ("--flavour", "--embedder-flavour")
    }
    assert named["--flavour"] == gpu  # one embedder step per GPU flavour
    assert set(named["--flavour"] + named["--embedder-flavour"]) <= set(flavours.REGISTRY)
    assert [step.name for step in steps if step.skipped] == [
        f"embedder-{name}" for name in gpu if name not in gpu_suite.embedder_benchmark_flavours()
    ]
    targets = " ".join(step.target for step in steps)
    assert ">= 300 photos/s" in targets and ">= 20,000 faces/s" in targets


def test_the_plan_lists_every_step_and_no_gpu_means_status_2(steps, tmp_path) -> None:
    run = [sys.executable, "-m", "bench.gpu_suite"]
    shown = subprocess.run([*run, "--plan"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    for step in steps:
        assert (step.skipped if step.skipped else step.command()) in shown
    # No nvidia-smi on PATH: nothing runs, nothing is written.
    env = {**os.environ, "PATH": str(tmp_path)}
    refused = subprocess.run(
        [*run, "--out", str(tmp_path / "results")], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "needs an NVIDIA GPU: nvidia-smi is not on PATH" in refused.stderr
    assert not (tmp_path / "results").exists()


def test_each_steps_figure_is_read_from_its_benchmarks_results(tmp_path) -> None:
    """The figures come from the results files as the benchmarks write them (here the CPU runs'
    files, under the names the GPU runs give theirs)."""
    results = REPO / "bench" / "results"
    gpu_embedder = [tmp_path / f"embedder_throughput_{name}.json" for name in GPU_FLAVOURS]
    for path in gpu_embedder:
        path.write_text((results / "embedder_throughput.json").read_text())
    figures = {
        step.name: step.figure(
            [results / "detector_throughput.json", results / "indexing_throughput.json", *gpu_embedder]
        )
        for step in gpu_suite.plan(OUT)
        if not step.skipped
    }
    assert figures["detector"].endswith("photos/s through the detector (not met)")
    for name in GPU_FLAVOURS:
        assert "faces/s through Triton at best" in figures[f"embedder-{name}"]
    assert figures["indexing"].startswith("best ") and "15x met by" in figures["indexing"]


def oriented_size(content: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(content)) as image:
        return ImageOps.exif_transpose(image).size


def test_re_encoded_copies_are_distinct_bytes_of_the_same_picture() -> None:
    sources = [photo_bytes(*photo) for photo in PHOTOS]
    # One more source: the last (not square) with an EXIF orientation: turned 90 degrees on display.
    with Image.open(io.BytesIO(sources[-1])) as image:
        assert image.width != image.height
        exif = image.getexif()
        exif[0x0112] = 6
        turned = io.BytesIO()
        image.save(turned, "JPEG", exif=exif)
    sources.append(turned.getvalue())
    copies = range(1, len(indexing_throughput.COPY_VARIANTS) + 1)
    hashes = {hashlib.sha256(content).hexdigest() for content in sources}
    for content in sources:
        width, height = oriented_size(content)
        for copy in copies:
            made = indexing_throughput.reencoded(content, copy)
            hashes.add(hashlib.sha256(made).hexdigest())
            _, scale = indexing_throughput.COPY_VARIANTS[copy - 1]
            with Image.open(io.BytesIO(made)) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert image.getexif().get(0x0112, 1) == 1
                got = image.size
            assert abs(got[0] - width * scale) <= 1 and abs(got[1] - height * scale) <= 1, (copy, got, width, height)
            assert got[0] / got[1] == pytest.approx(width / height, rel=0.01)
    assert len(hashes) == len(sources) * (1 + len(copies))
