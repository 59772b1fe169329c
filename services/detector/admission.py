"""Admission control: how many photos, and how many of their bytes, a detector process has in
hand at once (being decoded, waiting for the model or in it), over all its calls.

A photo past either limit is refused at once with ``Overloaded`` (``RESOURCE_EXHAUSTED`` for
the caller, who may retry later) instead of queueing behind the others without bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Overloaded(RuntimeError):
    """The detector has as many photos in hand as it takes; try again later."""


class PhotosInHand:
    """Counts the photos taken on and their encoded bytes. Used from the server's event loop
    only (no lock)."""

    def __init__(self, max_photos: int, max_bytes: int) -> None:
        self.max_photos = max_photos
        self.max_bytes = max_bytes
        self.photos = 0
        self.bytes = 0

    @contextmanager
    def holding(self, sizes: list[int]) -> Iterator[list[Overloaded | None]]:
        """Takes on the photos of these encoded sizes, in order, while they fit; yields, per
        photo, None when it was taken on or the ``Overloaded`` that refuses it; gives them
        back on leaving."""
        taken, outcomes = [], []
        for size in sizes:
            if self.photos + 1 > self.max_photos or (self.photos and self.bytes + size > self.max_bytes):
                outcomes.append(
                    Overloaded(
                        f"the detector has {self.photos} photos ({self.bytes} bytes) in hand, its limit "
                        f"of {self.max_photos} photos or {self.max_bytes} bytes: retry later"
                    )
                )
                continue
            self.photos += 1
            self.bytes += size
            taken.append(size)
            outcomes.append(None)
        try:
            yield outcomes
        finally:
            self.photos -= len(taken)
            self.bytes -= sum(taken)
