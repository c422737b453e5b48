"""On a CUDA machine (`pytest -m gpu`): the fast paths give the plain path's results on the GPU.

Not run on the development machines, which have no GPU; written so that a user with one can
check the CUDA-only code (compiled step with CUDA graphs, stacked dropout on the device).
"""

from __future__ import annotations

import pytest
import torch

from hpsearch.config import TrainConfig
from hpsearch.data import Splits, load_raw, make_splits
from hpsearch.training import SpeedOptions, train, train_population

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BASE = TrainConfig(dataset="digits", hidden=(64, 32), batch_size=64, epochs=4)


@pytest.fixture(scope="module")
def digits_on_gpu() -> Splits:
    splits = make_splits(load_raw("digits"), name="digits", val_fraction=0.1, split_seed=0)
    return splits.to(torch.device("cuda"))


def test_population_on_cuda_matches_single_trials(digits_on_gpu: Splits) -> None:
    cuda = torch.device("cuda")
    configs = [BASE.replace(seed=s, lr=lr, dropout=d)
               for s, (lr, d) in enumerate([(1e-3, 0.0), (3e-3, 0.2), (1e-2, 0.1)])]
    for config, stacked in zip(configs, train_population(configs, digits_on_gpu, device=cuda)):
        alone = train(config, digits_on_gpu, device=cuda)
        assert stacked.history_dict()["train_loss"] == pytest.approx(
            alone.history_dict()["train_loss"], rel=1e-3)
        assert abs(stacked.final.val_accuracy - alone.final.val_accuracy) <= 0.02


@pytest.mark.parametrize("speed", [SpeedOptions(compile=True), SpeedOptions(bf16=True)],
                         ids=["compile", "bf16"])
def test_speed_options_on_cuda_keep_the_accuracy(speed: SpeedOptions, digits_on_gpu: Splits) -> None:
    cuda = torch.device("cuda")
    plain = train(BASE, digits_on_gpu, device=cuda)
    fast = train(BASE, digits_on_gpu, device=cuda, speed=speed)
    assert fast.final.val_accuracy > 0.8
    assert abs(fast.final.val_accuracy - plain.final.val_accuracy) <= 0.03
