"""Resampling by area as torch's ``interpolate(mode="area")`` does it (adaptive average pooling),
computed from running sums of the uint8 pixels: output pixel (i, j) of an ``h x w`` region
resampled to ``oh x ow`` is the mean of rows ``floor(i h / oh)`` to ``ceil((i + 1) h / oh)`` and
columns ``floor(j w / ow)`` to ``ceil((j + 1) w / ow)`` (end excluded). The sums are exact
integers, so the values are torch's (to float32 rounding), at a fraction of its CPU time on
an image pyramid and on hundreds of small crops.

``AreaSampler`` works on the CPU; ``TorchAreaSampler`` is torch's own, for a GPU.
"""

from __future__ import annotations

import numpy as np
import torch


def bins(start: np.ndarray, length: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last-plus-one source index of each of ``out`` bins over ``length`` pixels from
    ``start`` (arrays of K regions, K x out each)."""
    steps = np.arange(out + 1, dtype=np.int64)
    first = start[:, None] + (steps[None, :-1] * length[:, None]) // out
    last = start[:, None] - ((-steps[None, 1:] * length[:, None]) // out)  # ceiling division
    return first, last


class AreaSampler:
    """Area resampling of a batch of images (N x H x W x 3 uint8); results are float32 tensors,
    N x 3 x oh x ow, laid out channels last (the layout the networks run fastest in).

    One array of running sums serves both: along the rows (what the whole-image levels take),
    then, on the first crop, along the columns too, in place (what crops take). So the levels
    come first, as MTCNN's stages take them, and the sampler holds one int32 per pixel and
    channel (int64 for images of more than 2**31 / 255 pixels)."""

    def __init__(self, images: np.ndarray) -> None:
        count, height, width, _ = images.shape
        dtype = np.int32 if height * width * 255 < 2**31 else np.int64
        # A zero row and column first, so that a sum from a to b is sums[b] - sums[a].
        self.sums = np.zeros((count, height + 1, width + 1, 3), dtype=dtype)
        np.cumsum(images, axis=1, dtype=dtype, out=self.sums[:, 1:, 1:])
        self.integrated = False  # summed along the columns as well
        self.shape = (height, width)

    def level(self, size: tuple[int, int]) -> torch.Tensor:
        """The whole images resampled to ``size`` (height, width)."""
        if self.integrated:
            raise RuntimeError("the whole-image levels are taken before the crops")
        height, width = self.shape
        top, bottom = (b[0] for b in bins(np.zeros(1, np.int64), np.array([height]), size[0]))
        left, right = (b[0] for b in bins(np.zeros(1, np.int64), np.array([width]), size[1]))
        rows = self.sums[:, bottom, 1:] - self.sums[:, top, 1:]  # N x oh x W x 3
        sums = np.zeros((rows.shape[0], size[0], width + 1, 3), dtype=rows.dtype)
        np.cumsum(rows, axis=2, out=sums[:, :, 1:])
        total = sums[:, :, right] - sums[:, :, left]  # N x oh x ow x 3
        counts = ((bottom - top)[:, None] * (right - left)[None, :]).astype(np.float32)
        return _channels_first(total.astype(np.float32) / counts[None, :, :, None])

    @property
    def integral(self) -> np.ndarray:
        """The sums over rows and columns (N x H+1 x W+1 x 3)."""
        if not self.integrated:
            np.cumsum(self.sums, axis=2, out=self.sums)
            self.integrated = True
        return self.sums

    def crops(self, owners, top, bottom, left, right, side: int) -> torch.Tensor:
        """Regions (image, rows top to bottom, columns left to right, end excluded) resampled to
        ``side`` x ``side``: K x 3 x side x side."""
        if not len(owners):
            return torch.zeros((0, 3, side, side), dtype=torch.float32).contiguous(memory_format=torch.channels_last)
        row_first, row_last = bins(np.asarray(top), np.asarray(bottom) - np.asarray(top), side)
        col_first, col_last = bins(np.asarray(left), np.asarray(right) - np.asarray(left), side)
        integral = self.integral
        rows, columns = integral.shape[1:3]
        # Corners as indices into the integral's pixels, one flat index per (crop, row, column).
        first_rows = (np.asarray(owners)[:, None] * rows + row_first) * columns
        last_rows = (np.asarray(owners)[:, None] * rows + row_last) * columns
        r0, r1 = first_rows[:, :, None], last_rows[:, :, None]
        c0, c1 = col_first[:, None, :], col_last[:, None, :]
        flat = integral.reshape(-1, 3)
        total = (
            np.take(flat, r1 + c1, axis=0)
            - np.take(flat, r0 + c1, axis=0)
            - np.take(flat, r1 + c0, axis=0)
            + np.take(flat, r0 + c0, axis=0)
        )
        counts = ((row_last - row_first)[:, :, None] * (col_last - col_first)[:, None, :]).astype(np.float32)
        return _channels_first(total.astype(np.float32) / counts[:, :, :, None])


class TorchAreaSampler:
    """The same resampling by torch on the images' device (a GPU's)."""

    def __init__(self, images: np.ndarray, device: torch.device) -> None:
        self.pixels = torch.tensor(images, device=device).permute(0, 3, 1, 2).float()
        self.shape = images.shape[1:3]

    def level(self, size: tuple[int, int]) -> torch.Tensor:
        return torch.nn.functional.interpolate(self.pixels, size=size, mode="area")

    def crops(self, owners, top, bottom, left, right, side: int) -> torch.Tensor:
        parts = [
            torch.nn.functional.interpolate(self.pixels[o : o + 1, :, y0:y1, x0:x1], size=(side, side), mode="area")
            for o, y0, y1, x0, x1 in zip(owners, top, bottom, left, right)
        ]
        return torch.cat(parts) if parts else self.pixels.new_zeros((0, 3, side, side))


def sampler_for(images: np.ndarray, device: torch.device) -> AreaSampler | TorchAreaSampler:
    return AreaSampler(images) if device.type == "cpu" else TorchAreaSampler(images, device)


def _channels_first(pixels: np.ndarray) -> torch.Tensor:
    """An N x H x W x C array as an N x C x H x W tensor whose memory stays channels last."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
