"""Face quality measures."""

from __future__ import annotations

import cv2
import numpy as np


def blur_variance(rgb_crop: np.ndarray, native_side: float | None = None) -> float:
    """Variance of the Laplacian of the grey face: low for blurred faces.

    Measured on the crop, so every face is judged at the same scale; but never above the
    face's own resolution: a crop enlarged from a small face (``native_side``, the photo
    pixels its side spans, below the crop's side) is shrunk back to that side first, or
    the enlargement's smoothness would count as blur and small sharp faces as blurred.
    """
    grey = cv2.cvtColor(rgb_crop, cv2.COLOR_RGB2GRAY)
    side = grey.shape[0]
    if native_side is not None and native_side < side:
        native = max(8, round(native_side))
        grey = cv2.resize(grey, (native, native), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())
