"""Training-time changes of the crops, so that the network does not learn them by heart:
a horizontal flip (half the crops), a small shift of the crop (up to ``jitter`` pixels each
way, the uncovered border repeating the edge pixels), and brightness and contrast
(``pixel * contrast + brightness`` around the crop's mean). Nothing of this runs at
evaluation or when serving.

The crops are float pixels 0..255, N x rows x columns x channels (the served model's layout);
the draws come from the ``torch.Generator`` given, so a run is reproducible."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    flip: bool = True
    jitter: int = 8  # pixels
    brightness: float = 20.0  # largest shift, in pixel levels
    contrast: float = 0.2  # largest relative change

    def __call__(self, crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, rows, columns, _ = crops.shape
        out = crops.float()
        if self.flip:
            flip = torch.rand(n, generator=generator) < 0.5
            out = torch.where(flip.view(-1, 1, 1, 1), out.flip(2), out)
        if self.jitter > 0:
            j = self.jitter
            padded = F.pad(out.permute(0, 3, 1, 2), (j, j, j, j), mode="replicate").permute(0, 2, 3, 1)
            shifts = torch.randint(0, 2 * j + 1, (n, 2), generator=generator)
            out = torch.stack(
                [padded[i, dy : dy + rows, dx : dx + columns] for i, (dy, dx) in enumerate(shifts.tolist())]
            )
        if self.contrast > 0 or self.brightness > 0:
            contrast = 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * self.contrast
            brightness = (torch.rand(n, generator=generator) * 2 - 1) * self.brightness
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * contrast.view(-1, 1, 1, 1) + mean + brightness.view(-1, 1, 1, 1)
        return out.clamp(0.0, 255.0)


NONE = Augmentation(flip=False, jitter=0, brightness=0.0, contrast=0.0)
