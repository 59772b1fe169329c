"""Face quality measures."""

from __future__ import annotations

import cv2
import numpy as np


def blur_variance(rgb_crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey face: low for blurred faces.

    Measured on the aligned crop, so every face is judged at the same scale.
    """
    grey = cv2.cvtColor(rgb_crop, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())
