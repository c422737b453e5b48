"""`SpeedOptions`: how fast a run goes, never what it computes (up to rounding, or bf16's
precision when asked for). They are not part of `TrainConfig`, so they never enter a study's
search space or its stored configs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class SpeedOptions:
    """How to run the training step faster; the default is plain eager float32.

    `compile`: `torch.compile` the model for the training step (a stack compiles its optimizer
    update instead). On CUDA it uses mode="reduce-overhead", which records the compiled step as
    CUDA graphs, so a step is a few graph launches instead of dozens of kernel launches; the
    first epoch pays the compile time (seconds), so it pays back over a study of many trials of
    one shape, not a single short run.
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
