"""The eager engine and `train`: one `nn.Module`, a `torch.optim` optimizer, any config.

`train` takes a `TrainConfig`, data already on the device and that device, and returns a
`TrainResult`. It knows nothing of Optuna: a caller that wants to report or prune passes
`on_epoch`, which sees each epoch's record and returns True to stop the run. The epoch loop and
its stopping rules are `control.run`'s, shared with the stacked engine.

The data stays on the device; each epoch draws one `randperm` there and slices batches from it.
The loop never reads a value back to the host inside an epoch; the epoch's losses and metrics are
collected on the device and read once at its end.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hpsearch.config import TrainConfig
from hpsearch.data import Split, Splits
from hpsearch.errors import ConfigError
from hpsearch.training import augment, control
from hpsearch.training.checkpoint import CheckpointError, RunCheckpoint
from hpsearch.training.losses import compute_loss, l1_penalty
from hpsearch.training.models import ACTIVATION_LAYERS, build_model, set_dropout_generator
from hpsearch.training.optim import build_optimizer
from hpsearch.training.results import Evaluation, OnEpoch, TrainResult, evaluations
from hpsearch.training.speed import SpeedOptions


def batch_size_for(config: TrainConfig, n_train: int) -> int:
    if config.batch_mode == "full":
        return n_train
    if config.batch_mode == "sample":
        return 1
    return min(config.batch_size, n_train)


def check_splits(configs: Sequence[TrainConfig], data: Splits) -> None:
    for config in configs:
        augment.check_augment(config, data.input_shape, data.name)
    if data.val is None and any(c.stopping != "fixed" for c in configs):
        stopping = next(c.stopping for c in configs if c.stopping != "fixed")
        raise ConfigError(
            f"stopping={stopping!r} watches the validation split, which a final run "
            "does not have; set stopping='fixed' with the number of epochs to train"
        )


class EagerEngine:
    """One model trained as written, with the optional `SpeedOptions`."""

    def __init__(self, config: TrainConfig, data: Splits, *, device: torch.device,
                 speed: SpeedOptions) -> None:
        self.config, self.data, self.device, self.speed = config, data, device, speed
        self.generators = control.Generators.for_run(config.seed, device)
        self.model = build_model(config, data.input_shape, data.num_classes,
                                 generator=self.generators.init).to(device)
        set_dropout_generator(self.model, self.generators.dropout)
        self.optimizer = build_optimizer(self.model.parameters(), config)
        self.penalised = [p for p in self.model.parameters() if p.dim() > 1]  # L1: weights only
        self.step_model = speed.step_model(self.model, device)

    def train_epoch(self, lrs: Sequence[float]) -> list[float]:
        config, train, device = self.config, self.data.train, self.device
        for group in self.optimizer.param_groups:
            group["lr"] = lrs[0]
        self.model.train()
        n_train = len(train)
        batch = batch_size_for(config, n_train)
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(n_train, device=control.shuffle_device(device),
                               generator=self.generators.order).to(device)
        crops = augment.for_epoch([config], n_train, [self.generators.order], device=device,
                                  stacked=False)
        for start in range(0, n_train, batch):
            idx = order[start : start + batch]
            x = train.x[idx] if crops is None else crops(train.x[idx], start, start + batch)
            with self.speed.autocast(device):
                loss = compute_loss(config.loss, self.step_model(x), train.y[idx])
            if config.l1 > 0:
                loss = loss + config.l1 * l1_penalty(self.penalised)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * idx.numel()
        return [(loss_sum / n_train).item()]  # the epoch's one host sync

    def evaluate(self, split: Split) -> list[Evaluation]:
        return [evaluate(self.model, split, self.config.loss, self.data.num_classes)]

    def snapshot(self, row: int) -> object:
        return copy.deepcopy(self.model.state_dict())

    def finish(self, row: int, best: object | None) -> nn.Module:
        if best is not None:
            self.model.load_state_dict(best)  # type: ignore[arg-type]
        return self.model

    def keep(self, rows: list[int]) -> None:
        raise AssertionError("a single run has no other member to keep")

    def state(self) -> dict[str, Any]:
        g = self.generators
        # On the CPU `dropout` is `init` itself; saved twice, restored twice, the same state.
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generators": {"init": g.init.get_state(), "order": g.order.get_state(),
                               "dropout": g.dropout.get_state()}}

    def restore(self, state: dict[str, Any]) -> None:
        weights, generators = state["model"], state["generators"]
        own = self.model.state_dict()
        if list(weights) != list(own) or any(
                weights[k].shape != v.shape or weights[k].dtype != v.dtype for k, v in own.items()):
            raise CheckpointError("its weights do not fit this model")
        for name in ("init", "order", "dropout"):
            mine = getattr(self.generators, name).get_state()
            if generators[name].shape != mine.shape or generators[name].dtype != mine.dtype:
                raise CheckpointError(f"its {name} generator state does not fit")
        # load_state_dict checks the groups before it changes anything; then nothing can fail.
        self.optimizer.load_state_dict(state["optimizer"])
        self.model.load_state_dict(weights)
        for name in ("init", "order", "dropout"):
            getattr(self.generators, name).set_state(generators[name])


def train(
    config: TrainConfig,
    data: Splits,
    *,
    device: torch.device,
    on_epoch: OnEpoch | None = None,
    evaluate_test: bool = False,
    record_init_stats: bool = False,
    speed: SpeedOptions | None = None,
    checkpoint: RunCheckpoint | None = None,
) -> TrainResult:
    """Train one model as `config` says and return its history and outcome; with `checkpoint`,
    resume from the newest usable saved state and save after every epoch but the last."""
    check_splits([config], data)
    if evaluate_test and data.test is None:
        raise ConfigError("evaluate_test=True needs splits made with final=True")
    started = time.perf_counter()
    engine = EagerEngine(config, data, device=device, speed=speed or SpeedOptions())
    init_stats = init_statistics(engine.model, config, data.train) if record_init_stats else None
    member_epoch = None if on_epoch is None else (lambda _index, record: on_epoch(record))
    result, = control.run(engine, [config], val=data.val, on_epoch=member_epoch, started=started,
                          checkpoint=checkpoint)
    trained = time.perf_counter()
    test = None
    if evaluate_test and result.failure is None:
        assert data.test is not None
        test = evaluate(engine.model, data.test, config.loss, data.num_classes,
                        keep_predictions=True)
    # result.seconds counts the epochs a resumed run did before its checkpoint too.
    return dataclasses.replace(result, test=test, init_stats=init_stats,
                               seconds=result.seconds + time.perf_counter() - trained)


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
    evaluation, = evaluations(loss_sum.unsqueeze(0), pred.unsqueeze(0), split.y, num_classes,
                              keep_predictions=keep_predictions)
    return evaluation


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
