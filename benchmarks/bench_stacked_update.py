"""Milliseconds per step of the stacked optimizer update, eager against fused, at several K.

Each row updates a `[K, P]` stack (P = the Hinton MLP's 545,810 parameters unless --params says
otherwise) with `StackedOptimizer`, the eager reference (about ten elementwise passes) and the
fused one (`fused=True`: one `torch.compile`d function per kind). The first fused call of each
shape compiles; its seconds are printed apart and left out of the per-step time. A step's time
excludes refilling the gradient (the update overwrites it), which is timed alone and subtracted.

    python benchmarks/bench_stacked_update.py --device cpu                 # K = 8, 64, 256
    python benchmarks/bench_stacked_update.py --device cuda --json out.json

It is a script, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hpsearch.config import TrainConfig
from hpsearch.devices import resolve_device
from hpsearch.training import StackedOptimizer

HINTON_PARAMS = 784 * 500 + 500 + 500 * 300 + 300 + 300 * 10 + 10  # 545,810


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default="8,64,256", help="population sizes K")
    parser.add_argument("--kinds", default="adam,sgd", help="adam, adamw, sgd")
    parser.add_argument("--params", type=int, default=HINTON_PARAMS, help="parameters per member")
    parser.add_argument("--seconds", type=float, default=1.0, help="time each row for about this long")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}, "
          f"P = {args.params:,} parameters per member")
    print(f"{'kind':<6} {'K':>5} {'eager ms/step':>14} {'fused ms/step':>14} {'eager/fused':>12} "
          f"{'compile s':>10}")
    rows = []
    for kind in args.kinds.split(","):
        for k in (int(s) for s in args.sizes.split(",")):
            row = measure(kind, k, args.params, device, args.seconds)
            rows.append(row)
            print(f"{kind:<6} {k:>5} {row['eager_ms']:>14.2f} {row['fused_ms']:>14.2f} "
                  f"{row['eager_ms'] / row['fused_ms']:>11.2f}x {row['compile_s']:>10.1f}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "torch": torch.__version__,
                                         "params": args.params, "rows": rows}, indent=2))


def measure(kind: str, k: int, params: int, device: torch.device, seconds: float) -> dict[str, Any]:
    """One row: eager and fused ms per step, the fused path's first-call (compile) seconds."""
    configs = [TrainConfig(optimizer=kind, lr=1e-3 * (1 + i % 7), weight_decay=1e-4 * (i % 3),
                           momentum=0.9 if kind == "sgd" else 0.0) for i in range(k)]
    source = torch.randn(k, params, device=device)
    grad = torch.empty_like(source)
    refill = _per_step(lambda: grad.copy_(source), device, seconds)
    result: dict[str, Any] = {"kind": kind, "k": k, "params": params, "refill_ms": 1000 * refill}
    for name, fused in (("eager", False), ("fused", True)):
        flat = torch.randn(k, params, device=device)
        optimizer = StackedOptimizer(flat, configs, fused=fused)

        def step(optimizer: StackedOptimizer = optimizer, flat: torch.Tensor = flat) -> None:
            grad.copy_(source)
            optimizer.step(flat, grad)

        started = time.perf_counter()
        step()  # the fused path compiles here (or finds the compiled code of this shape)
        step()  # SGD's second step is its steady state (the first fills the momentum buffer)
        _sync(device)
        if fused:
            result["compile_s"] = time.perf_counter() - started
        result[f"{name}_ms"] = 1000 * max(_per_step(step, device, seconds) - refill, 0.0)
        del flat, optimizer
    return result


def _per_step(run: Callable[[], object], device: torch.device, seconds: float) -> float:
    """Seconds per call of `run`, over at least 3 calls and about `seconds` in all."""
    run()
    _sync(device)
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        run()
        calls += 1
        if calls % 8 == 0:
            _sync(device)
    _sync(device)
    return (time.perf_counter() - started) / calls


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
