"""The training run: triplet-loss fine-tuning of the last blocks of a FaceNet.

What is trained: the modules named in ``TrainConfig.trainable`` (by default the last five
Inception-ResNet-C blocks, the final block, the bottleneck and its batch norm of facenet-
pytorch's ``InceptionResnetV1``); every other parameter is frozen, so the early blocks give
the same features as before and no gradient is computed through them. The network stays in
eval mode throughout: its batch norms keep their statistics (the CASIA conversion's
convolution batch norms are identities carrying folded offsets, and P x K batches are too
small for batch statistics) and its dropout is off. The network is trained through the served
wrapper (``ServedFaceNet``), so it sees the pixels exactly as it does when served.

One step: batch ``step`` of the P x K sampler, augmented (``Augmentation``, drawn from a
generator seeded by the seed and the step), embedded, its distance matrix mined (batch-hard
or semi-hard), the triplet loss, one Adam step. Batches and augmentations depend only on the
seed and the step number, so a resumed run repeats exactly what the uninterrupted run does.

Checkpoints (``<out>/checkpoints/step-<step>.pt``, every ``checkpoint_every`` steps and at the
end, the latest two kept; torch.save of plain tensors and numbers, loadable with
``weights_only=True``)::

    format            1
    step              the number of steps done
    config            the TrainConfig (as a dict)
    base_weights      the SHA-256 of the source weights the run started from
    trainable_state   the state (parameters and buffers) of the trainable modules only
    optimizer         Adam's state dict
    history           per step: loss, active share of triplets, triplets

Resuming loads the latest checkpoint, checks that it is of the same base weights and the same
settings (except ``steps`` and ``checkpoint_every``, which may change), and goes on from its step.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from services.embedder.training.augmentation import NONE, Augmentation
from services.embedder.training.data import FaceCrops
from services.embedder.training.loss import pairwise_distances, triplet_loss
from services.embedder.training.mining import mine
from services.embedder.training.options import DEFAULT_TRAINABLE, MINING
from services.embedder.training.sampling import PKSampler

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2  # the latest ones; older ones are deleted
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.pt$")
# Settings a resumed run may change.
_MAY_CHANGE = {"steps", "checkpoint_every"}


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    mining: str = "batch-hard"
    margin: float = 0.2
    p: int = 8
    k: int = 4
    learning_rate: float = 1e-5
    seed: int = 0
    checkpoint_every: int = 100
    trainable: tuple[str, ...] = DEFAULT_TRAINABLE
    augment: bool = True

    def __post_init__(self) -> None:
        if self.mining not in MINING:
            raise ValueError(f"unknown mining {self.mining!r} (one of {', '.join(MINING)})")
        if self.steps < 0 or self.checkpoint_every < 1:
            raise ValueError("steps must be at least 0 and checkpoint_every at least 1")
        if not self.margin > 0:
            raise ValueError("the margin must be positive")

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["trainable"] = list(self.trainable)
        return values


@dataclass
class StepResult:
    step: int  # 1-based: the number of steps done after it
    loss: float
    active: float  # share of triplets with a positive loss
    triplets: int


def freeze(network: nn.Module, trainable: tuple[str, ...]) -> list[nn.Parameter]:
    """Freezes every parameter of ``network`` outside the modules ``trainable`` names and
    returns the others (raises TrainingError for a name the network has not)."""
    modules = dict(network.named_modules())
    unknown = [name for name in trainable if name not in modules or not name]
    if unknown:
        raise TrainingError(f"the network has no module {', '.join(unknown)}")
    chosen = []
    for name, parameter in network.named_parameters():
        train = any(name == prefix or name.startswith(prefix + ".") for prefix in trainable)
        parameter.requires_grad_(train)
        if train:
            chosen.append(parameter)
    return chosen


def trainable_state(network: nn.Module, trainable: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {
        key: value.detach().clone()
        for key, value in network.state_dict().items()
        if any(key.startswith(prefix + ".") for prefix in trainable)
    }


class Training:
    """One run over ``crops`` of ``served`` (a ServedFaceNet, whose network is trained in place)."""

    def __init__(
        self, served: nn.Module, crops: FaceCrops, config: TrainConfig, out: Path, base_weights: str = ""
    ) -> None:
        self.served, self.config, self.out, self.base_weights = served, config, Path(out), base_weights
        self.network: nn.Module = served.network
        self.crops = torch.from_numpy(np.ascontiguousarray(crops.crops))
        self.labels = torch.from_numpy(crops.labels())
        self.sampler = PKSampler(crops.labels(), config.p, config.k, seed=config.seed)
        self.augmentation = Augmentation() if config.augment else NONE
        torch.manual_seed(config.seed)
        self.parameters = freeze(self.network, config.trainable)
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate)
        self.step_done = 0
        self.history: list[dict[str, float]] = []
        self.served.eval()

    # --- one step ---------------------------------------------------------------------------

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step``'s crops, augmented, and labels (a function of the seed and step only)."""
        indices = torch.from_numpy(self.sampler.batch(step))
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        return self.augmentation(self.crops[indices], generator), self.labels[indices]

    def step(self) -> StepResult:
        pixels, labels = self.batch(self.step_done)
        self.served.eval()  # batch norms and dropout as served (see the module docstring)
        embeddings = self.served(pixels)
        distances = pairwise_distances(embeddings)
        anchors, positives, negatives = mine(self.config.mining, distances, labels, self.config.margin)
        loss, active = triplet_loss(distances, anchors, positives, negatives, self.config.margin)
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            self.optimizer.step()
        self.step_done += 1
        result = StepResult(self.step_done, float(loss.detach()), active, len(anchors))
        self.history.append({"loss": result.loss, "active": result.active, "triplets": result.triplets})
        return result

    def run(self, progress: Callable[[StepResult], None] = lambda _: None) -> None:
        """Steps until ``config.steps`` are done, with a checkpoint every ``checkpoint_every``
        steps and one at the end."""
        while self.step_done < self.config.steps:
            result = self.step()
            progress(result)
            if self.step_done % self.config.checkpoint_every == 0 or self.step_done == self.config.steps:
                self.save_checkpoint()

    # --- checkpoints --------------------------------------------------------------------------

    def checkpoint_folder(self) -> Path:
        return self.out / CHECKPOINTS

    def save_checkpoint(self) -> Path:
        folder = self.checkpoint_folder()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{self.step_done:08d}.pt"
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step_done,
            "config": self.config.as_dict(),
            "base_weights": self.base_weights,
            "trainable_state": trainable_state(self.network, self.config.trainable),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
        }
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(state, temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        log.info("checkpoint %s", path)
        for old in checkpoints(folder)[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        return path

    def resume(self) -> Path | None:
        """Loads the latest checkpoint of ``out`` (None when there is none)."""
        path = latest_checkpoint(self.checkpoint_folder())
        if path is None:
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{path}: checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        if state["base_weights"] != self.base_weights:
            raise TrainingError(f"{path} was trained from other weights ({state['base_weights'][:16]}...)")
        ours, theirs = self.config.as_dict(), dict(state["config"])
        changed = sorted(key for key in ours if key not in _MAY_CHANGE and ours[key] != theirs.get(key))
        if changed:
            details = ", ".join(f"{key} {theirs.get(key)!r} -> {ours[key]!r}" for key in changed)
            raise TrainingError(f"{path} is of a run with other settings ({details}); use another --out")
        expected = set(trainable_state(self.network, self.config.trainable))
        loaded = self.network.load_state_dict(state["trainable_state"], strict=False)
        if loaded.unexpected_keys or set(state["trainable_state"]) != expected:
            raise TrainingError(f"{path}: its trained state does not fit the network")
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_done = int(state["step"])
        self.history = list(state["history"])
        log.info("resumed from %s (step %d)", path, self.step_done)
        return path


def checkpoints(folder: Path) -> list[Path]:
    """The checkpoints in ``folder``, oldest step first."""
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _CHECKPOINT_NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    found = checkpoints(folder)
    return found[-1] if found else None
