"""The facesearch image's Dockerfile (deploy/docker/Dockerfile), read rather than built (no
container engine here): a pinned base, every package of the project copied in, the packages
the set-up installs without dependencies installed the same way, and a numeric non-root user."""

from __future__ import annotations

import re
import tomllib

from tests.deployment_tools import REPO

DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in lines]


def test_base_image_is_pinned_to_a_python_release() -> None:
    [python_image] = [value for word, value in instructions() if word == "ARG" and value.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", python_image)
    assert [value for word, value in instructions() if word == "FROM"] == [
        "${PYTHON_IMAGE} AS build",
        "${PYTHON_IMAGE}",
    ]


def test_every_package_of_the_project_is_copied() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    copied = {
        source
        for word, value in instructions()
        if word == "COPY" and "--from" not in value
        for source in value.split()[:-1]
    }
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    packages.discard("facesearch")  # generated code, under protos/
    assert packages | {"protos", "pyproject.toml"} <= copied
    assert "README.md" in copied  # pyproject.toml's readme


def test_packages_without_dependencies_match_the_set_up() -> None:
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text()
    pins = set(re.findall(r"[a-z-]+==[\d.]+", bootstrap.split("--no-deps", 1)[1]))
    [run] = [value for word, value in instructions() if word == "RUN" and "--no-deps" in value]
    assert set(re.findall(r"[a-z-]+==[\d.]+", run.split("--no-deps", 1)[1])) == pins


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [value for word, value in instructions() if word == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    chart_values = (REPO / "deploy" / "helm" / "facesearch" / "values.yaml").read_text()
    uid, gid = users[-1].split(":")
    assert f"runAsUser: {uid}" in chart_values and f"runAsGroup: {gid}" in chart_values
