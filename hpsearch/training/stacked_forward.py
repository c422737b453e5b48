"""How a stack computes its members' logits from their parameters `[K, *shape]` each.

`VmapForward` runs the unchanged `nn.Module` of the config through `torch.func.functional_call`
under `torch.vmap`, so any model without batch norm stacks (MLP, LeNet-5, AlexNet-CIFAR).
`MlpForward` is the hand-fused fast path for plain MLPs: one `torch.baddbmm` per layer over
`[K, B, features]`. `auto` keeps it for MLPs because `vmap` was up to 13% slower for small
stacks (`benchmarks/bench_trainer.py`, Hinton MLP on a 2-core CPU, two runs: vmap/baddbmm
1.06 and 1.13 at K=2, 1.10 and 1.03 at K=4, 0.95 and 0.99 at K=8); the control loop is the
same either way.

Both take the dropout masks as inputs, one `[K, B, *features]` tensor per dropout layer in
forward order (None in evaluation or when no member drops out): random ops under `vmap` cannot
draw from each member's own generator, so the engine draws the masks outside.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call

from hpsearch.config import TrainConfig
from hpsearch.training.models import ACTIVATION_LAYERS, Dropout

FORWARDS = ("auto", "vmap", "baddbmm")


class StackedForward(Protocol):
    def __call__(
        self, params: list[torch.Tensor], x: torch.Tensor, masks: list[torch.Tensor] | None,
        *, shared: bool,
    ) -> torch.Tensor:
        """Logits `[K, B, C]` from `x` `[K, B, ...]`, or `[B, ...]` for every member when `shared`."""


class VmapForward:
    """Any model, through `torch.func`; `template` (on the meta device) lends its structure."""

    def __init__(self, template: nn.Module) -> None:
        self.template = template
        self.names = [name for name, _ in template.named_parameters()]
        self.mask_names = [f"{name}.mask" for name, m in template.named_modules()
                           if isinstance(m, Dropout)]

    def __call__(
        self, params: list[torch.Tensor], x: torch.Tensor, masks: list[torch.Tensor] | None,
        *, shared: bool,
    ) -> torch.Tensor:
        def member(p: list[torch.Tensor], m: list[torch.Tensor] | None, xb: torch.Tensor) -> torch.Tensor:
            buffers = dict(zip(self.mask_names, m)) if m is not None else {}
            return functional_call(self.template, (dict(zip(self.names, p)), buffers), (xb,))

        in_dims = (0, None if masks is None else 0, None if shared else 0)
        return torch.vmap(member, in_dims=in_dims)(params, masks, x)  # type: ignore[no-any-return]


class MlpForward:
    """Plain MLPs (no batch norm): Linear, activation, dropout per hidden layer, by baddbmm."""

    def __init__(self, config: TrainConfig) -> None:
        assert config.model == "mlp" and not config.batch_norm
        self.activation = ACTIVATION_LAYERS[config.activation]()

    def __call__(
        self, params: list[torch.Tensor], x: torch.Tensor, masks: list[torch.Tensor] | None,
        *, shared: bool,
    ) -> torch.Tensor:
        k = params[0].shape[0]
        h = x.flatten(start_dim=1 if shared else 2)
        if shared:
            h = h.expand(k, *h.shape)
        for i in range(0, len(params), 2):
            weight, bias = params[i], params[i + 1]
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            if i + 2 < len(params):
                h = self.activation(h)
                if masks is not None:
                    h = h * masks[i // 2]
        return h


def pick_forward(kind: str, config: TrainConfig, template: nn.Module) -> StackedForward:
    """`auto`: the baddbmm path for plain MLPs, `vmap` for every other model."""
    assert kind in FORWARDS
    plain_mlp = config.model == "mlp" and not config.batch_norm
    if kind == "baddbmm" or (kind == "auto" and plain_mlp):
        assert plain_mlp, "the baddbmm forward is for plain MLPs"
        return MlpForward(config)
    return VmapForward(template)
