"""The single-trial speed options: they change how fast a run goes, not what it learns."""

from __future__ import annotations

import pytest
import torch

from hpsearch.config import TrainConfig
from hpsearch.data import Splits
from hpsearch.training import SpeedOptions, train

CPU = torch.device("cpu")
IRIS = TrainConfig(dataset="iris", hidden=(32, 16), batch_size=16, lr=1e-2, epochs=30)


def test_bf16_autocast_still_learns(iris_splits: Splits) -> None:
    plain = train(IRIS, iris_splits, device=CPU)
    bf16 = train(IRIS, iris_splits, device=CPU, speed=SpeedOptions(bf16=True))
    assert bf16.final.val_accuracy >= 0.8  # chance is 1/3
    # bfloat16 keeps 8 bits of mantissa: close to float32, but not equal to it.
    assert bf16.history[-1].train_loss == pytest.approx(plain.history[-1].train_loss, rel=0.1)
    assert bf16.history_dict()["train_loss"] != plain.history_dict()["train_loss"]


@pytest.mark.slow  # torch.compile takes ~30 s on two CPU cores
def test_compiled_step_gives_the_eager_history(iris_splits: Splits) -> None:
    config = IRIS.replace(epochs=3)
    eager = train(config, iris_splits, device=CPU)
    compiled = train(config, iris_splits, device=CPU, speed=SpeedOptions(compile=True))
    assert compiled.history_dict()["train_loss"] == pytest.approx(
        eager.history_dict()["train_loss"], rel=1e-5)
