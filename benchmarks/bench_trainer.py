"""How long one trial of the Hinton MLP takes, trained five ways, and what Optuna costs around it.

(a) the course notebooks' loop: torchvision FashionMNIST + ToTensor + DataLoader(batch 100,
    shuffle), `.to(device)` per batch;
(b) hpsearch's single-trial path (`train`, the eager engine: data resident on the device),
    optionally with --compile;
(c) the stacked engine (`train_population`) at several population sizes, with each forward
    side by side: `vmap` (the model's own nn.Module through torch.func) and `baddbmm` (the
    hand-fused MLP path);
(d) whole studies through hpsearch with SQLite storage: `hinton_mlp` (fixed shape) one trial
    at a time and with --population, and `mnist_mlp` (shapes vary) likewise, with the time
    spent in Optuna calls (ask, suggest, set_user_attr, report, should_prune, tell) per trial.

It prints s/trial, validation accuracy and the ratio of each row's s/trial to (a). Reduced
sizes for a CPU: `--device cpu --epochs 2 --train-subset 5000 --trials 8`.
It is a script, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import gzip
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import torch
from torch import nn

from hpsearch.config import TrainConfig
from hpsearch.data import RawData, Split, Splits, load_raw, make_splits, register_dataset
from hpsearch.devices import resolve_device
from hpsearch.search import worker
from hpsearch.search.optuna_private import TRIAL_SUGGEST
from hpsearch.search.registry import load_study
from hpsearch.search.settings import resolve_settings
from hpsearch.search.storage import open_storage
from hpsearch.search.worker import WorkerOptions, run_worker
from hpsearch.training import SpeedOptions, build_model, many, train, train_population

HINTON = TrainConfig(dataset="fashion-mnist", hidden=(500, 300), optimizer="adam", lr=1e-3,
                     batch_size=100, epochs=20)
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
       "t10k-labels-idx1-ubyte")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                        help="folder with the four Fashion-MNIST IDX files (.gz or not)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-subset", type=int, default=0,
                        help="train on the first N examples of the 54k split (0: all)")
    parser.add_argument("--population-sizes", default="16,64,256")
    parser.add_argument("--trials", type=int, default=64, help="trials per study in part (d)")
    parser.add_argument("--compile", action="store_true", help="also time (b) with --compile")
    parser.add_argument("--repeat", type=int, default=1, help="time (a)-(c) this often, keep the best")
    parser.add_argument("--skip-studies", action="store_true", help="leave out part (d)")
    parser.add_argument("--studies-only", action="store_true",
                        help="only part (d) and its split per trial (to compare two hpsearch trees)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = resolve_device(args.device)
    config = HINTON.replace(epochs=args.epochs)
    sizes = [int(s) for s in args.population_sizes.split(",") if s]

    with tempfile.TemporaryDirectory() as tmp:
        raw_root = _torchvision_layout(args.data_dir, Path(tmp))
        splits = _subset(make_splits(load_raw("fashion-mnist", raw_root), name="fashion-mnist",
                                     val_fraction=0.1, split_seed=0), args.train_subset)
        print(f"device {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}; "
              f"{len(splits.train)} train / {len(splits.val or [])} val examples, "
              f"{config.epochs} epochs, batch {config.batch_size}\n")
        rows: list[tuple[str, float, float | None]] = []

        def timed(label: str, run: Callable[[], tuple[float, float | None]], per: int = 1) -> None:
            best, acc = min((run() for _ in range(args.repeat)), key=lambda r: r[0])
            rows.append((label, best / per, acc))
            print(f"  {label}: {best / per:.3f} s/trial", flush=True)

        warm = config.replace(epochs=1)
        train(warm, _subset(splits, 500), device=device)  # imports and allocator warm-up
        for forward in ("vmap", "baddbmm"):
            train_population([warm, warm.replace(seed=1)], _subset(splits, 500), device=device,
                             forward=forward)
        if args.studies_only:
            _studies(args, raw_root, device, rows)
            return
        timed("(a) notebook: DataLoader + ToTensor, .to(device) per batch",
              lambda: _notebook(raw_root, config, device, args.train_subset))
        timed("(b) hpsearch single trial (data resident)",
              lambda: _single(config, splits, device, SpeedOptions()))
        if args.compile:
            timed("(b) hpsearch single trial, --compile",
                  lambda: _single(config, splits, device, SpeedOptions(compile=True)))
        for k in sizes:
            for forward in ("vmap", "baddbmm"):
                timed(f"(c) population of {k} (stacked), {forward} forward",
                      lambda k=k, f=forward: _population(config, splits, device, k, f), per=k)
        if not args.skip_studies:
            _studies(args, raw_root, device, rows)

    base = rows[0][1]
    print(f"\n{'variant':<64} {'s/trial':>9} {'val acc':>8} {'vs (a)':>8}")
    for label, seconds, acc in rows:
        shown = f"{acc:.4f}" if acc is not None else "-"
        print(f"{label:<64} {seconds:>9.3f} {shown:>8} {base / seconds:>7.1f}x")
    _forwards_side_by_side(rows, sizes)


def _forwards_side_by_side(rows: list[tuple[str, float, float | None]], sizes: list[int]) -> None:
    """The stacked engine's two forwards per population size; vmap/baddbmm > 1.1 keeps baddbmm."""
    seconds = {label: s for label, s, _ in rows}
    print(f"\n{'stacked engine, s/trial':<28} {'vmap':>9} {'baddbmm':>9} {'vmap/baddbmm':>13}")
    for k in sizes:
        vmap, fused = (seconds[f"(c) population of {k} (stacked), {f} forward"]
                       for f in ("vmap", "baddbmm"))
        print(f"{f'population of {k}':<28} {vmap:>9.3f} {fused:>9.3f} {vmap / fused:>13.2f}")


# --- (a) the notebook loop -----------------------------------------------------------------


def _torchvision_layout(source: Path, tmp: Path) -> Path:
    """Unpack the IDX files where torchvision looks (`root/FashionMNIST/raw/`); never downloads."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX:
        if (source / name).is_file():
            shutil.copyfile(source / name, raw / name)
        elif (source / f"{name}.gz").is_file():
            with gzip.open(source / f"{name}.gz", "rb") as f, open(raw / name, "wb") as out:
                shutil.copyfileobj(f, out)
        else:
            raise SystemExit(f"{name}(.gz) not found in {source}; pass --data-dir")
    return tmp


def _notebook(root: Path, config: TrainConfig, device: torch.device, subset: int) -> tuple[float, float]:
    from torch.utils.data import DataLoader, Subset, random_split
    from torchvision import datasets, transforms

    torch.manual_seed(config.seed)
    full = datasets.FashionMNIST(str(root), train=True, download=False,
                                 transform=transforms.ToTensor())
    n_val = len(full) // 10  # 54k/6k on the official 60k, as hpsearch splits it
    train_set, val_set = random_split(full, [len(full) - n_val, n_val],
                                      generator=torch.Generator().manual_seed(0))
    if subset:
        train_set = Subset(train_set, range(min(subset, len(train_set))))
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=1000)
    model = build_model(config, (1, 28, 28), 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for _ in range(config.epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            loss.item()  # the notebooks print a running loss, one host sync per step
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
    _sync(device)
    return time.perf_counter() - started, correct / len(val_set)


# --- (b), (c) hpsearch's paths ---------------------------------------------------------------


def _subset(splits: Splits, n: int) -> Splits:
    if not n or n >= len(splits.train):
        return splits
    return Splits(splits.name, Split(splits.train.x[:n], splits.train.y[:n]), splits.val, None,
                  splits.classes)


def _single(config: TrainConfig, splits: Splits, device: torch.device,
            speed: SpeedOptions) -> tuple[float, float]:
    data = splits.to(device)
    started = time.perf_counter()
    result = train(config, data, device=device, speed=speed)
    _sync(device)
    return time.perf_counter() - started, result.final.val_accuracy or 0.0


def _population(config: TrainConfig, splits: Splits, device: torch.device, k: int,
                forward: str, *, compile: bool = False) -> tuple[float, float]:
    data = splits.to(device)
    configs = [config.replace(seed=s) for s in range(k)]  # lr 1e-3 each, own init and data order
    started = time.perf_counter()
    results = train_population(configs, data, device=device, forward=forward, compile=compile)
    _sync(device)
    return time.perf_counter() - started, statistics.mean(r.final.val_accuracy or 0.0 for r in results)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- (d) whole studies with storage ----------------------------------------------------------


# What a study's wall time goes to, per trial. Each category is the time inside the calls listed
# for it, less the time in calls of another category nested inside them (a `report` inside
# `train` counts as Optuna's); "else" is the rest: hpsearch's own work around the trials.
OPTUNA_CALLS = ((optuna.Study, "ask"), (optuna.Trial, TRIAL_SUGGEST), (optuna.Trial, "set_user_attr"),
                (optuna.Trial, "report"), (optuna.Trial, "should_prune"), (optuna.Study, "tell"))
SPLIT = {
    "training": ((many, "train"), (many, "train_population")),  # model, optimizer, epochs
    "set-up": ((worker._Worker, "__init__"), (worker, "check_precision")),  # data, study: once
}


@dataclasses.dataclass
class StudyTimes:
    """Seconds spent in each timed call (by name) and in each category, over one study."""

    calls: dict[str, float] = dataclasses.field(default_factory=lambda: collections.defaultdict(float))
    split: dict[str, float] = dataclasses.field(default_factory=lambda: collections.defaultdict(float))

    def per_trial(self, elapsed: float, trials: int) -> dict[str, float]:
        """Seconds per trial: training, Optuna calls, one-time set-up, everything else."""
        parts = {name: self.split[name] for name in ("training", "optuna", "set-up")}
        return {name: s / trials for name, s in {**parts, "else": elapsed - sum(parts.values())}.items()}


@contextlib.contextmanager
def _study_timer(clock: Callable[[], float] = time.perf_counter) -> Iterator[StudyTimes]:
    """Time the calls of OPTUNA_CALLS and SPLIT while a study runs, exclusive of nested ones
    (`clock`: wall time; `time.process_time` gives CPU time, which a busy machine inflates less)."""
    times = StudyTimes()
    nested: list[float] = []  # per open timed call: seconds of timed calls inside it so far
    targets = [(owner, name, "optuna") for owner, name in OPTUNA_CALLS]
    targets += [(owner, name, part) for part, calls in SPLIT.items() for owner, name in calls]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]

    def wrap(name: str, part: str, fn: Callable[..., object]) -> Callable[..., object]:
        @functools.wraps(fn)
        def timed(*a: object, **kw: object) -> object:
            started = clock()
            nested.append(0.0)
            try:
                return fn(*a, **kw)
            finally:
                elapsed = clock() - started
                own = elapsed - nested.pop()
                if nested:
                    nested[-1] += elapsed
                times.split[part] += own
                if part == "optuna":
                    times.calls[name] += own
        return timed

    for owner, name, part in targets:
        setattr(owner, name, wrap(name, part, getattr(owner, name)))
    try:
        yield times
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


def _studies(args: argparse.Namespace, raw_root: Path, device: torch.device,
             rows: list[tuple[str, float, float | None]]) -> None:
    dataset = "fashion-mnist"
    if args.train_subset:
        # The study runs on the first train-subset/0.9 official training images, so that its
        # 90% training split has about --train-subset examples, as in (a)-(c).
        dataset = f"fashion-mnist-first{args.train_subset}"
        n = round(args.train_subset / 0.9)

        @register_dataset(dataset)
        def _first(data_dir: Path, download: bool) -> RawData:
            full = load_raw("fashion-mnist", raw_root)
            return RawData(full.train_x[:n], full.train_y[:n], full.test_x, full.test_y, full.classes)

    population = max(int(s) for s in args.population_sizes.split(","))
    print(f"\n(d) studies of {args.trials} trials on {dataset}, SQLite storage, random sampler, "
          "no pruner")
    splits: list[tuple[str, float, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for study, k in (("hinton_mlp", 1), ("hinton_mlp", population), ("mnist_mlp", 1),
                         ("mnist_mlp", population)):
            spec = load_study(study)
            settings = resolve_settings(spec, study_name=f"{study}-k{k}", dataset=dataset,
                                        epochs=args.epochs, sampler="random", pruner="none",
                                        data_dir=raw_root)
            handle = open_storage(f"sqlite:///{tmp}/{study}-{k}.db")
            with _study_timer() as times:
                started = time.perf_counter()
                report = run_worker(handle, settings, WorkerOptions(
                    trials=args.trials, population=k, device=device, sampler_seed=0))
                elapsed = time.perf_counter() - started
            values = [o.value for o in report.outcomes if o.value is not None]
            best = 1 - min(values) if values else None
            label = f"(d) study {study}, " + ("one trial at a time" if k == 1 else f"--population {k}")
            rows.append((label + " (acc: best)", elapsed / args.trials, best))
            splits.append((label, elapsed / args.trials, times.per_trial(elapsed, args.trials)))
            calls = ", ".join(f"{name} {1000 * s / args.trials:.1f}" for name, s in times.calls.items())
            print(f"  {label}: {elapsed / args.trials:.3f} s/trial; Optuna calls "
                  f"{1000 * times.split['optuna'] / args.trials:.1f} ms/trial ({calls})", flush=True)
    print(f"\n{'(d) per trial, ms':<44} {'total':>7} {'training':>9} {'Optuna':>7} {'set-up':>7} "
          f"{'else':>6}")
    for label, total, split in splits:
        print(f"{label[4:]:<44} {1000 * total:>7.0f} " + " ".join(
            f"{1000 * split[part]:>{width}.0f}" for part, width in (
                ("training", 9), ("optuna", 7), ("set-up", 7), ("else", 6))))


if __name__ == "__main__":
    main()
