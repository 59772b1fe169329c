"""Preparing the embedder's Triton model repositories (``facesearch models prepare``).

Layout under ``settings.model_repository`` (``<repo>``), one Triton model repository per
flavour, each holding one model named after the weights id (``settings.model_id``)::

    <repo>/manifest.json
    <repo>/onnx-python/<model_id>/config.pbtxt               python backend + ONNX Runtime (CPU)
    <repo>/onnx-python/<model_id>/<version>/model.py         (triton_models/onnx_python/model.py)
    <repo>/onnx-python/<model_id>/<version>/model.onnx
    <repo>/torch-cuda-python/<model_id>/config.pbtxt         python backend + torch (CUDA, fp16)
    <repo>/torch-cuda-python/<model_id>/<version>/model.py   (triton_models/torch_python/model.py)
    <repo>/torch-cuda-python/<model_id>/<version>/model.pt   (TorchScript)
    <repo>/onnxruntime-onnx/<model_id>/config.pbtxt          Triton's onnxruntime backend + TensorRT
    <repo>/onnxruntime-onnx/<model_id>/<version>/model.onnx

A Triton server is pointed at one flavour folder (``--model-repository <repo>/<flavour>``).
What each flavour's folder holds and how its config.pbtxt is built is in ``flavours.py``.

The weights are loaded (converted, for casia) at most once per run, and only when a model
file has to be made; the ONNX file is exported once and copied into both flavours that
serve it. ``manifest.json`` records, per flavour, the weights (id, source, file, SHA-256),
the settings that shaped the config, and the SHA-256 of every file written, with what each
model file was made from. A later run with the same inputs verifies every file against it
and writes nothing (not even the manifest); a changed setting rewrites the configs, other
weights or a damaged or missing file rewrite that file, and ``force`` rewrites everything.
Files that an earlier run wrote and that are no longer wanted (another model id or version)
are deleted; nothing else in the folders is touched.

Fine-tuned versions (``facesearch train --export``, ``record_trained_version``) are model
files that no weights can make again: the manifest's ``trained`` section records each one
(``<flavour>/<model_id>/<version>``: its base weights, its files and their SHA-256, what the
training was). A run whose ``model_version`` is such a version verifies its ONNX file instead
of exporting the weights (and copies it into the other ONNX flavour; a TorchScript flavour
cannot serve it), and no run deletes the files of a fine-tuned version.

Each config serves exactly the pinned ``model_version`` (a ``specific`` version policy), so
a version folder added beside it is served only once ``model_version`` names it.

Nothing here imports torch until a model file has to be made, so checking an up-to-date
repository is quick and light (``stale_models``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.embedder.serving import flavours
from services.embedder.serving.flavours import FLAVOURS
from services.embedder.serving.weights import sources
from services.embedder.serving.weights.sources import WeightsFile, WeightsSourceError, file_sha256

if TYPE_CHECKING:
    from torch import nn

    from services.embedder.settings import EmbedderSettings

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
LOCK_NAME = ".prepare.lock"
# Part of every model file's fingerprint: bump it when ServedFaceNet, an export (ONNX opset,
# tracing) or a weights loader changes what the same weights turn into, so that existing
# repositories are made again.
EXPORT_REVISION = 2
CONTENT = "content"  # made_from of files whose expected bytes are known (configs, model.py)


class ProvisioningError(RuntimeError):
    """The models cannot be prepared; the message says why and what to do."""


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    made_from: str  # CONTENT, or the fingerprint of a model file (format, weights, revision)


@dataclass
class FlavourEntry:
    """One flavour's model as written: its name and version, the weights, the settings
    that shaped its config, and its files (paths relative to the repository)."""

    model: str
    version: str
    weights: dict[str, str]
    settings: dict[str, Any]
    files: dict[str, FileRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "weights": self.weights,
            "settings": self.settings,
            "files": {path: {"sha256": r.sha256, "made_from": r.made_from} for path, r in sorted(self.files.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FlavourEntry:
        return cls(
            model=str(data["model"]),
            version=str(data["version"]),
            weights=dict(data["weights"]),
            settings=dict(data["settings"]),
            files={path: FileRecord(str(r["sha256"]), str(r["made_from"])) for path, r in data["files"].items()},
        )


@dataclass
class TrainedVersion:
    """A fine-tuned version of a flavour's model: its files (paths relative to the repository),
    the weights it was trained from, and what the training was."""

    flavour: str
    model: str
    version: str
    base_weights: dict[str, str]
    files: dict[str, FileRecord]
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.flavour}/{self.model}/{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "flavour": self.flavour,
            "model": self.model,
            "version": self.version,
            "base_weights": self.base_weights,
            "files": {path: {"sha256": r.sha256, "made_from": r.made_from} for path, r in sorted(self.files.items())},
            "training": self.training,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainedVersion:
        return cls(
            flavour=str(data["flavour"]),
            model=str(data["model"]),
            version=str(data["version"]),
            base_weights=dict(data["base_weights"]),
            files={path: FileRecord(str(r["sha256"]), str(r["made_from"])) for path, r in data["files"].items()},
            training=dict(data.get("training", {})),
        )


@dataclass
class Manifest:
    """The repository's manifest after a run, and what that run did."""

    repository: Path
    flavours: dict[str, FlavourEntry]
    trained: dict[str, TrainedVersion] = field(default_factory=dict)  # by "<flavour>/<model>/<version>"
    written: list[Path] = field(default_factory=list)  # files (re)written by this run
    removed: list[Path] = field(default_factory=list)  # files of earlier runs deleted by this run
    verified: list[Path] = field(default_factory=list)  # files found up to date

    @property
    def path(self) -> Path:
        return self.repository / MANIFEST_NAME

    @property
    def up_to_date(self) -> bool:
        """True when this run found every file in place and changed nothing."""
        return not self.written and not self.removed

    def flavour_repository(self, flavour: str) -> Path:
        """The folder a Triton server for ``flavour`` is pointed at."""
        return self.repository / flavour

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "flavours": {name: entry.to_json() for name, entry in sorted(self.flavours.items())},
        }
        if self.trained:
            data["trained"] = {key: version.to_json() for key, version in sorted(self.trained.items())}
        return data

    def trained_files(self) -> dict[str, FileRecord]:
        """Every file of a fine-tuned version, by path relative to the repository."""
        return {path: record for version in self.trained.values() for path, record in version.files.items()}

    def trained_artifact(self, model: str, version: str, artifact: str) -> FileRecord | None:
        """The record of the ``artifact`` file of a fine-tuned ``model`` ``version`` (in any flavour)."""
        for trained in self.trained.values():
            if trained.model == model and trained.version == version:
                for record in trained.files.values():
                    if record.made_from.startswith(f"{artifact}, fine-tuned"):
                        return record
        return None

    def is_trained(self, model: str, version: str) -> bool:
        return any(t.model == model and t.version == version for t in self.trained.values())

    @classmethod
    def read(cls, repository: Path) -> Manifest:
        """The manifest in ``repository``; an empty one when there is none or it is unreadable
        (then every model file is made again)."""
        path = repository / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT}")
            flavours = {name: FlavourEntry.from_json(entry) for name, entry in data["flavours"].items()}
            trained = {key: TrainedVersion.from_json(entry) for key, entry in data.get("trained", {}).items()}
        except FileNotFoundError:
            flavours, trained = {}, {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("ignoring unreadable model manifest %s (%s); its models will be made again", path, error)
            flavours, trained = {}, {}
        return cls(repository, flavours, trained)


def manifest_text(manifest: Manifest) -> str:
    return json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"


def prepare_models(settings: EmbedderSettings, force: bool = False, flavours: Iterable[str] | None = None) -> Manifest:
    """Writes (or verifies) the model repository of each flavour (default: all of them) and
    returns the manifest. Raises ProvisioningError when the weights are missing, cannot be
    downloaded or converted, or the repository cannot be written."""
    return _Preparation(settings, flavours).run(force)


def stale_models(settings: EmbedderSettings, flavours: Iterable[str] | None = None) -> list[str]:
    """What ``prepare_models`` would write or delete, one line each, without writing anything
    (and without importing torch); empty when the flavours are up to date. Raises
    ProvisioningError when the weights are missing."""
    return _Preparation(settings, flavours).stale()


def repository_root(settings: EmbedderSettings) -> Path:
    return Path(settings.model_repository).absolute()


def check_flavours(names: Iterable[str] | None) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(names)) if names else FLAVOURS
    unknown = [name for name in chosen if name not in FLAVOURS]
    if unknown:
        raise ProvisioningError(f"unknown flavour {', '.join(unknown)} (one of {', '.join(FLAVOURS)})")
    return chosen


@dataclass(frozen=True)
class _Planned:
    """One file a flavour's model folder must hold."""

    relpath: str  # relative to the repository, with "/"
    content: bytes | None = None  # known bytes (configs, model.py)
    artifact: str | None = None  # one of flavours.ARTIFACTS: made from the weights
    made_from: str = CONTENT
    trained: bool = False  # a fine-tuned model file: verified or copied, never made from the weights


class _Preparation:
    def __init__(self, settings: EmbedderSettings, flavours: Iterable[str] | None) -> None:
        self.settings = settings
        self.flavours = check_flavours(flavours)
        self.repository = repository_root(settings)
        self.old = Manifest.read(self.repository)
        self._network: nn.Module | None = None
        self._weights: WeightsFile | None = None
        self._made: dict[str, Path] = {}  # made_from -> a verified or just written model file

    # --- the weights -----------------------------------------------------------------------

    def weights(self, download: bool) -> WeightsFile | None:
        """The source weights file (downloaded first if need be and ``download``); None when
        they are not downloaded yet and ``download`` is false."""
        if self._weights is None:
            settings = self.settings
            try:
                path = sources.locate(settings.weights, settings.weights_path, allow_download=settings.allow_download)
                if path is None:
                    if not download:
                        return None
                    path = sources.download(settings.weights)
                self._weights = WeightsFile(settings.weights, path.absolute(), file_sha256(path))
            except WeightsSourceError as error:
                raise ProvisioningError(str(error)) from None
            except OSError as error:
                raise ProvisioningError(f"cannot read the {settings.weights} weights: {error}") from None
        return self._weights

    def network(self) -> nn.Module:
        if self._network is None:
            weights = self.weights(download=True)
            log.info("loading the %s weights from %s", weights.source, weights.path)
            try:
                self._network = sources.load_network(weights)
            except WeightsSourceError as error:
                raise ProvisioningError(str(error)) from None
        return self._network

    # --- what each flavour holds ------------------------------------------------------------

    def plan(self, name: str, weights: WeightsFile) -> tuple[FlavourEntry, list[_Planned]]:
        s = self.settings
        flavour = flavours.get(name)
        options = flavour.option_values(s)
        config = flavours.config_text(flavour.model_config(s.model_id, options, s.model, version=s.model_version))
        planned = [_Planned(f"{name}/{s.model_id}/config.pbtxt", content=config.encode())]
        trained = self.old.is_trained(s.model_id, s.model_version)
        for file in flavour.files:
            relpath = flavours.model_file(name, s.model_id, s.model_version, file.name)
            if file.source_path is not None:
                planned.append(_Planned(relpath, content=file.source_path.read_bytes()))
            elif trained:
                record = self.old.trained_artifact(s.model_id, s.model_version, file.artifact)
                if record is None:
                    raise ProvisioningError(
                        f"version {s.model_version} of {s.model_id} is fine-tuned, with no {file.artifact} file: "
                        f"the {name} flavour cannot serve it (prepare the ONNX flavours alone: --flavour onnx-python "
                        "--flavour onnxruntime-onnx; or pin another model_version)"
                    )
                planned.append(_Planned(relpath, artifact=file.artifact, made_from=record.made_from, trained=True))
            else:
                planned.append(
                    _Planned(relpath, artifact=file.artifact, made_from=_fingerprint(file.artifact, weights))
                )
        entry = FlavourEntry(
            model=s.model_id,
            version=s.model_version,
            weights={"id": s.model_id, "source": weights.source, "file": str(weights.path), "sha256": weights.sha256},
            settings=options,
        )
        return entry, planned

    def problem(self, planned: _Planned, record: FileRecord | None) -> str | None:
        """Why ``planned`` must be written, or None when the file on disk is the right one."""
        path = self.repository / planned.relpath
        if not path.is_file():
            return "missing"
        if planned.content is not None:
            wanted = hashlib.sha256(planned.content).hexdigest()
            return None if file_sha256(path) == wanted else "differs from the settings and code"
        if planned.trained and (record is None or record.made_from != planned.made_from):
            record = self.old.trained_files().get(planned.relpath, record)
        if record is None or record.made_from != planned.made_from:
            return "made from other weights" if record else "not in the manifest"
        return None if file_sha256(path) == record.sha256 else "checksum mismatch"

    # --- checking and writing ----------------------------------------------------------------

    def stale(self) -> list[str]:
        weights = self.weights(download=False)
        if weights is None:
            return [f"the {self.settings.weights} weights are not downloaded yet"]
        lines = []
        for flavour in self.flavours:
            _, planned = self.plan(flavour, weights)
            old = self.old.flavours.get(flavour)
            records = old.files if old else {}
            kept = {p.relpath for p in planned} | set(self.old.trained_files())
            for relpath in sorted(set(records) - kept):
                if (self.repository / relpath).exists():
                    lines.append(f"{relpath}: no longer wanted")
            for item in planned:
                reason = self.problem(item, records.get(item.relpath))
                if reason:
                    lines.append(f"{item.relpath}: {reason}")
        return lines

    def run(self, force: bool) -> Manifest:
        try:
            self.repository.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ProvisioningError(f"cannot create the model repository {self.repository}: {error}") from None
        with _locked(self.repository / LOCK_NAME):
            self.old = Manifest.read(self.repository)  # as left by whoever held the lock before
            old_text = _read_text(self.repository / MANIFEST_NAME)
            weights = self.weights(download=True)
            manifest = Manifest(self.repository, dict(self.old.flavours), dict(self.old.trained))
            for flavour in self.flavours:  # a flavour that cannot be planned fails before anything is written
                self.plan(flavour, weights)
            for flavour in self.flavours:
                manifest.flavours[flavour] = self._prepare_flavour(flavour, weights, force, manifest)
            text = manifest_text(manifest)
            if text != old_text:
                _write_atomically(manifest.path, text.encode())
            return manifest

    def _prepare_flavour(self, flavour: str, weights: WeightsFile, force: bool, manifest: Manifest) -> FlavourEntry:
        entry, planned = self.plan(flavour, weights)
        old = self.old.flavours.get(flavour)
        records = old.files if old else {}

        # Model files first: when the weights cannot be converted, nothing has been written.
        for item in sorted(planned, key=lambda item: item.artifact is None):
            path = self.repository / item.relpath
            for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # of a run that was killed
                leftover.unlink(missing_ok=True)
            reason = "forced" if force else self.problem(item, records.get(item.relpath))
            if reason is None:
                sha = file_sha256(path) if item.content is None else hashlib.sha256(item.content).hexdigest()
                manifest.verified.append(path)
            else:
                log.info("writing %s (%s)", path, reason)
                sha = self._write(item, path)
                manifest.written.append(path)
            if item.artifact:
                self._made.setdefault(item.made_from, path)
            entry.files[item.relpath] = FileRecord(sha, item.made_from)

        # Files an earlier run wrote for this flavour that the model no longer has (never those
        # of a fine-tuned version).
        for relpath in sorted(set(records) - {p.relpath for p in planned} - set(self.old.trained_files())):
            path = self.repository / relpath
            if path.is_file() or path.is_symlink():
                path.unlink()
                manifest.removed.append(path)
                log.info("removed %s", path)
            _prune_empty_folders(path.parent, stop=self.repository / flavour)
        return entry

    def _write(self, item: _Planned, path: Path) -> str:
        """Writes one file (atomically) and returns its SHA-256."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if item.content is not None:
                _write_atomically(path, item.content)
                return hashlib.sha256(item.content).hexdigest()
            temporary = _temporary(path)
            try:
                copy = self._copy_source(item.made_from, path)
                if copy is not None:
                    shutil.copyfile(copy, temporary)
                elif item.trained:
                    raise ProvisioningError(
                        f"{path} is a fine-tuned model file that is missing or damaged, and the weights cannot "
                        "make it again: export it again (facesearch train --export) or pin another model_version"
                    )
                else:
                    self._export(item.artifact, temporary)
                sha = file_sha256(temporary)
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)
            return sha
        except OSError as error:
            raise ProvisioningError(f"cannot write {path}: {error}") from None

    def _copy_source(self, made_from: str, target: Path) -> Path | None:
        """A file made from the same weights the same way, checked, to copy instead of exporting."""
        candidate = self._made.get(made_from)
        if candidate is not None and candidate != target and candidate.is_file():
            return candidate
        recorded = [entry.files for entry in self.old.flavours.values()] + [self.old.trained_files()]
        for files in recorded:
            for relpath, record in files.items():
                path = self.repository / relpath
                same = record.made_from == made_from and path != target and path.is_file()
                if same and file_sha256(path) == record.sha256:
                    return path
        return None

    def _export(self, artifact: str | None, path: Path) -> None:
        from services.embedder.serving.weights.onnx_export import ServedFaceNet, export_onnx, export_torchscript

        served = ServedFaceNet(self.network(), self.settings.model)
        if artifact == "onnx":
            log.info("exporting the ONNX model")
            export_onnx(served, path)
        elif artifact == "torchscript":
            log.info("tracing the TorchScript model")
            export_torchscript(served, path)
        else:
            raise ProvisioningError(f"unknown model file kind {artifact!r}")


def trained_fingerprint(artifact: str, base: WeightsFile, sha256: str) -> str:
    """What a fine-tuned model file is made from (``Manifest.trained_artifact`` finds it by its start)."""
    return f"{artifact}, fine-tuned from {base.source} weights sha256:{base.sha256}, file sha256:{sha256}"


def next_version(repository: Path, flavour: str, model_id: str) -> str:
    """One more than the highest version of ``model_id`` in ``flavour``'s folder or the manifest."""
    folder = Path(repository) / flavour / model_id
    numbers = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    manifest = Manifest.read(Path(repository))
    numbers += [int(t.version) for t in manifest.trained.values() if t.model == model_id]
    numbers += [int(e.version) for e in manifest.flavours.values() if e.model == model_id]
    return str(max(numbers, default=0) + 1)


def record_trained_version(
    repository: Path,
    flavour: str,
    model_id: str,
    base: WeightsFile,
    write: Callable[[Path], dict[str, str]],
    training: dict[str, Any],
) -> TrainedVersion:
    """Adds a fine-tuned version of ``model_id`` to ``flavour``'s folder of ``repository``, under
    the preparation lock: the next version number, ``write(version folder)`` writes its files
    (returning {file name: artifact kind, or "" for a file copied from ``triton_models/``}),
    and the manifest's ``trained`` section records them. The flavour's config is left alone:
    serving the version is pinning it (``model_version``) and preparing the models again."""
    repository = Path(repository).absolute()
    if not (repository / flavour / model_id / "config.pbtxt").is_file():
        raise ProvisioningError(
            f"no prepared {flavour} model {model_id} in {repository}: run `facesearch models prepare` first"
        )
    with _locked(repository / LOCK_NAME):
        version = next_version(repository, flavour, model_id)
        folder = repository / flavour / model_id / version
        folder.mkdir(parents=True)
        try:
            kinds = write(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        files = {}
        for name, artifact in kinds.items():
            relpath = flavours.model_file(flavour, model_id, version, name)
            sha = file_sha256(repository / relpath)
            files[relpath] = FileRecord(sha, trained_fingerprint(artifact, base, sha) if artifact else CONTENT)
        trained = TrainedVersion(
            flavour, model_id, version, {"source": base.source, "sha256": base.sha256}, files, training
        )
        manifest = Manifest.read(repository)
        manifest.trained[trained.key] = trained
        _write_atomically(manifest.path, manifest_text(manifest).encode())
    return trained


def _fingerprint(artifact: str, weights: WeightsFile) -> str:
    """What a model file is made from: its format, the exact source weights, and the export code's
    revision (imported from nowhere, so that checking needs no torch)."""
    return f"{artifact}, {weights.source} weights sha256:{weights.sha256}, export revision {EXPORT_REVISION}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (two preparations of one repository wait for each other)."""
    with open(path, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another preparation of %s", path.parent)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path)
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _prune_empty_folders(folder: Path, stop: Path) -> None:
    """Removes ``folder`` and its parents up to (not including) ``stop`` while they are empty
    (a ``__pycache__`` that the python backend left beside a removed model.py counts as empty)."""
    while folder != stop and stop in folder.parents:
        if folder.is_dir():
            leftovers = list(folder.iterdir())
            if leftovers == [folder / "__pycache__"]:
                shutil.rmtree(leftovers[0], ignore_errors=True)
            elif leftovers:
                return
            folder.rmdir()
        folder = folder.parent


def describe(manifest: Manifest, flavours: Sequence[str] | None = None) -> list[str]:
    """One line per flavour: where its repository is and what it serves."""
    lines = []
    for flavour in flavours or sorted(manifest.flavours):
        entry = manifest.flavours.get(flavour)
        if entry is not None:
            lines.append(
                f"{flavour:<18} {manifest.flavour_repository(flavour)}  "
                f"(model {entry.model} version {entry.version}, {entry.weights['source']} weights)"
            )
    return lines
