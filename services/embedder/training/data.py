"""The training data: aligned face crops of labelled photos, made by the project's detector.

The labels are those of ``facesearch calibrate`` (``evaluation.calibration.load_labels``): a
``labels.json`` file with sets of photos, or a folder with a subfolder of photos per person.
A photo is used when it is labelled with one face of one person and the detector (its
default settings, set to make the model's crops) finds exactly one face in it. Identities
mean something only within their set, so each is named ``set/identity``.

The crops are made once: ``crops.npz`` in the output folder keeps them with a fingerprint of
the photos and of the crop geometry, and a later run with the same ones reads them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.calibration import LabelledPhoto, load_labels
from services.embedder.models import EmbeddingModel

log = logging.getLogger(__name__)

CACHE_NAME = "crops.npz"


@dataclass
class FaceCrops:
    """Aligned crops (N x side x side x 3 uint8) with their identity and photo."""

    crops: np.ndarray
    identities: list[str]  # "set/identity"
    photos: list[str]  # "set/file"

    def __len__(self) -> int:
        return len(self.identities)

    def subset(self, indices: np.ndarray | list[int]) -> FaceCrops:
        indices = list(indices)
        return FaceCrops(self.crops[indices], [self.identities[i] for i in indices], [self.photos[i] for i in indices])

    def labels(self) -> np.ndarray:
        """One integer per crop, the same for crops of one identity."""
        numbers = {identity: n for n, identity in enumerate(sorted(set(self.identities)))}
        return np.array([numbers[identity] for identity in self.identities], dtype=np.int64)


def single_person_photos(dataset: Path) -> list[LabelledPhoto]:
    return [photo for photo in load_labels(dataset) if photo.single is not None]


def _fingerprint(photos: list[LabelledPhoto], model: EmbeddingModel) -> str:
    crop = model.crop
    parts = [f"{crop.side} {crop.alignment} {crop.margin}"]
    for photo in photos:
        stat = photo.path.stat()
        parts.append(f"{photo.key} {photo.single} {stat.st_size} {stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def detect_crops(photos: list[LabelledPhoto], model: EmbeddingModel) -> FaceCrops:
    """The crop of every photo in which the detector finds exactly one face."""
    from services.detector.backends import create_backend
    from services.detector.detection import FaceDetector
    from services.detector.images import ImageLimits, decode_image
    from services.detector.settings import DetectorSettings

    settings = DetectorSettings(embedding_model=model.id)
    detector = FaceDetector(create_backend(settings), settings)
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    crops, identities, keys = [], [], []
    for photo in photos:
        image = decode_image(photo.path.read_bytes(), limits, min_side=settings.max_side)
        [detection] = detector.detect([image], detector.default_options())
        if len(detection.faces) != 1:
            log.info("skipping %s: %d faces found, 1 labelled", photo.key, len(detection.faces))
            continue
        crops.append(detection.faces[0].crop)
        identities.append(f"{photo.set_name}/{photo.single}")
        keys.append(photo.key)
    shape = (0, *model.crop.shape)
    return FaceCrops(np.stack(crops) if crops else np.zeros(shape, np.uint8), identities, keys)


def load_crops(dataset: Path, cache_folder: Path, model: EmbeddingModel) -> FaceCrops:
    """The crops of ``dataset``, from ``cache_folder``'s cache when it holds these photos' crops,
    else detected and cached there."""
    photos = single_person_photos(Path(dataset))
    fingerprint = _fingerprint(photos, model)
    cache = Path(cache_folder) / CACHE_NAME
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if meta.get("fingerprint") == fingerprint:
                return FaceCrops(stored["crops"], meta["identities"], meta["photos"])
        log.info("the cached crops in %s are of other photos; detecting again", cache)
    log.info("detecting the faces of %d labelled photos", len(photos))
    found = detect_crops(photos, model)
    cache.parent.mkdir(parents=True, exist_ok=True)
    meta = {"fingerprint": fingerprint, "identities": found.identities, "photos": found.photos}
    temporary = cache.with_name(f".{cache.name}.tmp.npz")
    np.savez(temporary, crops=found.crops, meta=np.array(json.dumps(meta)))
    temporary.replace(cache)
    return found


def split_by_identity(crops: FaceCrops, held_out: float, seed: int) -> tuple[FaceCrops, FaceCrops]:
    """(training, held-out) crops: a ``held_out`` share of the identities with two crops or more
    (at least two identities when there are four or more), all of their crops, is kept apart.
    Identities with one crop stay in training (they can still be negatives there)."""
    counts: dict[str, int] = {}
    for identity in crops.identities:
        counts[identity] = counts.get(identity, 0) + 1
    eligible = sorted(identity for identity, count in counts.items() if count >= 2)
    wanted = round(held_out * len(eligible))
    if held_out > 0 and len(eligible) >= 4:
        wanted = max(wanted, 2)
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(eligible, size=min(wanted, len(eligible)), replace=False).tolist()) if wanted else set()
    apart = [i for i, identity in enumerate(crops.identities) if identity in chosen]
    kept = [i for i, identity in enumerate(crops.identities) if identity not in chosen]
    return crops.subset(kept), crops.subset(apart)
