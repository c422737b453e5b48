"""The one trainer every study, `final` and `rerun` use.

It takes a `TrainConfig`, data already on the device and that device, and returns a
`TrainResult`. It knows nothing of Optuna: a caller that wants to report or prune passes
`on_epoch`, which sees each epoch's record and returns True to stop the run.

The data stays on the device; each epoch draws one `randperm` there and slices batches from it.
The loop never reads a value back to the host inside an epoch; the epoch's losses and metrics are
collected on the device and read once at its end.

`SpeedOptions` change how fast a run goes, not what it computes (up to rounding, or bf16's
precision when asked for): they are not part of `TrainConfig`, so they never enter a study's
search space or its stored configs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.config import LOSSES, TrainConfig
from hpsearch.data import Split, Splits
from hpsearch.errors import ConfigError
from hpsearch.training.metrics import confusion_matrix, macro_f1
from hpsearch.training.models import ACTIVATION_LAYERS, build_model, count_parameters
from hpsearch.training.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

# Metric name -> whether larger is better. A study's metric must be one of these.
METRICS: dict[str, bool] = {
    "val_error": False,
    "val_loss": False,
    "val_accuracy": True,
    "val_f1": True,
    "train_loss": False,
}

STOP_REASONS = ("epochs", "early_stopping", "target", "diverged", "stopped")


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    val_error: float | None
    val_f1: float | None
    lr: float
    seconds: float  # wall time since training began

    def metric(self, name: str) -> float:
        value = getattr(self, name)
        if value is None:
            raise ConfigError(f"metric {name!r} needs a validation split, and this run has none")
        return float(value)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Metrics of a model on one split; `predictions` are kept for paired tests between models."""

    loss: float
    accuracy: float
    error: float
    f1: float
    confusion: list[list[int]]
    predictions: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    config: TrainConfig
    history: list[EpochRecord]
    best_epoch: int  # the epoch whose weights the run ends with (0 if none finished)
    stop_reason: str
    failure: str | None  # why the run diverged, else None
    n_params: int
    seconds: float
    test: Evaluation | None = None
    init_stats: dict[str, list[float]] | None = None
    model: nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def final(self) -> EpochRecord:
        """The record of the epoch whose weights were kept."""
        if self.best_epoch == 0:
            raise ConfigError(f"the run stopped before finishing an epoch ({self.failure})")
        return self.history[self.best_epoch - 1]

    def history_dict(self) -> dict[str, list[float | None]]:
        """Per-epoch values by name, the form stored with each trial."""
        fields = [f.name for f in dataclasses.fields(EpochRecord) if f.name != "epoch"]
        return {name: [getattr(r, name) for r in self.history] for name in fields}


OnEpoch = Callable[[EpochRecord], bool | None]


@dataclasses.dataclass(frozen=True)
class SpeedOptions:
    """How to run the training step faster; the default is plain eager float32.

    `compile`: `torch.compile` the model for the training step. On CUDA it uses
    mode="reduce-overhead", which records the compiled step as CUDA graphs, so a step is a few
    graph launches instead of dozens of kernel launches; the first epoch pays the compile time
    (seconds), so it pays back over a study of many trials of one shape, not a single short run.
    `bf16`: bfloat16 autocast for the forward pass and loss (parameters and optimizer stay
    float32); results differ from float32 beyond rounding, so it is off by default.
    """

    compile: bool = False
    bf16: bool = False

    @property
    def precision(self) -> str:
        """The numeric setting a study keeps to one value: "bf16" or "float32"."""
        return "bf16" if self.bf16 else "float32"

    def to_dict(self) -> dict[str, bool]:
        return {"compile": self.compile, "bf16": self.bf16}

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def step_model(self, model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable the training loop runs; evaluation keeps using the eager `model`."""
        if not self.compile:
            return model
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        # dynamic=False: a run sees two batch shapes (full and last), each compiled once.
        return torch.compile(model, mode=mode, dynamic=False)  # type: ignore[return-value]


def compute_loss(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean loss of a batch. MSE compares the softmax output with the one-hot target."""
    assert name in LOSSES
    if name == "cross_entropy":
        return F.cross_entropy(logits, target)
    if name == "nll":
        return F.nll_loss(F.log_softmax(logits, dim=-1), target)
    one_hot = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
    return F.mse_loss(F.softmax(logits, dim=-1), one_hot)


def batch_size_for(config: TrainConfig, n_train: int) -> int:
    if config.batch_mode == "full":
        return n_train
    if config.batch_mode == "sample":
        return 1
    return min(config.batch_size, n_train)


def train(
    config: TrainConfig,
    data: Splits,
    *,
    device: torch.device,
    on_epoch: OnEpoch | None = None,
    evaluate_test: bool = False,
    record_init_stats: bool = False,
    speed: SpeedOptions | None = None,
) -> TrainResult:
    """Train one model as `config` says and return its history and outcome."""
    speed = speed or SpeedOptions()
    if data.val is None and config.stopping != "fixed":
        raise ConfigError(
            f"stopping={config.stopping!r} watches the validation split, which a final run "
            "does not have; set stopping='fixed' with the number of epochs to train"
        )
    if evaluate_test and data.test is None:
        raise ConfigError("evaluate_test=True needs splits made with final=True")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    # Shuffle where the data are; MPS generators are not dependable across torch versions, so
    # Apple GPUs draw the permutation on the CPU and copy it (n int64s per epoch).
    shuffle_device = torch.device("cpu") if device.type == "mps" else device
    generator = torch.Generator(device=shuffle_device)
    generator.manual_seed(config.seed)

    model = build_model(config, data.input_shape, data.num_classes).to(device)
    init_stats = init_statistics(model, config, data.train) if record_init_stats else None
    optimizer = build_optimizer(model.parameters(), config)
    scheduler = build_scheduler(optimizer, config)
    penalised = [p for p in model.parameters() if p.dim() > 1]  # L1 on weights, not biases
    step_model = speed.step_model(model, device)

    n_train = len(data.train)
    batch = batch_size_for(config, n_train)
    history: list[EpochRecord] = []
    best_epoch, best_loss, best_state = 0, math.inf, None
    stop_reason, failure = "epochs", None

    for epoch in range(1, config.epochs + 1):
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(n_train, device=shuffle_device, generator=generator).to(device)
        for start in range(0, n_train, batch):
            idx = order[start : start + batch]
            with speed.autocast(device):
                loss = compute_loss(config.loss, step_model(data.train.x[idx]), data.train.y[idx])
            if config.l1 > 0:
                loss = loss + config.l1 * sum(p.abs().sum() for p in penalised)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * idx.numel()
        if scheduler is not None:
            scheduler.step()

        train_loss = (loss_sum / n_train).item()  # the epoch's one host sync
        if not math.isfinite(train_loss):
            stop_reason = "diverged"
            failure = f"training loss became {train_loss} in epoch {epoch} (lr={config.lr:g})"
            logger.info("run diverged: %s", failure)
            break
        val = evaluate(model, data.val, config.loss, data.num_classes) if data.val else None
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val.loss if val else None,
            val_accuracy=val.accuracy if val else None,
            val_error=val.error if val else None,
            val_f1=val.f1 if val else None,
            lr=lr,
            seconds=time.perf_counter() - started,
        )
        history.append(record)

        if config.stopping == "early":
            assert val is not None
            if val.loss < best_loss:
                best_epoch, best_loss = epoch, val.loss
                best_state = copy.deepcopy(model.state_dict())
            elif epoch - best_epoch >= config.patience:
                stop_reason = "early_stopping"
        else:
            best_epoch = epoch
            if config.stopping == "target" and val is not None and val.error <= config.target_error:
                stop_reason = "target"

        if on_epoch is not None and on_epoch(record):
            stop_reason = "stopped"
        if stop_reason != "epochs":
            break

    if best_state is not None and best_epoch != len(history):
        model.load_state_dict(best_state)
    test = None
    if evaluate_test and failure is None:
        assert data.test is not None
        test = evaluate(model, data.test, config.loss, data.num_classes, keep_predictions=True)
    return TrainResult(
        config=config,
        history=history,
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        failure=failure,
        n_params=count_parameters(model),
        seconds=time.perf_counter() - started,
        test=test,
        init_stats=init_stats,
        model=model,
    )


def _eval_batch_size(model: nn.Module) -> int:
    # Convolutional activations are far larger per example than an MLP's.
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return 1000 if has_conv else 10000


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    loss_name: str,
    num_classes: int,
    *,
    keep_predictions: bool = False,
) -> Evaluation:
    model.eval()
    step = _eval_batch_size(model)
    loss_sum = torch.zeros((), device=split.x.device)
    preds = []
    for start in range(0, len(split), step):
        x, y = split.x[start : start + step], split.y[start : start + step]
        logits = model(x)
        loss_sum += compute_loss(loss_name, logits, y) * y.numel()
        preds.append(logits.argmax(dim=-1))
    pred = torch.cat(preds)
    confusion = confusion_matrix(pred, split.y, num_classes)
    # Correct counts are exact in float32 below 2**24; dividing on the host keeps 1 - accuracy
    # free of float32 rounding.
    loss, correct, f1 = torch.stack(
        [loss_sum / len(split), confusion.trace().float(), macro_f1(confusion)]
    ).tolist()
    return Evaluation(
        loss=loss,
        accuracy=correct / len(split),
        error=1.0 - correct / len(split),
        f1=f1,
        confusion=confusion.tolist(),
        predictions=pred.tolist() if keep_predictions else [],
    )


def init_statistics(model: nn.Module, config: TrainConfig, split: Split) -> dict[str, list[float]]:
    """Per-layer standard deviation of activations and of weight gradients at initialisation.

    One forward and backward pass on up to 256 training examples, the diagnostic behind the
    vanishing-gradient and initialisation exercises (e.g. depth 15, width 128).
    """
    x, y = split.x[:256], split.y[:256]
    activations: list[torch.Tensor] = []
    act_types = tuple(ACTIVATION_LAYERS.values())
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: activations.append(out.detach()))
        for m in model.modules()
        if isinstance(m, act_types)
    ]
    model.train()
    try:
        model.zero_grad(set_to_none=True)
        compute_loss(config.loss, model(x), y).backward()
    finally:
        for hook in hooks:
            hook.remove()
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    stats = torch.stack(
        [a.std() for a in activations] + [m.weight.grad.std() for m in layers]  # type: ignore[union-attr]
    ).tolist()
    model.zero_grad(set_to_none=True)
    return {"activation_std": stats[: len(activations)], "grad_std": stats[len(activations) :]}

