"""Every study module's search space, checked with Optuna's `FixedTrial` (no study, no storage).

Parameter names and ranges are database keys: a stored study resumes, and its trials compare,
only while they stay the same. So each case below pins the exact distributions a `suggest` asks
for, alongside the fixed values and the `TrainConfig` fields they must land in.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, NamedTuple

import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FixedTrial

from hpsearch.config import LR_RANGES, OPTIMIZERS
from hpsearch.search.registry import load_study, study_names


def floats(low: float, high: float, *, log: bool = False) -> FloatDistribution:
    return FloatDistribution(low, high, log=log)


def ints(low: int, high: int, *, step: int = 1) -> IntDistribution:
    return IntDistribution(low, high, step=step)


def choice(*choices: Any) -> CategoricalDistribution:
    return CategoricalDistribution(choices)


class Case(NamedTuple):
    params: dict[str, tuple[Any, BaseDistribution]]  # name: (fixed value, the range it comes from)
    expected: dict[str, Any]  # the TrainConfig fields that differ from the study's BASE
    dataset: str | None = None  # run on this data set instead of BASE's


# Each optimizer's learning-rate range, shared by mnist_mlp and optimizers.
LR = {
    "sgd": floats(1e-3, 0.3, log=True),
    "rmsprop": floats(1e-5, 1e-2, log=True),
    "adam": floats(1e-5, 1e-2, log=True),
    "adamw": floats(1e-5, 1e-2, log=True),
    "adagrad": floats(1e-3, 0.3, log=True),
    "adadelta": floats(0.05, 3.0, log=True),
}
OPTIMIZER = choice("sgd", "rmsprop", "adam", "adamw", "adagrad", "adadelta")
ACTIVATION = choice("relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid")
MOMENTUM = floats(0.0, 0.99)
CNN = {"lr": (0.01, floats(1e-3, 1e-1, log=True)), "weight_decay": (1e-4, floats(1e-6, 1e-2, log=True)),
       "momentum": (0.8, floats(0.5, 0.99)), "step_size": (5, ints(2, 10)), "gamma": (0.5, floats(0.1, 0.9))}
CNN_FIELDS = {"lr": 0.01, "weight_decay": 1e-4, "momentum": 0.8, "step_size": 5, "gamma": 0.5}


def mnist_mlp(optimizer: str, lr: float, *, stopping: str, momentum: float | None) -> Case:
    params = {
        "optimizer": (optimizer, OPTIMIZER), "n_layers": (2, ints(1, 4)),
        "units": (300, ints(100, 800, step=100)), "stopping": (stopping, choice("fixed", "early")),
        "lr": (lr, LR[optimizer]), "activation": ("gelu", ACTIVATION),
        "batch_size": (64, choice(32, 64, 100, 128, 256)), "dropout": (0.1, floats(0.0, 0.5)),
        "weight_decay": (1e-5, floats(1e-7, 1e-3, log=True)),
    }
    expected = {"optimizer": optimizer, "lr": lr, "hidden": (300, 300), "activation": "gelu",
                "batch_size": 64, "dropout": 0.1, "weight_decay": 1e-5, "stopping": stopping}
    if momentum is not None:
        params["momentum"] = (momentum, MOMENTUM)
        expected["momentum"] = momentum
    if stopping == "early":
        params["patience"] = (3, ints(2, 5))
        expected["patience"] = 3
    return Case(params, expected)


def tuned(optimizer: str, lr: float, **params: tuple[Any, BaseDistribution]) -> Case:
    """An `optimizers` case: the optimizer, its lr and its own parameters, set as named."""
    return Case({"optimizer": (optimizer, OPTIMIZER), "lr": (lr, LR[optimizer]), **params},
                {"optimizer": optimizer, "lr": lr, **{name: value for name, (value, _) in params.items()}})


SPACES: dict[str, list[Case]] = {
    "activations": [Case(
        {"depth": (4, choice(1, 2, 4, 8, 15)), "activation": ("tanh", ACTIVATION)},
        {"hidden": (128,) * 4, "activation": "tanh"},
    )],
    "cnn_lr_wd": [
        Case(CNN, {"model": "lenet5", "dropout": 0.0, **CNN_FIELDS}),
        Case(CNN, {"model": "alexnet_cifar", "dropout": 0.5, "augment": "crop_flip", **CNN_FIELDS},
             "cifar10"),
    ],
    "depth_width": [Case(
        {"depth": (2, choice(1, 2, 4)), "width": (64, choice(32, 64, 128))}, {"hidden": (64, 64)}
    )],
    "hinton_mlp": [Case(
        {"lr": (3e-3, floats(1e-4, 1e-2, log=True)), "weight_decay": (1e-5, floats(1e-7, 1e-3, log=True)),
         "beta1": (0.85, floats(0.8, 0.95)), "beta2": (0.995, floats(0.99, 0.9999)),
         "dropout": (0.2, floats(0.0, 0.5))},
        {"lr": 3e-3, "weight_decay": 1e-5, "beta1": 0.85, "beta2": 0.995, "dropout": 0.2},
    )],
    "init": [Case(
        {"init": ("orthogonal", choice("default", "xavier_uniform", "xavier_normal", "he_uniform", "he_normal",
                                       "lecun_uniform", "lecun_normal", "orthogonal", "normal")),
         "activation": ("tanh", choice("relu", "tanh"))},
        {"init": "orthogonal", "activation": "tanh"},
    )],
    "iris_mlp": [Case(
        {"loss": ("nll", choice("cross_entropy", "nll", "mse")), "l1": (1e-4, choice(0.0, 1e-4, 1e-3)),
         "weight_decay": (1e-3, choice(0.0, 1e-4, 1e-3)), "dropout": (0.2, choice(0.0, 0.2, 0.5)),
         "batch_mode": ("sample", choice("full", "mini", "sample"))},
        {"loss": "nll", "l1": 1e-4, "weight_decay": 1e-3, "dropout": 0.2, "batch_mode": "sample"},
    )],
    "losses": [Case(
        {"loss": ("mse", choice("mse", "cross_entropy", "nll")), "lr": (0.1, floats(1e-4, 1.0, log=True))},
        {"loss": "mse", "lr": 0.1},
    )],
    "mnist_mlp": [
        mnist_mlp("sgd", 0.05, stopping="early", momentum=0.9),
        mnist_mlp("rmsprop", 1e-3, stopping="fixed", momentum=0.5),
        mnist_mlp("adam", 1e-4, stopping="fixed", momentum=None),
        mnist_mlp("adadelta", 1.0, stopping="early", momentum=None),
    ],
    "optimizers": [
        tuned("sgd", 0.05, momentum=(0.9, MOMENTUM), nesterov=(True, choice(False, True))),
        tuned("sgd", 0.05, momentum=(0.0, MOMENTUM)),  # no momentum: nesterov is not asked
        tuned("rmsprop", 1e-3, alpha=(0.9, floats(0.8, 0.999)), momentum=(0.5, MOMENTUM),
              centered=(True, choice(False, True))),
        tuned("adam", 1e-4, beta1=(0.85, floats(0.8, 0.99)), beta2=(0.99, floats(0.9, 0.9999))),
        tuned("adamw", 1e-4, beta1=(0.85, floats(0.8, 0.99)), beta2=(0.99, floats(0.9, 0.9999)),
              weight_decay=(1e-2, floats(1e-5, 1e-1, log=True))),
        tuned("adagrad", 0.01),
        tuned("adadelta", 1.0, rho=(0.95, floats(0.8, 0.99))),
    ],
    "quickstart": [Case({"lr": (5e-3, floats(1e-3, 1e-2, log=True))}, {"lr": 5e-3})],
    "mlp_size": [Case(
        {"depth": (3, ints(1, 3)), "width": (20, IntDistribution(2, 256, log=True))}, {"hidden": (20, 20, 20)}
    )],
}


@pytest.mark.parametrize("name", study_names())
def test_suggest_maps_fixed_params_onto_the_config(name: str) -> None:
    if name not in SPACES:
        pytest.fail(f"studies/{name}.py has no entry in SPACES in {__file__}: add its parameters, "
                    "their distributions and the TrainConfig fields they set")
    spec = load_study(name)
    for case in SPACES[name]:
        base = spec.base.replace(dataset=case.dataset) if case.dataset else spec.base
        trial = FixedTrial({param: value for param, (value, _) in case.params.items()})
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # FixedTrial only warns about a value out of range
            config = spec.suggest(trial, base)
        assert trial.distributions == {param: dist for param, (_, dist) in case.params.items()}
        assert config == base.replace(**case.expected)


def test_studies_share_one_learning_rate_table() -> None:
    """mnist_mlp and optimizers search the same lr range per optimizer, from one table."""
    for name in ("mnist_mlp", "optimizers"):
        assert importlib.import_module(f"studies.{name}").LR_RANGES is LR_RANGES
    assert tuple(LR_RANGES) == OPTIMIZERS
    assert {name: floats(*bounds, log=True) for name, bounds in LR_RANGES.items()} == LR
