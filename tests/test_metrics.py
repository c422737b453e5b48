from __future__ import annotations

import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score

from hpsearch.training import accuracy, confusion_matrix, macro_f1


def test_matches_scikit_learn_including_missing_classes() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (300,), generator=gen)
    pred = torch.where(torch.rand(300, generator=gen) < 0.6, target, torch.randint(0, 4, (300,), generator=gen))
    cm = confusion_matrix(pred, target, 6)  # class 5 never occurs: left out of the macro mean
    assert cm.tolist() == sk_confusion(target, pred, labels=range(6)).tolist()
    assert macro_f1(cm).item() == pytest.approx(f1_score(target, pred, average="macro"), abs=1e-6)
    assert accuracy(cm).item() == pytest.approx((pred == target).float().mean().item(), abs=1e-6)


def test_works_on_a_stack_of_models() -> None:
    target = torch.tensor([0, 1, 2, 2])
    preds = torch.tensor([[0, 1, 2, 2], [2, 2, 2, 2]])
    cm = confusion_matrix(preds, target, 3)
    assert cm.shape == (2, 3, 3)
    assert accuracy(cm).tolist() == [1.0, 0.5]
    assert macro_f1(cm)[1].item() == pytest.approx(f1_score(target, preds[1], average="macro"), abs=1e-6)

