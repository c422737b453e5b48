from __future__ import annotations

import pytest

from hpsearch.config import ACTIVATIONS, OPTIMIZERS, TrainConfig
from hpsearch.errors import ConfigError


def test_round_trip_through_dict_keeps_every_field() -> None:
    config = TrainConfig(hidden=(64, 32), optimizer="sgd", momentum=0.9, nesterov=True, l1=1e-4)
    data = config.to_dict()
    assert data["hidden"] == [64, 32]
    assert TrainConfig.from_dict(data) == config


@pytest.mark.parametrize(
    ("field", "value", "names"),
    [("optimizer", "adamax", OPTIMIZERS), ("activation", "swish", ACTIVATIONS)],
)
def test_unknown_name_lists_the_valid_ones(field: str, value: str, names: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    message = str(info.value)
    assert repr(value) in message
    assert all(name in message for name in names)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"hidden": ()}, "hidden=()"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"epochs": 0}, "epochs=0"),
        ({"nesterov": True, "optimizer": "adam"}, "nesterov=True"),
        ({"beta2": 1.0}, "beta2=1.0"),
    ],
)
def test_bad_values_name_the_field_and_value(changes: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**changes)


def test_from_dict_rejects_unknown_keys_instead_of_dropping_them() -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_replace_validates_again() -> None:
    with pytest.raises(ConfigError, match="lr=-1"):
        TrainConfig().replace(lr=-1)
    with pytest.raises(ConfigError, match="unknown training config field"):
        TrainConfig().replace(hiden=(3,))
