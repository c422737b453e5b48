"""Classification metrics computed on the device, so an epoch ends with one host sync.

scikit-learn's `f1_score` and `confusion_matrix` give the same numbers (a test checks that), but
would need the predictions copied to the host every epoch; these work on tensors in place and on
a leading population dimension for stacked training.
"""

from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts with true classes in rows and predicted classes in columns.

    `pred` may carry leading dimensions (one per stacked model): (..., N) -> (..., C, C).
    """
    lead = pred.shape[:-1]
    flat = (target * num_classes + pred).reshape(-1, pred.shape[-1])
    offsets = torch.arange(flat.shape[0], device=pred.device).unsqueeze(1) * num_classes**2
    counts = torch.bincount((flat + offsets).reshape(-1), minlength=flat.shape[0] * num_classes**2)
    return counts.reshape(*lead, num_classes, num_classes)


def macro_f1(confusion: torch.Tensor) -> torch.Tensor:
    """Unweighted mean F1 over the classes that occur in the labels or the predictions.

    Matches `sklearn.metrics.f1_score(average="macro")`: a class never seen nor predicted is
    left out, and a class with no true positives scores 0.
    """
    confusion = confusion.float()
    tp = confusion.diagonal(dim1=-2, dim2=-1)
    actual = confusion.sum(dim=-1)
    predicted = confusion.sum(dim=-2)
    f1 = torch.where(actual + predicted > 0, 2 * tp / (actual + predicted).clamp(min=1), 0.0)
    present = (actual + predicted > 0).float()
    return (f1 * present).sum(dim=-1) / present.sum(dim=-1).clamp(min=1)


def accuracy(confusion: torch.Tensor) -> torch.Tensor:
    confusion = confusion.float()
    return confusion.diagonal(dim1=-2, dim2=-1).sum(dim=-1) / confusion.sum(dim=(-2, -1))
