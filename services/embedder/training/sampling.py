"""Batches of P persons x K photos, the shape that online triplet mining needs.

Every batch draws ``p`` different identities among those with at least two photos, then ``k``
photos of each: without replacement when the identity has ``k`` or more, otherwise all of its
photos and the rest drawn again from them (so a batch always holds ``p * k`` items, grouped by
identity). Batch ``step`` depends only on the seed and the step number, so that a resumed run
draws exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PKSampler:
    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0) -> None:
        if p < 2 or k < 2:
            raise ValueError(f"a batch needs at least 2 persons of at least 2 photos (p={p}, k={k})")
        groups: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            groups.setdefault(int(label), []).append(index)
        self.groups = {label: np.array(items) for label, items in sorted(groups.items()) if len(items) >= 2}
        if len(self.groups) < p:
            raise ValueError(f"{len(self.groups)} identities have two photos or more, fewer than p={p}")
        self.identities = np.array(sorted(self.groups))
        self.p, self.k, self.seed = p, k, seed

    def batch(self, step: int) -> np.ndarray:
        """The ``p * k`` item indices of batch ``step``: k of one identity, then k of the next..."""
        rng = np.random.default_rng([self.seed, step])
        chosen = rng.choice(self.identities, size=self.p, replace=False)
        batch = []
        for identity in chosen:
            items = self.groups[int(identity)]
            if len(items) >= self.k:
                batch.append(rng.choice(items, size=self.k, replace=False))
            else:
                extra = rng.choice(items, size=self.k - len(items), replace=True)
                batch.append(np.concatenate([rng.permutation(items), extra]))
        return np.concatenate(batch)
