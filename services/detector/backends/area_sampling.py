"""Resampling by area as torch's ``interpolate(mode="area")`` does it (adaptive average pooling),
computed from running sums of the uint8 pixels: output pixel (i, j) of an ``h x w`` region
resampled to ``oh x ow`` is the mean of rows ``floor(i h / oh)`` to ``ceil((i + 1) h / oh)`` and
columns ``floor(j w / ow)`` to ``ceil((j + 1) w / ow)`` (end excluded). The sums are exact
integers, so the values are torch's (to float32 rounding), at a fraction of its CPU time on an
image pyramid, and in a few gathers for hundreds of crops of any sizes where torch would take
one call each. The same code runs on the CPU and on a GPU.
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
    """Area resampling of a batch of images (N x H x W x 3 uint8) on ``device``; results are
    float32 tensors there, N x 3 x oh x ow, laid out channels last (the layout the networks run
    fastest in).

    One tensor of running sums serves both kinds of result: along the rows (what the whole-image
    levels take), then, on the first crop, along the columns too, in place (what crops take). So
    the levels come first, as MTCNN's stages take them, and the sampler holds one int32 per pixel
    and channel (int64 for images of more than 2**31 / 255 pixels)."""

    def __init__(self, images: np.ndarray, device: torch.device) -> None:
        count, height, width, _ = images.shape
        self.device = device
        dtype = torch.int32 if height * width * 255 < 2**31 else torch.int64
        # torch reads numpy's memory as it is, and will not take memory marked read-only.
        source = images if images.flags.writeable and images.flags.c_contiguous else np.array(images)
        pixels = torch.from_numpy(source).to(device)
        # A zero row and column first, so that a sum from a to b is sums[b] - sums[a].
        self.sums = torch.zeros((count, height + 1, width + 1, 3), dtype=dtype, device=device)
        torch.cumsum(pixels, dim=1, dtype=dtype, out=self.sums[:, 1:, 1:])
        self.integrated = False  # summed along the columns as well
        self.shape = (height, width)

    def level(self, size: tuple[int, int]) -> torch.Tensor:
        """The whole images resampled to ``size`` (height, width)."""
        if self.integrated:
            raise RuntimeError("the whole-image levels are taken before the crops")
        height, width = self.shape
        top, bottom = (b[0] for b in bins(np.zeros(1, np.int64), np.array([height]), size[0]))
        left, right = (b[0] for b in bins(np.zeros(1, np.int64), np.array([width]), size[1]))
        rows = self.sums[:, self._on_device(bottom), 1:] - self.sums[:, self._on_device(top), 1:]  # N x oh x W x 3
        sums = torch.zeros((rows.shape[0], size[0], width + 1, 3), dtype=rows.dtype, device=self.device)
        torch.cumsum(rows, dim=2, out=sums[:, :, 1:])
        total = sums[:, :, self._on_device(right)] - sums[:, :, self._on_device(left)]  # N x oh x ow x 3
        counts = (bottom - top)[:, None] * (right - left)[None, :]
        return _channels_first(total, counts[None, :, :, None])

    def crops(self, owners, top, bottom, left, right, side: int) -> torch.Tensor:
        """Regions (image, rows top to bottom, columns left to right, end excluded) resampled to
        ``side`` x ``side``: K x 3 x side x side."""
        if not len(owners):
            return _channels_first(torch.zeros((0, side, side, 3), device=self.device), np.ones((1, 1, 1, 1)))
        if not self.integrated:
            self.sums.cumsum_(dim=2)
            self.integrated = True
        row_first, row_last = bins(np.asarray(top), np.asarray(bottom) - np.asarray(top), side)
        col_first, col_last = bins(np.asarray(left), np.asarray(right) - np.asarray(left), side)
        rows, columns = self.sums.shape[1:3]
        # Corners as indices into the sums' pixels, one flat index per (crop, row, column).
        first_rows = ((np.asarray(owners)[:, None] * rows + row_first) * columns)[:, :, None]
        last_rows = ((np.asarray(owners)[:, None] * rows + row_last) * columns)[:, :, None]
        first_columns, last_columns = col_first[:, None, :], col_last[:, None, :]
        flat = self.sums.view(-1, 3)

        def at(index: np.ndarray) -> torch.Tensor:
            return flat[self._on_device(index)]

        total = (
            at(last_rows + last_columns)
            - at(first_rows + last_columns)
            - at(last_rows + first_columns)
            + at(first_rows + first_columns)
        )
        counts = (row_last - row_first)[:, :, None] * (col_last - col_first)[:, None, :]
        return _channels_first(total, counts[:, :, :, None])

    def _on_device(self, index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(index)).to(self.device)


def _channels_first(total: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
    """Sums (N x H x W x C) over their pixel counts, as an N x C x H x W float32 tensor whose
    memory stays channels last."""
    means = total.float() / torch.from_numpy(counts.astype(np.float32)).to(total.device)
    return means.permute(0, 3, 1, 2)
