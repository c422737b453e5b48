"""The stacked engine: K same-shape trials trained together as one computation.

Member k's parameters are row k of one `[K, P]` tensor, updated by `StackedOptimizer`; the
forward pass runs the config's own `nn.Module` over all rows at once (`stacked_forward`). Every
member keeps what makes it its own trial: its config's hyperparameters (learning rate, weight
decay, betas, momentum, dropout, L1, schedule, stopping rule), its initialisation, its data
order and its dropout masks, each from its own generators as a single run draws them. On the CPU
a member's history therefore equals `train`'s up to floating-point rounding; on other devices one
mask is drawn for the whole stack (one kernel instead of K; a single CUDA run's masks differ
anyway), the same in distribution.

The epoch loop, stopping rules and results are `control.run`'s: a member that diverges, is
pruned or stops leaves the stack (the tensors shrink) and the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import nn

from hpsearch.config import TrainConfig
from hpsearch.data import Split, Splits
from hpsearch.errors import ConfigError
from hpsearch.training import augment, control
from hpsearch.training.eager import batch_size_for, check_splits
from hpsearch.training.losses import compute_loss, l1_penalty
from hpsearch.training.models import Dropout, build_model, draw_mask, empty_model
from hpsearch.training.results import Evaluation, OnMemberEpoch, TrainResult, evaluations
from hpsearch.training.stacked_forward import pick_forward
from hpsearch.training.stacked_optim import STACKED_OPTIMIZERS, StackedOptimizer


def stackable_key(config: TrainConfig) -> tuple[object, ...] | None:
    """Configs with equal keys can train in one stack; None for a config that must train alone.

    The key holds what fixes the shapes and the step sequence: data and split, model (and an
    MLP's widths and activation), loss, optimizer kind, batch size and epochs. Learning rate,
    weight decay, momentum, betas, eps, dropout, L1, init, seed, schedule and stopping rule may
    differ, and so may `augment` and `augment_pad`: they change a batch's values, not its shape,
    and each member draws its own crops (a member without augmentation gets its batch as is).
    Batch norm trains alone (its running statistics are state outside the parameters),
    and so does per-sample SGD, whose thousands of one-example steps per epoch are what
    stacking cannot make cheap.
    """
    mlp = config.model == "mlp"
    if (mlp and config.batch_norm) or config.batch_mode == "sample":
        return None
    if config.optimizer not in STACKED_OPTIMIZERS:
        return None
    return (
        config.dataset, config.val_fraction, config.split_seed, config.model,
        config.hidden if mlp else None, config.activation if mlp else None,
        config.loss, config.optimizer, config.nesterov, config.batch_mode, config.batch_size,
        config.epochs,
    )


class StackedEngine:
    def __init__(self, configs: Sequence[TrainConfig], data: Splits, *, device: torch.device,
                 compile: bool = False, forward: str = "auto") -> None:
        self.configs, self.data, self.device = list(configs), data, device
        self.generators = [control.Generators.for_run(c.seed, device) for c in configs]
        rows = []
        for config, generators in zip(configs, self.generators):
            model = build_model(config, data.input_shape, data.num_classes, generator=generators.init)
            rows.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        self.flat = torch.stack(rows).to(device).requires_grad_(True)
        self.optimizer = StackedOptimizer(self.flat.detach(), configs, fused=compile)
        # The structure every member shares; with dropout layers if any member drops out.
        widest = configs[0].replace(dropout=max(c.dropout for c in configs))
        self.template = empty_model(widest, data.input_shape, data.num_classes,
                                    device=torch.device("meta"))
        self.shapes = [tuple(p.shape) for p in self.template.parameters()]
        self.mask_shapes = _dropout_inputs(self.template, data.input_shape)
        self.forward = pick_forward(forward, configs[0], self.template)
        # Off the CPU, one mask for the whole stack from one stream (see the module docstring).
        self.stack_generator = torch.Generator(device=device).manual_seed(configs[0].seed)

    def _params(self) -> list[torch.Tensor]:
        """Views of the flat stack shaped as each member's parameters: `[K, *shape]`."""
        # One split, not a slice per layer: its backward writes the whole [K, P] gradient in one
        # concatenation instead of a zero-filled full-size tensor per layer.
        k = self.flat.shape[0]
        chunks = self.flat.split([math.prod(shape) for shape in self.shapes], dim=1)
        return [chunk.view(k, *shape) for chunk, shape in zip(chunks, self.shapes)]

    def train_epoch(self, lrs: Sequence[float]) -> list[float]:
        train, first = self.data.train, self.configs[0]
        self.optimizer.set_lr(lrs)
        self.template.train()
        n_train = len(train)
        batch = batch_size_for(first, n_train)
        order = torch.stack([
            torch.randperm(n_train, device=control.shuffle_device(self.device), generator=g.order)
            for g in self.generators
        ]).to(self.device)
        crops = augment.for_epoch(self.configs, n_train, [g.order for g in self.generators],
                                  device=self.device, stacked=True)
        loss_sum = torch.zeros(len(self.configs), device=self.device)
        l1 = self._column([c.l1 for c in self.configs]) if any(c.l1 for c in self.configs) else None
        for start in range(0, n_train, batch):
            idx = order[:, start : start + batch]
            params = self._params()
            x = train.x[idx] if crops is None else crops(train.x[idx], start, start + batch)
            logits = self.forward(params, x, self._masks(idx.shape[1]), shared=False)
            losses = self._losses(logits, train.y[idx])
            if l1 is not None:
                weights = [p for p in params if p.dim() > 2]  # weights only, not biases
                losses = losses + l1 * torch.vmap(lambda *w: l1_penalty(w))(*weights)
            grad, = torch.autograd.grad(losses.sum(), self.flat)
            self.optimizer.step(self.flat.detach(), grad)
            loss_sum += losses.detach() * idx.shape[1]
        return (loss_sum / n_train).tolist()  # the epoch's one host sync for training

    def _column(self, values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=self.flat.dtype, device=self.device)

    def _losses(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each member's mean loss on its batch: `[K, B, C]`, `[K, B]` -> `[K]`."""
        name = self.configs[0].loss
        return torch.vmap(lambda z, y: compute_loss(name, z, y))(logits, target)  # type: ignore[no-any-return]

    def _masks(self, batch: int) -> list[torch.Tensor] | None:
        """Each dropout layer's masks `[K, B, *features]`, drawn as each member's run draws them."""
        rates = [c.dropout for c in self.configs]
        if not self.mask_shapes or not any(rates):
            return None
        like = self.flat.detach()
        if self.device.type != "cpu":
            keep = self._column([1 - p for p in rates])
            masks = []
            for shape in self.mask_shapes:
                noise = torch.rand((len(rates), batch, *shape), device=self.device,
                                   generator=self.stack_generator)
                column = keep.view(-1, *[1] * (1 + len(shape)))
                masks.append((noise < column).to(like.dtype) / column)
            return masks
        # A member's masks, layer by layer, from its own stream: the single run's draws.
        per_member = [
            [draw_mask((batch, *shape), p, g.dropout, like=like) if p > 0
             else torch.ones((batch, *shape), dtype=like.dtype) for shape in self.mask_shapes]
            for p, g in zip(rates, self.generators)
        ]
        return [torch.stack(layer) for layer in zip(*per_member)]

    @torch.no_grad()
    def evaluate(self, split: Split) -> list[Evaluation]:
        k, n = len(self.configs), len(split)
        self.template.eval()
        # About as many rows of activations at a time as a single run, but never chunks so small
        # that a large population spends the epoch launching kernels.
        step = max(32, 1000 // k) if self.configs[0].model != "mlp" else max(256, 10000 // k)
        loss_sum = torch.zeros(k, device=self.device)
        preds = []
        params = self._params()
        for start in range(0, n, step):
            xb, yb = split.x[start : start + step], split.y[start : start + step]
            logits = self.forward(params, xb, None, shared=True)
            loss_sum += self._losses(logits, yb.expand(k, -1)) * yb.numel()
            preds.append(logits.argmax(dim=-1))
        return evaluations(loss_sum, torch.cat(preds, dim=1), split.y, self.data.num_classes)

    def snapshot(self, row: int) -> object:
        return self.flat[row].detach().clone()

    def finish(self, row: int, best: object | None) -> nn.Module:
        weights = best if isinstance(best, torch.Tensor) else self.flat[row].detach()
        model = empty_model(self.configs[row], self.data.input_shape, self.data.num_classes,
                            device=self.device)
        torch.nn.utils.vector_to_parameters(weights, model.parameters())
        return model

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.device, dtype=torch.long)
        self.flat = self.flat.detach()[index].requires_grad_(True)
        self.optimizer.keep(index)
        self.configs = [self.configs[r] for r in rows]
        self.generators = [self.generators[r] for r in rows]


def _dropout_inputs(template: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The feature shape each dropout layer sees, in forward order, from a pass on meta tensors."""
    shapes: list[tuple[int, ...]] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[1:])))
             for m in template.modules() if isinstance(m, Dropout)]
    try:
        template.eval()
        template(torch.empty(1, *input_shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def train_population(
    configs: Sequence[TrainConfig],
    data: Splits,
    *,
    device: torch.device,
    on_epoch: OnMemberEpoch | None = None,
    compile: bool = False,
    forward: str = "auto",
) -> list[TrainResult]:
    """Train every config as `train` would, all at once; results in the configs' order."""
    if not configs:
        return []
    keys = {stackable_key(c) for c in configs}
    if None in keys or len(keys) != 1:
        raise ConfigError(
            f"these configs cannot train as one stack (keys {sorted(map(str, keys))}); group them "
            "with stackable_key and train the rest with train, or call train_many"
        )
    check_splits(configs, data)
    started = time.perf_counter()
    engine = StackedEngine(configs, data, device=device, compile=compile, forward=forward)
    return control.run(engine, configs, val=data.val, on_epoch=on_epoch, started=started)
