"""Resampling by area from running sums: the values of torch's interpolate(mode="area") on
whole images (pyramid levels, shrunk and enlarged) and on crops (smaller and larger than
their output), to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.functional import interpolate

from services.detector.backends.area_sampling import AreaSampler, bins

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (2, 97, 131, 3), dtype=np.uint8)


def torchs(pixels: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """torch's own area resampling of N x H x W x 3 pixels."""
    return interpolate(torch.from_numpy(pixels).permute(0, 3, 1, 2).float(), size=size, mode="area")


def test_bins_cover_the_source_as_adaptive_pooling_does():
    first, last = bins(np.array([0, 10]), np.array([5, 7]), 3)
    assert first.tolist() == [[0, 1, 3], [10, 12, 14]]
    assert last.tolist() == [[2, 4, 5], [13, 15, 17]]


@pytest.mark.parametrize("size", [(58, 79), (41, 56), (12, 17), (97, 131), (150, 200)])
def test_a_level_is_torchs_area_resampling(images, size):
    found = AreaSampler(images, CPU).level(size)
    assert found.shape == (2, 3, *size)
    assert found.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(found, torchs(images, size), rtol=0, atol=1e-4)


def test_crops_are_torchs_area_resampling_of_each_region(images):
    # Regions smaller and larger than the 24 px output, at the edges and inside, of both images.
    regions = np.array([[0, 0, 97, 0, 131], [1, 5, 20, 7, 30], [0, 60, 97, 100, 131], [1, 40, 88, 2, 60]])
    owners, top, bottom, left, right = regions.T
    found = AreaSampler(images, CPU).crops(owners, top, bottom, left, right, 24)
    expected = torch.cat([torchs(images[o : o + 1, y0:y1, x0:x1], (24, 24)) for o, y0, y1, x0, x1 in regions])
    assert found.shape == (4, 3, 24, 24)
    assert torch.allclose(found, expected, rtol=0, atol=1e-4)
    assert AreaSampler(images, CPU).crops([], [], [], [], [], 48).shape == (0, 3, 48, 48)


def test_the_levels_come_before_the_crops(images):
    sampler = AreaSampler(images, CPU)
    sampler.level((40, 50))
    sampler.crops([0], [0], [10], [0], [10], 24)
    with pytest.raises(RuntimeError, match="before the crops"):
        sampler.level((40, 50))
