from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpsearch.config import INITS, TrainConfig
from hpsearch.errors import ConfigError
from hpsearch.training import ACTIVATION_LAYERS, build_model, count_parameters
from hpsearch.training.models import Dropout


def test_mlp_has_the_layers_the_config_asks_for() -> None:
    config = TrainConfig(hidden=(500, 300), activation="tanh", dropout=0.2, batch_norm=True)
    model = build_model(config, (1, 28, 28), 10)
    kinds = [type(m) for m in model.net]
    # hpsearch's Dropout is nn.Dropout drawing from the run's generator.
    assert kinds == [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.Tanh, Dropout,
                     nn.Linear, nn.BatchNorm1d, nn.Tanh, Dropout, nn.Linear]
    assert issubclass(Dropout, nn.Dropout)
    plain = build_model(TrainConfig(hidden=(500, 300)), (1, 28, 28), 10)
    assert count_parameters(plain) == 784 * 500 + 500 + 500 * 300 + 300 + 300 * 10 + 10


@pytest.mark.parametrize("activation", sorted(ACTIVATION_LAYERS))
def test_every_activation_builds(activation: str) -> None:
    model = build_model(TrainConfig(hidden=(8,), activation=activation), (4,), 3)
    assert isinstance(model.net[2], ACTIVATION_LAYERS[activation])


@pytest.mark.parametrize("model_name, shape, channels", [("lenet5", (1, 28, 28), 1), ("lenet5", (3, 32, 32), 3), ("alexnet_cifar", (3, 32, 32), 3)])
def test_cnns_map_images_to_class_scores(model_name: str, shape: tuple, channels: int) -> None:
    model = build_model(TrainConfig(model=model_name, dropout=0.5), shape, 10)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_lenet_refuses_inputs_it_cannot_read() -> None:
    with pytest.raises(ConfigError, match="28x28 or 32x32.*mlp"):
        build_model(TrainConfig(model="lenet5", dataset="digits"), (1, 8, 8), 10)


def _first_weight(init: str, std: float = 1.0) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(TrainConfig(hidden=(1000,), init=init, init_std=std), (400,), 10)
    return model.net[1].weight.detach()


@pytest.mark.parametrize(
    ("init", "expected_std"),
    [
        ("xavier_uniform", math.sqrt(2 / 1400)),
        ("xavier_normal", math.sqrt(2 / 1400)),
        ("he_uniform", math.sqrt(2 / 400)),
        ("he_normal", math.sqrt(2 / 400)),
        ("lecun_uniform", math.sqrt(1 / 400)),
        ("lecun_normal", math.sqrt(1 / 400)),
        ("orthogonal", math.sqrt(1 / 1000)),  # rows of a 1000x400 matrix with orthonormal columns
        ("normal", 1.0),
    ],
)
def test_each_init_gives_its_textbook_spread(init: str, expected_std: float) -> None:
    assert _first_weight(init).std().item() == pytest.approx(expected_std, rel=0.05)


def test_inits_cover_the_vocabulary_and_zero_the_biases() -> None:
    for init in INITS:
        model = build_model(TrainConfig(hidden=(16,), init=init), (4,), 3)
        if init != "default":
            assert torch.count_nonzero(model.net[1].bias) == 0
