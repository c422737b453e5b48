"""Augmentation of training batches on the device: random crops within a padding, and flips.

`crop_flip` is torchvision's `RandomCrop(size, padding=pad)` then `RandomHorizontalFlip()`
(p=0.5), as the AlexNet CIFAR-10 notebook trains, done on a whole batch where the data already
are: one zero-pad and one gather per batch, no per-example Python loop, no PIL, no DataLoader.
The padding is zero in the standardised tensor the model sees, i.e. the channel's mean; the
notebook pads raw pixels with black. The border differs in colour, not in size.

Each epoch draws every training position's shift and flip at once, from the run's `order`
stream right after its permutation, so a run's draws depend on its seed only; a config with
augment="none" draws nothing and trains exactly as before the option existed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hpsearch.config import TrainConfig
from hpsearch.errors import ConfigError


def check_augment(config: TrainConfig, input_shape: tuple[int, ...], dataset: str) -> None:
    """Refuse an augmentation the data cannot take, before any training starts."""
    if config.augment == "none":
        return
    if len(input_shape) != 3:
        raise ConfigError(
            f"augment={config.augment!r} crops and flips images, but {dataset!r} has examples of "
            f"shape {tuple(input_shape)}, not (channels, height, width); set augment='none'"
        )
    side = min(input_shape[1:])
    if config.augment_pad >= side:
        raise ConfigError(
            f"augment_pad={config.augment_pad} shifts a crop by at least the side of the "
            f"{input_shape[1]}x{input_shape[2]} images of {dataset!r}; choose a padding under {side}"
        )


@dataclasses.dataclass(frozen=True)
class EpochAugment:
    """One epoch's draws, by position in the epoch's order: `[..., n, 2]` shifts, `[..., n]` flips.

    The leading dimensions are the stack's members (none for a single run); `shifts` hold the
    row and column shift of each crop, in [-pad, pad] of the member's own padding.
    """

    shifts: torch.Tensor
    flips: torch.Tensor
    pad: int  # the largest padding any member uses

    def __call__(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The batch `x` (`[..., B, C, H, W]`) of positions start:stop, cropped and flipped."""
        return crop_flip(x, self.shifts[..., start:stop, :], self.flips[..., start:stop],
                         pad=self.pad)


def draw(config: TrainConfig, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` shifts (`[n, 2]`, each in [-pad, pad]) and flips (`[n]`), uniform as torchvision's."""
    pad, device = config.augment_pad, generator.device
    if config.augment == "none":
        return (torch.zeros((n, 2), dtype=torch.long, device=device),
                torch.zeros(n, dtype=torch.bool, device=device))
    shifts = torch.randint(-pad, pad + 1, (n, 2), generator=generator, device=device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return shifts, flips


def for_epoch(configs: Sequence[TrainConfig], n: int, generators: Sequence[torch.Generator], *,
              device: torch.device, stacked: bool) -> EpochAugment | None:
    """The epoch's draws for each member from its own stream; None when no member augments.

    Call it right after the members' permutations: a stacked member must draw what its single
    run draws, in the same place of its stream.
    """
    if all(c.augment == "none" for c in configs):
        return None
    drawn = [draw(c, n, g) for c, g in zip(configs, generators)]
    shifts, flips = (torch.stack(parts) if stacked else parts[0] for parts in zip(*drawn))
    return EpochAugment(shifts=shifts.to(device), flips=flips.to(device),
                        pad=max(c.augment_pad for c in configs))


def crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, *, pad: int) -> torch.Tensor:
    """Each image shifted by its `(row, column)` within `pad` zero pixels, then mirrored if flipped.

    `x` is `[..., B, C, H, W]`, `shifts` `[..., B, 2]` with values in [-pad, pad], `flips`
    `[..., B]`. Output pixel (i, j) of an image is padded pixel (pad + dy + i, pad + dx + j), or
    column pad + dx + W-1-j when flipped: one gather does both, and a shift of 0 without a flip
    gives the image back exactly.
    """
    *lead, c, h, w = x.shape
    images = F.pad(x.reshape(-1, c, h, w), (pad, pad, pad, pad))
    dy, dx = (shifts.reshape(-1, 2) + pad).unbind(dim=1)
    cols = torch.arange(w, device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # [N, H]
    cols = dx[:, None] + torch.where(flips.reshape(-1, 1), w - 1 - cols, cols)  # [N, W]
    index = torch.arange(images.shape[0], device=x.device)
    channel = torch.arange(c, device=x.device)
    out = images[index[:, None, None, None], channel[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]  # [N, C, H, W], contiguous
    return out.reshape(*lead, c, h, w)
