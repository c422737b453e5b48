"""On a CUDA machine (`pytest -m gpu`, also run by `make gpu-check`): the fast paths on the GPU.

Each test promises only what holds on CUDA. A member without dropout computes what its single
run computes (the same init, data order and update), so its losses agree up to rounding: CUDA's
batched and single matrix products round differently. A member with dropout does not: on CUDA
the stack draws every member's masks from one stream in one kernel (`StackedEngine._masks`),
so its masks differ from its single run's, the same in distribution; there the promise is a
close validation accuracy (on the CPU, six dropout streams of one config spread its accuracy
over 0.028, 4 of the 144 validation images).
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

BASE = TrainConfig(dataset="digits", hidden=(64, 32), batch_size=64, epochs=6)


@pytest.fixture(scope="module")
def digits_on_gpu() -> Splits:
    splits = make_splits(load_raw("digits"), name="digits", val_fraction=0.1, split_seed=0)
    return splits.to(torch.device("cuda"))


@pytest.mark.parametrize("fused", [False, True], ids=["eager-update", "fused-update"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_stacked_members_without_dropout_match_their_single_runs(
    optimizer: str, fused: bool, digits_on_gpu: Splits
) -> None:
    cuda, sgd = torch.device("cuda"), optimizer == "sgd"
    configs = [BASE.replace(optimizer=optimizer, seed=s, lr=lr * (30 if sgd else 1), weight_decay=wd,
                            momentum=0.9 if sgd else 0.0)
               for s, (lr, wd) in enumerate([(1e-3, 0.0), (3e-3, 1e-4), (2e-3, 1e-3)])]
    # compile=True is what `--compile` gives a stack: the fused optimizer update.
    stacked = train_population(configs, digits_on_gpu, device=cuda, compile=fused)
    one_image = 1 / len(digits_on_gpu.val or [])
    for config, member in zip(configs, stacked):
        alone = train(config, digits_on_gpu, device=cuda)
        assert member.history_dict()["train_loss"] == pytest.approx(
            alone.history_dict()["train_loss"], rel=1e-3)
        assert abs(member.final.val_accuracy - alone.final.val_accuracy) <= one_image + 1e-9
        assert member.final.val_accuracy > 0.85


def test_stacked_members_with_dropout_keep_their_single_runs_accuracy(digits_on_gpu: Splits) -> None:
    cuda = torch.device("cuda")
    configs = [BASE.replace(seed=s, lr=3e-3, dropout=d) for s, d in enumerate([0.1, 0.2, 0.3])]
    for config, member in zip(configs, train_population(configs, digits_on_gpu, device=cuda)):
        alone = train(config, digits_on_gpu, device=cuda)
        assert member.final.val_accuracy > 0.9 and alone.final.val_accuracy > 0.9
        assert abs(member.final.val_accuracy - alone.final.val_accuracy) <= 0.05


@pytest.mark.parametrize("speed", [SpeedOptions(compile=True), SpeedOptions(bf16=True)],
                         ids=["compile", "bf16"])
def test_speed_options_on_cuda_keep_the_accuracy(speed: SpeedOptions, digits_on_gpu: Splits) -> None:
    cuda = torch.device("cuda")
    plain = train(BASE, digits_on_gpu, device=cuda)
    fast = train(BASE, digits_on_gpu, device=cuda, speed=speed)
    assert fast.final.val_accuracy > 0.85
    assert abs(fast.final.val_accuracy - plain.final.val_accuracy) <= 0.03
