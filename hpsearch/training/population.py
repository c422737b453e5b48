"""Population training: K same-shape MLP trials trained together as one stacked computation.

Member k's parameters are row k of one `[K, P]` tensor; each layer is a view of it, and the
forward pass is one `torch.baddbmm` per layer over inputs `[K, B, features]`. Every member keeps
what makes it its own trial: its config's hyperparameters (learning rate, weight decay, betas,
momentum, dropout, L1, schedule, stopping rule), its initialisation (the single-path model built
with its seed, copied into the stack), its data order (its own generator, seeded and drawn as
`trainer.train` draws it) and its dropout masks. On the CPU the masks come from each member's
own generator in the single path's order, so a member's history equals `train`'s up to
floating-point rounding; on CUDA one mask is drawn for the whole stack (one kernel instead of K;
the single path's fused CUDA dropout draws differently anyway), the same in distribution.

A member that diverges, is pruned by its `on_epoch`, or meets its stopping rule leaves the
stack (the tensors shrink) and the others go on. The result per member is the `TrainResult`
that `trainer.train` returns.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.config import TrainConfig
from hpsearch.data import Split, Splits
from hpsearch.errors import ConfigError
from hpsearch.training.metrics import confusion_matrix, macro_f1
from hpsearch.training.models import build_model, count_parameters
from hpsearch.training.optim import build_scheduler
from hpsearch.training.stacked_optim import STACKED_OPTIMIZERS, StackedOptimizer
from hpsearch.training.trainer import EpochRecord, TrainResult, batch_size_for

logger = logging.getLogger(__name__)

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}

# Member index, its epoch record -> True to stop that member (pruning).
OnMemberEpoch = Callable[[int, EpochRecord], bool | None]


def stackable_key(config: TrainConfig) -> tuple[object, ...] | None:
    """Configs with equal keys can train in one stack; None for a config that must train alone.

    The key holds what fixes the shapes and the step sequence: data and split, layer widths,
    activation, loss, optimizer kind, batch size and epochs. Learning rate, weight decay,
    momentum, betas, eps, dropout, L1, init, seed, schedule and stopping rule may differ.
    Convolutional models and batch norm train alone, and so does per-sample SGD, whose
    thousands of one-example steps per epoch are what stacking cannot make cheap.
    """
    if config.model != "mlp" or config.batch_norm or config.batch_mode == "sample":
        return None
    if config.optimizer not in STACKED_OPTIMIZERS:
        return None
    return (
        config.dataset, config.val_fraction, config.split_seed, config.hidden, config.activation,
        config.loss, config.optimizer, config.nesterov, config.batch_mode, config.batch_size,
        config.epochs,
    )


@dataclasses.dataclass
class _Member:
    index: int  # position in the caller's list of configs
    config: TrainConfig
    model: nn.Module  # the single-path model; receives the member's final weights
    order_gen: torch.Generator  # data order, as trainer.train draws it
    dropout_gen: torch.Generator  # dropout masks, continuing the global RNG after init (CPU)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    lr_holder: torch.optim.Optimizer  # carries the member's scheduled learning rate
    history: list[EpochRecord] = dataclasses.field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    best_row: torch.Tensor | None = None
    stop_reason: str = "epochs"
    failure: str | None = None
    seconds: float = 0.0


def train_population(
    configs: Sequence[TrainConfig],
    data: Splits,
    *,
    device: torch.device,
    on_epoch: OnMemberEpoch | None = None,
    compile: bool = False,
) -> list[TrainResult]:
    """Train every config as `trainer.train` would, all at once; results in the configs' order."""
    if not configs:
        return []
    keys = {stackable_key(c) for c in configs}
    if None in keys or len(keys) != 1:
        raise ConfigError(
            f"these configs cannot train as one stack (keys {sorted(map(str, keys))}); group them "
            "with population.stackable_key and train the rest with trainer.train"
        )
    if data.val is None and any(c.stopping != "fixed" for c in configs):
        raise ConfigError("early or target stopping watches the validation split; set stopping='fixed'")
    started = time.perf_counter()
    shuffle_device = torch.device("cpu") if device.type == "mps" else device
    members: list[_Member] = []
    rows: list[torch.Tensor] = []
    for index, config in enumerate(configs):
        # The same seeding, in the same order, as trainer.train: init comes from the global RNG
        # seeded with the member's seed, and dropout continues that RNG stream.
        torch.manual_seed(config.seed)
        order_gen = torch.Generator(device=shuffle_device)
        order_gen.manual_seed(config.seed)
        model = build_model(config, data.input_shape, data.num_classes).to(device)
        dropout_gen = torch.Generator()
        dropout_gen.set_state(torch.get_rng_state())
        holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
        members.append(_Member(index, config, model, order_gen, dropout_gen,
                               build_scheduler(holder, config), holder))
        rows.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    shapes = [tuple(p.shape) for p in members[0].model.parameters()]
    flat = torch.stack(rows).requires_grad_(True)
    optimizer = StackedOptimizer(flat.detach(), configs, compile=compile)
    first = configs[0]
    activation = ACTIVATIONS[first.activation]
    n_train = len(data.train)
    batch = batch_size_for(first, n_train)
    x_train = data.train.x.reshape(n_train, -1)
    live = list(members)

    for epoch in range(1, first.epochs + 1):
        lrs = [m.lr_holder.param_groups[0]["lr"] for m in live]
        optimizer.set_lr(lrs)
        l1, keep_prob = _member_columns(live, flat)
        order = torch.stack([
            torch.randperm(n_train, device=shuffle_device, generator=m.order_gen) for m in live
        ]).to(device)
        loss_sum = torch.zeros(len(live), device=device)
        for start in range(0, n_train, batch):
            idx = order[:, start : start + batch]
            logits = _forward(flat, shapes, x_train[idx], activation, keep_prob, live,
                              training=True)
            total = _member_losses(first.loss, logits, data.train.y[idx])
            if l1 is not None:
                total = total + l1 * _l1(flat, shapes)
            grad, = torch.autograd.grad(total.sum(), flat)
            optimizer.step(flat.detach(), grad)
            loss_sum += total.detach() * idx.shape[1]
        for m in live:
            if m.scheduler is not None:
                m.lr_holder.step()  # no gradients: only keeps the scheduler's order check quiet
                m.scheduler.step()
        train_losses = (loss_sum / n_train).tolist()  # the epoch's one host sync for training
        evals = _evaluate(flat, shapes, data.val, activation, first.loss, data.num_classes, live) \
            if data.val is not None else [None] * len(live)
        elapsed = time.perf_counter() - started
        keep: list[int] = []
        for row, (m, train_loss, val, lr) in enumerate(zip(live, train_losses, evals, lrs)):
            if _end_epoch(m, row, epoch, train_loss, val, lr, elapsed, flat, on_epoch):
                keep.append(row)
            else:
                m.seconds = elapsed
                if m.best_row is None and m.failure is None:
                    m.best_row = flat[row].detach().clone()
        if len(keep) < len(live):
            kept = torch.tensor(keep, device=device, dtype=torch.long)
            flat = flat.detach()[kept].requires_grad_(True)
            optimizer.keep(kept)
            live = [live[r] for r in keep]
        if not live:
            break
    for row, m in enumerate(live):
        m.seconds = time.perf_counter() - started
        if m.best_row is None:
            m.best_row = flat[row].detach().clone()
    return [_result(m, shapes) for m in members]


def _member_columns(live: list[_Member], flat: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Per-member L1 strength `[K]` (None when no member has L1) and keep probability `[K, 1, 1]`."""
    l1 = [m.config.l1 for m in live]
    keep = [1 - m.config.dropout for m in live]
    l1_column = torch.tensor(l1, dtype=flat.dtype, device=flat.device) if any(l1) else None
    return l1_column, torch.tensor(keep, dtype=flat.dtype, device=flat.device).view(-1, 1, 1)


def _layers(flat: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Views of the flat stack shaped as each member's parameters: `[K, *shape]`."""
    # One split, not a slice per layer: its backward writes the whole [K, P] gradient in one
    # concatenation instead of a zero-filled full-size tensor per layer.
    chunks = flat.split([math.prod(shape) for shape in shapes], dim=1)
    return [chunk.view(flat.shape[0], *shape) for chunk, shape in zip(chunks, shapes)]


def _l1(flat: torch.Tensor, shapes: list[tuple[int, ...]]) -> torch.Tensor:
    # Weights only, not biases, as trainer.train penalises them.
    weights = [w for w in _layers(flat, shapes) if w.dim() > 2]
    return torch.stack([w.abs().sum(dim=(1, 2)) for w in weights]).sum(dim=0)


def _forward(
    flat: torch.Tensor, shapes: list[tuple[int, ...]], x: torch.Tensor,
    activation: Callable[[torch.Tensor], torch.Tensor], keep_prob: torch.Tensor,
    live: list[_Member], *, training: bool,
) -> torch.Tensor:
    layers = _layers(flat, shapes)
    h = x
    for i in range(0, len(layers), 2):
        weight, bias = layers[i], layers[i + 1]
        h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        if i + 2 < len(layers):
            h = activation(h)
            if training:
                h = _dropout(h, keep_prob, live)
    return h


def _dropout(h: torch.Tensor, keep_prob: torch.Tensor, live: list[_Member]) -> torch.Tensor:
    rates = [m.config.dropout for m in live]
    if not any(rates):
        return h
    if h.device.type != "cpu":
        return h * (torch.rand_like(h) < keep_prob).to(h.dtype) / keep_prob
    # The CPU single path draws `empty_like(h).bernoulli_(1 - p)` from the global RNG; drawing
    # the same from each member's own copy of that stream gives it the same masks.
    noise = [
        torch.empty_like(h[k]).bernoulli_(1 - p, generator=m.dropout_gen).div_(1 - p)
        if p > 0 else torch.ones_like(h[k])
        for k, (m, p) in enumerate(zip(live, rates))
    ]
    return h * torch.stack(noise)


def _member_losses(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean loss of each member's batch: `[K, B, C]`, `[K, B]` -> `[K]`."""
    k, b, c = logits.shape
    if name == "mse":
        one_hot = F.one_hot(target, c).to(logits.dtype)
        return ((F.softmax(logits, dim=-1) - one_hot) ** 2).mean(dim=(1, 2))
    if name == "nll":
        logits = F.log_softmax(logits, dim=-1)
        per_example = F.nll_loss(logits.reshape(k * b, c), target.reshape(-1), reduction="none")
    else:
        per_example = F.cross_entropy(logits.reshape(k * b, c), target.reshape(-1), reduction="none")
    return per_example.view(k, b).mean(dim=1)


@torch.no_grad()
def _evaluate(
    flat: torch.Tensor, shapes: list[tuple[int, ...]], split: Split,
    activation: Callable[[torch.Tensor], torch.Tensor], loss_name: str, num_classes: int,
    live: list[_Member],
) -> list[dict[str, float]]:
    """Validation loss, accuracy, error and macro-F1 per member, as `trainer.evaluate` computes them."""
    k, n = flat.shape[0], len(split)
    x = split.x.reshape(n, -1)
    # About 10,000 rows of activations at a time, as the single path, but never chunks so small
    # that a large population spends the epoch launching kernels.
    step = max(256, 10000 // k)
    loss_sum = torch.zeros(k, device=flat.device)
    preds = []
    for start in range(0, n, step):
        xb, yb = x[start : start + step], split.y[start : start + step]
        logits = _forward(flat, shapes, xb.expand(k, *xb.shape), activation, torch.ones(()),
                          live, training=False)
        loss_sum += _member_losses(loss_name, logits, yb.expand(k, -1)) * yb.numel()
        preds.append(logits.argmax(dim=-1))
    pred = torch.cat(preds, dim=1)
    confusion = confusion_matrix(pred, split.y.expand(k, n), num_classes)
    stats = torch.stack([loss_sum / n, confusion.diagonal(dim1=-2, dim2=-1).sum(-1).float(),
                         macro_f1(confusion)], dim=1).tolist()
    return [{"loss": loss, "accuracy": correct / n, "error": 1.0 - correct / n, "f1": f1}
            for loss, correct, f1 in stats]


def _end_epoch(
    m: _Member, row: int, epoch: int, train_loss: float, val: dict[str, float] | None, lr: float,
    elapsed: float, flat: torch.Tensor, on_epoch: OnMemberEpoch | None,
) -> bool:
    """Record the member's epoch and apply its stopping rule; False when it leaves the stack."""
    config = m.config
    if not math.isfinite(train_loss):
        m.stop_reason = "diverged"
        m.failure = f"training loss became {train_loss} in epoch {epoch} (lr={config.lr:g})"
        logger.info("population member %d diverged: %s", m.index, m.failure)
        return False
    record = EpochRecord(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val["loss"] if val else None,
        val_accuracy=val["accuracy"] if val else None,
        val_error=val["error"] if val else None,
        val_f1=val["f1"] if val else None,
        lr=lr,
        seconds=elapsed,
    )
    m.history.append(record)
    if config.stopping == "early":
        assert val is not None
        if val["loss"] < m.best_loss:
            m.best_epoch, m.best_loss = epoch, val["loss"]
            m.best_row = flat[row].detach().clone()
        elif epoch - m.best_epoch >= config.patience:
            m.stop_reason = "early_stopping"
    else:
        m.best_epoch = epoch
        m.best_row = None  # the current weights, taken when the member leaves
        if config.stopping == "target" and val is not None and val["error"] <= config.target_error:
            m.stop_reason = "target"
    if on_epoch is not None and on_epoch(m.index, record):
        m.stop_reason = "stopped"
    return m.stop_reason == "epochs" and epoch < config.epochs


def _result(m: _Member, shapes: list[tuple[int, ...]]) -> TrainResult:
    if m.best_row is not None:
        with torch.no_grad():
            for p, value in zip(m.model.parameters(), _layers(m.best_row.unsqueeze(0), shapes)):
                p.copy_(value[0])
    return TrainResult(
        config=m.config,
        history=m.history,
        best_epoch=m.best_epoch,
        stop_reason=m.stop_reason,
        failure=m.failure,
        n_params=count_parameters(m.model),
        seconds=m.seconds,
        model=m.model,
    )
