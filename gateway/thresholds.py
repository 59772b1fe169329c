"""The file of calibrated thresholds (``thresholds_file``): ``facesearch calibrate`` writes a
model's entry, the gateway reads the thresholds when it starts."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def read_thresholds(path: Path) -> dict[str, float]:
    """Model id -> calibrated threshold, as stored in ``path`` (which must be such a file)."""
    models = json.loads(path.read_text())["models"]
    return {model_id: float(entry["threshold"]) for model_id, entry in models.items()}


def store_threshold(path: Path, model_id: str, entry: dict[str, Any], dataset: Path) -> None:
    """Writes (or replaces) the model's entry of the thresholds file the gateway reads at start."""
    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored.setdefault("models", {})[model_id] = {
        **entry,
        "dataset": str(dataset),
        "calibrated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(stored, indent=2) + "\n")
    os.replace(temporary, path)
