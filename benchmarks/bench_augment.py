"""What crop-and-flip augmentation costs per epoch: LeNet-5 on Fashion-MNIST, with and without.

Both variants train in the same process, alternating, each `--repeat` times (the best kept),
one epoch each: the difference is the augmentation's pad and gather per batch. For a CPU:
`--device cpu --train-subset 10000`. It is a script, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hpsearch.config import TrainConfig
from hpsearch.data import Split, Splits, load_raw, make_splits
from hpsearch.devices import resolve_device
from hpsearch.training import train

LENET = TrainConfig(dataset="fashion-mnist", model="lenet5", optimizer="sgd", lr=0.01,
                    momentum=0.9, batch_size=64, epochs=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data/fashion-mnist"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-subset", type=int, default=0, help="first N training examples (0: all)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    splits = make_splits(load_raw("fashion-mnist", args.data_dir), name="fashion-mnist",
                         val_fraction=0.1, split_seed=0)
    if args.train_subset:
        n = args.train_subset
        splits = Splits(splits.name, Split(splits.train.x[:n], splits.train.y[:n]), splits.val,
                        None, splits.classes)
    data = splits.to(device)
    print(f"device {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}; "
          f"{len(data.train)} train examples, batch {LENET.batch_size}, 1 epoch per run")
    train(LENET.replace(augment="crop_flip"), data, device=device)  # warm-up
    best = {"none": float("inf"), "crop_flip": float("inf")}
    accuracy = {}
    for _ in range(args.repeat):
        for augment in ("none", "crop_flip"):
            started = time.perf_counter()
            result = train(LENET.replace(augment=augment), data, device=device)
            best[augment] = min(best[augment], time.perf_counter() - started)
            accuracy[augment] = result.final.val_accuracy
    for augment, seconds in best.items():
        print(f"  augment={augment:<10} {seconds:.2f} s/epoch  val acc {accuracy[augment]:.4f}")
    print(f"  crop_flip costs {best['crop_flip'] - best['none']:+.2f} s/epoch "
          f"({best['crop_flip'] / best['none'] - 1:+.1%})")


if __name__ == "__main__":
    main()
