"""The tools the deployment checks run (helm, promtool, prometheus) and the chart rendered by helm.

scripts/fetch_tools.sh fetches the tools into .tools/bin (the set-up runs it); a test that
needs one that is missing runs it once more, and skips, saying why, only if the tool still
cannot be had.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / ".tools" / "bin"
CHART = REPO / "deploy" / "helm" / "facesearch"
KUBE_VERSION = "1.30.0"

# The values files the chart ships, by the name the tests give them.
VALUES_FILES = {
    "default": [],
    "cpu": [CHART / "values-cpu.yaml"],
    "production-gpu": [CHART / "values-production-gpu.yaml"],
}
# Everything that is off by default switched on, on top of the production values.
EVERYTHING_ON = [
    "backfill.enabled=true",
    "backfill.archive.persistentVolumeClaim=photos",
    "backfill.apiKeySecret.name=backfill-api-key",
    "migration.enabled=true",
    "migration.command={facesearch,models,prepare}",
]


@functools.cache
def _fetch_tools() -> str:
    """Runs scripts/fetch_tools.sh; returns what it said."""
    result = subprocess.run(
        [str(REPO / "scripts" / "fetch_tools.sh")], check=False, capture_output=True, text=True, timeout=600
    )
    return "; ".join((result.stdout + result.stderr).split("\n")).strip("; ")


def tool(name: str) -> Path:
    """The path of a fetched tool; skips the test when it cannot be fetched."""
    path = TOOLS / name
    if not path.is_file():
        said = _fetch_tools()
        if not path.is_file():
            pytest.skip(f"{name} could not be fetched into {TOOLS}: scripts/fetch_tools.sh said: {said}")
    return path


def helm(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(tool("helm")), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def value_args(values_files: Iterable[Path] = (), settings: Iterable[str] = ()) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["--values", str(path)]
    for setting in settings:
        args += ["--set", setting]
    return args


@functools.cache
def _rendered(values_files: tuple[Path, ...], settings: tuple[str, ...], release: str, namespace: str) -> str:
    return helm(
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        *value_args(values_files, settings),
    ).stdout


def render(
    values_files: Iterable[Path] = (),
    settings: Iterable[str] = (),
    *,
    release: str = "fs",
    namespace: str = "facesearch",
) -> list[dict]:
    """The manifests `helm template` makes (a fresh copy each call)."""
    text = _rendered(tuple(values_files), tuple(settings), release, namespace)
    return [document for document in yaml.safe_load_all(text) if document]


def only(manifests: list[dict], kind: str, name_suffix: str = "") -> dict:
    """The one manifest of ``kind`` whose name ends with ``name_suffix``."""
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{len(found)} {kind} named *{name_suffix}: {[m['metadata']['name'] for m in found]}"
    return found[0]
