"""Adam, AdamW and SGD over a stack of K models held as one `[K, P]` parameter tensor.

Population training keeps all parameters of member k in row k of one flat tensor, so one update
is about ten elementwise kernels over `K * P` numbers whatever the depth of the net, instead of
ten per layer per member. Each member has its own learning rate, weight decay, momentum, betas
and eps, held as `[K, 1]` columns. The arithmetic follows torch.optim's single-tensor
implementations step for step (a test compares them), so a member trains as it would alone up
to floating-point rounding.

`fused=True` runs the same arithmetic as one `torch.compile`d function per optimizer kind,
which Inductor turns into one kernel (Triton on CUDA, a C++ loop on the CPU) that reads the
parameters, gradient and moments once and writes them once, instead of about ten passes over the
`[K, P]` buffers. The compiled function is built once per process and kind (`_fused_update`),
and Dynamo keeps its compiled code per input shape, so later epochs and later stacks of the same
shape reuse it. The eager update stays the reference and the default: compiling costs about
10-30 s on a CPU (README, "Fused stacked update", has the measurements).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import torch

from hpsearch.config import TrainConfig
from hpsearch.errors import ConfigError

logger = logging.getLogger(__name__)

STACKED_OPTIMIZERS = ("adam", "adamw", "sgd")


def _column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(values), dtype=like.dtype, device=like.device).unsqueeze(1)


class StackedOptimizer:
    """One optimizer kind for every member; hyperparameters per member from its config."""

    def __init__(
        self, flat: torch.Tensor, configs: Sequence[TrainConfig], *, fused: bool = False
    ) -> None:
        kinds = {c.optimizer for c in configs}
        if len(kinds) != 1 or not kinds <= set(STACKED_OPTIMIZERS):
            raise ConfigError(
                f"a stacked population needs one optimizer out of {', '.join(STACKED_OPTIMIZERS)} "
                f"for all members, got {sorted(kinds)}; train the others one at a time"
            )
        if len({c.nesterov for c in configs}) != 1:
            raise ConfigError("a stacked population needs the same nesterov setting for all members")
        assert flat.dim() == 2 and flat.shape[0] == len(configs)
        self.kind = kinds.pop()
        self.nesterov = configs[0].nesterov
        self.lr = _column([c.lr for c in configs], flat)
        self.weight_decay = _column([c.weight_decay for c in configs], flat)
        self.momentum = _column([c.momentum for c in configs], flat)
        self.beta1 = _column([c.beta1 for c in configs], flat)
        self.beta2 = _column([c.beta2 for c in configs], flat)
        self.eps = _column([c.eps for c in configs], flat)
        self.steps = 0
        self.fused = fused
        # The fused update computes the bias corrections itself, from a step count on the device.
        self.step_count = torch.zeros((), dtype=flat.dtype, device=flat.device)
        self.exp_avg = torch.zeros_like(flat) if self.kind != "sgd" else None
        self.exp_avg_sq = torch.zeros_like(flat) if self.kind != "sgd" else None
        # Scratch space reused every step by the eager update; the fused one needs none.
        self.scratch = torch.empty_like(flat) if self.kind != "sgd" and not fused else None
        self.momentum_buffer: torch.Tensor | None = None

    def set_lr(self, values: Sequence[float]) -> None:
        """Per-member learning rates for the coming epoch (schedules are stepped per member)."""
        self.lr = _column(values, self.lr)

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor) -> None:
        """Update `flat` in place; `grad` is used as scratch space and overwritten."""
        self.steps += 1
        if self.kind == "sgd":
            if self.momentum_buffer is None:
                # torch.optim.SGD starts its buffer as a copy of the first gradient (with decay).
                self.momentum_buffer = torch.empty_like(flat)
                first = True
            else:
                first = False
            sgd = _fused_update("sgd") if self.fused else _sgd
            sgd(flat, grad, self.momentum_buffer, self.lr, self.weight_decay, self.momentum,
                first, self.nesterov)
            return
        assert self.exp_avg is not None and self.exp_avg_sq is not None
        if self.fused:
            self.step_count += 1
            _fused_update("adam")(flat, grad, self.exp_avg, self.exp_avg_sq, self.lr,
                                  self.weight_decay, self.beta1, self.beta2, self.eps,
                                  self.step_count, self.kind == "adamw")
            return
        assert self.scratch is not None
        # Bias corrections are per member (its own betas) but the step count is shared.
        bc1 = 1 - self.beta1 ** self.steps
        bc2_sqrt = (1 - self.beta2 ** self.steps).sqrt()
        adam = _adamw if self.kind == "adamw" else _adam
        adam(flat, grad, self.exp_avg, self.exp_avg_sq, self.scratch, self.lr, self.weight_decay,
             self.beta1, self.beta2, self.eps, bc1, bc2_sqrt)

    def keep(self, index: torch.Tensor) -> None:
        """Drop the members not in `index` (diverged, pruned or stopped), keeping the others' state."""
        for name in ("lr", "weight_decay", "momentum", "beta1", "beta2", "eps", "exp_avg",
                     "exp_avg_sq", "scratch", "momentum_buffer"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[index])


# The updates work in place on the gradient (the caller's fresh tensor, not needed afterwards)
# and a scratch buffer kept between steps, so a step allocates nothing: on a CPU the update is
# memory-bound, and each out-of-place op would cost a full pass over K * P fresh numbers more.


def _adam(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, scratch: torch.Tensor,
    lr: torch.Tensor, wd: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor, eps: torch.Tensor,
    bc1: torch.Tensor, bc2_sqrt: torch.Tensor,
) -> None:
    g.addcmul_(p, wd)  # L2 through the gradient, as torch.optim.Adam does
    _adam_moments(p, g, m, v, scratch, lr, beta1, beta2, eps, bc1, bc2_sqrt)


def _adamw(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, scratch: torch.Tensor,
    lr: torch.Tensor, wd: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor, eps: torch.Tensor,
    bc1: torch.Tensor, bc2_sqrt: torch.Tensor,
) -> None:
    p.mul_(1 - lr * wd)  # decoupled decay, before the moment step as torch.optim.AdamW does
    _adam_moments(p, g, m, v, scratch, lr, beta1, beta2, eps, bc1, bc2_sqrt)


def _adam_moments(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, scratch: torch.Tensor,
    lr: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor, eps: torch.Tensor, bc1: torch.Tensor,
    bc2_sqrt: torch.Tensor,
) -> None:
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g.mul_(g), 1 - beta2)  # g is spent after the first moment
    step = torch.sqrt(v, out=scratch).div_(bc2_sqrt).add_(eps)
    torch.div(m, step, out=step)
    p.sub_(step.mul_(lr / bc1))


def _sgd(
    p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, lr: torch.Tensor, wd: torch.Tensor,
    momentum: torch.Tensor, first: bool, nesterov: bool,
) -> None:
    g.addcmul_(p, wd)
    if first:
        buf.copy_(g)
    else:
        buf.mul_(momentum).add_(g)  # dampening is 0 in hpsearch
    if nesterov:
        g.addcmul_(buf, momentum)
    else:
        g = buf
    p.addcmul_(g, lr, value=-1)


# The fused updates: the same arithmetic written as plain expressions, for Inductor to fuse into
# one kernel per call. Only `p` and the moments (or the momentum buffer) are written.


def _adam_fused(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, lr: torch.Tensor,
    wd: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor, eps: torch.Tensor,
    step: torch.Tensor, decoupled: bool,
) -> None:
    if decoupled:
        p.mul_(1 - lr * wd)
    else:
        g = g + p * wd
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).add_((1 - beta2) * g * g)
    denom = v.sqrt() / (1 - beta2**step).sqrt() + eps
    p.sub_(lr / (1 - beta1**step) * (m / denom))


def _sgd_fused(
    p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, lr: torch.Tensor, wd: torch.Tensor,
    momentum: torch.Tensor, first: bool, nesterov: bool,
) -> None:
    g = g + p * wd
    if first:
        buf.copy_(g)
    else:
        buf.mul_(momentum).add_(g)
    p.sub_(lr * (g + buf * momentum if nesterov else buf))


@functools.cache
def _fused_update(kind: str) -> Callable[..., None]:
    """The compiled update for "adam" (AdamW too) or "sgd", made once per process."""
    updates: dict[str, Callable[..., None]] = {"adam": _adam_fused, "sgd": _sgd_fused}
    return torch.compile(updates[kind], fullgraph=True)
