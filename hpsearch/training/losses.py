"""The training objective of one member: its loss on a batch, plus L1 on its weights.

Written for one model's batch; the stacked engine maps the same functions over its members with
`torch.vmap`, so both engines compute one definition of the loss.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from hpsearch.config import LOSSES


def compute_loss(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean loss of a batch. MSE compares the softmax output with the one-hot target."""
    assert name in LOSSES
    if name == "cross_entropy":
        return F.cross_entropy(logits, target)
    if name == "nll":
        return F.nll_loss(F.log_softmax(logits, dim=-1), target)
    one_hot = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
    return F.mse_loss(F.softmax(logits, dim=-1), one_hot)


def l1_penalty(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of absolute weights; callers pass weights only (dim > 1), not biases."""
    total = torch.zeros(())
    for i, w in enumerate(weights):
        # Added one by one, in layer order: the sum the trainer has always computed.
        total = w.abs().sum() if i == 0 else total + w.abs().sum()
    return total
