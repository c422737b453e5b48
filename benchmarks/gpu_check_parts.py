"""One part of `make gpu-check`, run by benchmarks/gpu_check.py in its own process.

    python benchmarks/gpu_check_parts.py PART --device cuda --data-dir DIR --sizes JSON

Each measured row is printed as it finishes, as one line `GPU_CHECK_ROW {json}`, so that the
runner keeps the rows of a part that is stopped at its timeout. A row holds the group (hinton,
lenet5, alexnet, update), the variant, seconds per trial, validation accuracy and the peak GPU
memory of that row alone. The timings reuse bench_trainer's (a)-(c) and bench_stacked_update's
rows, so the check measures what those benchmarks measure.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from bench_stacked_update import measure as measure_update
from bench_trainer import HINTON, _notebook, _population, _single, _torchvision_layout

from hpsearch.config import TrainConfig
from hpsearch.data import Split, Splits, load_raw, make_splits
from hpsearch.devices import resolve_device
from hpsearch.training import SpeedOptions

ROW = "GPU_CHECK_ROW"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--sizes", type=json.loads, required=True, help="the profile's sizes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.sizes.get("threads", torch.get_num_threads()))
    PARTS[args.part](resolve_device(args.device), args.data_dir, args.sizes)


def emit(group: str, variant: str, run: Callable[[], tuple[float, float | None]], device: torch.device,
         *, per: int = 1, **extra: object) -> None:
    """Time `run` (seconds, accuracy), with the peak GPU memory it took, and print the row."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds, accuracy = run()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    row = {"group": group, "variant": variant, "s_per_trial": seconds / per,
           "val_accuracy": accuracy, "peak_gpu_mib": peak, **extra}
    print(ROW, json.dumps(row), flush=True)


def _fashion(data_dir: Path) -> Splits:
    return make_splits(load_raw("fashion-mnist", data_dir), name="fashion-mnist", val_fraction=0.1,
                       split_seed=0)


def env(device: torch.device, data_dir: Path, sizes: dict) -> None:
    info: dict[str, object] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "device": str(device), "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count)
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                check=False, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            info["driver"] = f"unknown ({e})"
    else:
        info["cpu"] = platform.processor() or platform.machine()
    print(ROW, json.dumps({"group": "env", **info}), flush=True)


def notebook(device: torch.device, data_dir: Path, sizes: dict) -> None:
    config = HINTON.replace(epochs=sizes["epochs"])
    with tempfile.TemporaryDirectory() as tmp:
        root = _torchvision_layout(data_dir, Path(tmp))
        emit("hinton", "(a) notebook: DataLoader + ToTensor",
             lambda: _notebook(root, config, device, 0), device)


def _single_part(label: str, speed: SpeedOptions) -> Callable[[torch.device, Path, dict], None]:
    def part(device: torch.device, data_dir: Path, sizes: dict) -> None:
        config, splits = HINTON.replace(epochs=sizes["epochs"]), _fashion(data_dir)
        emit("hinton", label, lambda: _single(config, splits, device, speed), device)
    return part


def _stacked_part(fused: bool) -> Callable[[torch.device, Path, dict], None]:
    def part(device: torch.device, data_dir: Path, sizes: dict) -> None:
        config, splits = HINTON.replace(epochs=sizes["epochs"]), _fashion(data_dir)
        for k in sizes["fused_populations" if fused else "populations"]:
            label = f"(c) stack of {k}" + (", fused update (--compile)" if fused else "")
            emit("hinton", label, lambda k=k: _population(config, splits, device, k, "auto",
                                                          compile=fused), device, per=k)
    return part


def study(device: torch.device, data_dir: Path, sizes: dict) -> None:
    """(d): `hpsearch run hinton_mlp --population K` with SQLite, in this process (peak memory)."""
    from hpsearch.cli import main as hpsearch

    trials, k = sizes["study_trials"], sizes["study_population"]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "study.db"

        def run() -> tuple[float, float | None]:
            started = time.perf_counter()
            hpsearch.main(["run", "hinton_mlp", "--trials", str(trials), "--population", str(k),
                           "--storage", f"sqlite:///{db}", "--data-dir", str(data_dir),
                           "--epochs", str(sizes["epochs"]), "--device", str(device), "--seed", "0"],
                          standalone_mode=False)
            elapsed = time.perf_counter() - started
            done = optuna.load_study(study_name="hinton_mlp", storage=f"sqlite:///{db}")
            values = [t.value for t in done.trials if t.value is not None]
            return elapsed, 1 - min(values) if values else None  # the metric is val_error

        emit("hinton", f"(d) study hinton_mlp, {trials} trials, --population {k}", run, device,
             per=trials, trials=trials)


def lenet5(device: torch.device, data_dir: Path, sizes: dict) -> None:
    config = TrainConfig(dataset="fashion-mnist", model="lenet5", optimizer="adam", lr=1e-3,
                         batch_size=100, epochs=sizes["cnn_epochs"])
    with tempfile.TemporaryDirectory() as tmp:
        root = _torchvision_layout(data_dir, Path(tmp))
        emit("lenet5", "(a) notebook: DataLoader + ToTensor",
             lambda: _notebook(root, config, device, 0), device)
    splits, k = _fashion(data_dir), sizes["lenet_stack"]
    emit("lenet5", "(b) single path", lambda: _single(config, splits, device, SpeedOptions()), device)
    emit("lenet5", f"(c) stack of {k}", lambda: _population(config, splits, device, k, "auto"),
         device, per=k)


def alexnet(device: torch.device, data_dir: Path, sizes: dict) -> None:
    """AlexNet-CIFAR on random images of CIFAR-10's shape (accuracy is chance by design)."""
    n, k = sizes["alexnet_images"], sizes["alexnet_stack"]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n + n // 5, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (len(x),), generator=generator)
    splits = Splits("cifar10", Split(x[:n], y[:n]), Split(x[n:], y[n:]), None,
                    tuple(str(c) for c in range(10)))
    config = TrainConfig(dataset="cifar10", model="alexnet_cifar", optimizer="sgd", lr=0.01,
                         momentum=0.9, batch_size=128, epochs=1)
    emit("alexnet", "(b) single path, one epoch",
         lambda: _single(config, splits, device, SpeedOptions()), device)
    emit("alexnet", f"(c) stack of {k}, one epoch",
         lambda: _population(config, splits, device, k, "auto"), device, per=k)


def update(device: torch.device, data_dir: Path, sizes: dict) -> None:
    """bench_stacked_update's rows: the stacked optimizer's update, eager and fused."""
    for kind in ("adam", "sgd"):
        for k in sizes["update_sizes"]:
            row = measure_update(kind, k, sizes["update_params"], device, sizes["update_seconds"])
            print(ROW, json.dumps({"group": "update", **row}), flush=True)


PARTS: dict[str, Callable[[torch.device, Path, dict], None]] = {
    "env": env,
    "notebook": notebook,
    "single": _single_part("(b) single path, eager", SpeedOptions()),
    "compile": _single_part("(b') single path, --compile", SpeedOptions(compile=True)),
    "bf16": _single_part("(b'') single path, --bf16", SpeedOptions(bf16=True)),
    "stacked": _stacked_part(fused=False),
    "stacked-fused": _stacked_part(fused=True),
    "study": study,
    "lenet5": lenet5,
    "alexnet": alexnet,
    "update": update,
}

if __name__ == "__main__":
    main()
