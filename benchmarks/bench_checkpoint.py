"""What --checkpoint-dir costs: seconds per save (and per load) of a trial's state, beside one
epoch of the same run, for quickstart (digits) and the Hinton MLP (Fashion-MNIST).

Each run trains one real epoch (so the optimizer holds its state), then its checkpoint (model,
optimizer, generators, history) is written `--repeat` times the way a trial writes it after each
epoch (temp file, fsync, rename) and read back as a resumed trial reads it; medians are printed.
It is a script, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hpsearch.data import load_raw, make_splits
from hpsearch.search.registry import load_study
from hpsearch.training import CheckpointFile, RunCheckpoint, SpeedOptions
from hpsearch.training.control import Member
from hpsearch.training.eager import EagerEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data/fashion-mnist"))
    parser.add_argument("--dir", type=Path, default=None, help="where to write [a temp folder]")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (run's default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for study, folder_arg in (("quickstart", None), ("hinton_mlp", args.data_dir)):
            config = load_study(study).base
            splits = make_splits(load_raw(config.dataset, folder_arg), name=config.dataset,
                                 val_fraction=config.val_fraction, split_seed=config.split_seed)
            engine = EagerEngine(config, splits, device=cpu, speed=SpeedOptions())
            started = time.perf_counter()
            engine.train_epoch([config.lr])
            epoch = time.perf_counter() - started
            state = {"epoch": 1, "elapsed": epoch, "member": Member(0, config).state(),
                     "engine": engine.state()}
            checkpoint = RunCheckpoint(save_to=CheckpointFile(Path(folder) / f"{study}.ckpt",
                                                              {"study": study, "trial": 0}))
            saves, loads = [], []
            for _ in range(args.repeat):
                started = time.perf_counter()
                checkpoint.save(config, state)
                saves.append(time.perf_counter() - started)
                started = time.perf_counter()
                assert checkpoint.save_to.read(config)["epoch"] == 1
                loads.append(time.perf_counter() - started)
            size = checkpoint.save_to.path.stat().st_size
            print(f"{study:11s} {config.dataset:13s} {sum(p.numel() for p in engine.model.parameters()):>8,d} "
                  f"parameters  file {size / 1e6:6.2f} MB  save {statistics.median(saves):.4f} s  "
                  f"load {statistics.median(loads):.4f} s  one epoch {epoch:.2f} s  "
                  f"(save = {100 * statistics.median(saves) / epoch:.1f}% of an epoch)")


if __name__ == "__main__":
    main()
