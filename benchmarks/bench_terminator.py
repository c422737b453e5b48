"""What one `--stop-when-converged` look costs as a study grows: Optuna's Terminator (a Gaussian
process fitted to the best trials, then the regret bound) against the binomial noise, timed on
synthetic in-memory studies of 1 and 4 parameters. A worker with the flag pays this once after
each trial that completes. It is a script, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import optuna
from optuna.distributions import FloatDistribution

from hpsearch.search.terminator import estimate

VAL = 6000  # validation examples each trial records (Fashion-MNIST's 10% split)


def synthetic_study(n_trials: int, n_params: int, seed: int) -> optuna.Study:
    """A bowl in log-learning-rate-like coordinates, error 2-30%, with binomial noise."""
    rng = random.Random(seed)
    study = optuna.create_study()
    space = {f"x{k}": FloatDistribution(1e-4, 1e-1, log=True) for k in range(n_params)}
    for _ in range(n_trials):
        params = {name: 10 ** rng.uniform(-4, -1) for name in space}
        error = 0.02 + 0.28 * min(1.0, sum((math.log10(v) + 2.5) ** 2 for v in params.values()) / 6)
        error += rng.gauss(0, math.sqrt(error * (1 - error) / VAL))
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=space, value=error,
            user_attrs={"run": {"data": {"sizes": {"train": 54000, "val": VAL}}}}))
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[20, 50, 100, 200, 400])
    parser.add_argument("--params", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    estimate(synthetic_study(20, 1, 0), metric="val_error", min_trials=2)  # imports, warm-up
    # Wall time is what a worker waits (and what `status` shows); CPU time does not grow when
    # other jobs share the cores.
    print(f"{'params':>6} {'trials':>6} {'wall s/look':>12} {'CPU s/look':>11} "
          f"{'improvement':>12} {'noise':>8}")
    for n_params in args.params:
        for n_trials in args.trials:
            study = synthetic_study(n_trials, n_params, seed=n_trials)
            walls, cpus = [], []
            for _ in range(args.repeat):
                cpu = time.process_time()
                look = estimate(study, metric="val_error", min_trials=2)
                cpus.append(time.process_time() - cpu)
                assert look is not None
                walls.append(look.seconds)
            print(f"{n_params:>6} {n_trials:>6} {statistics.median(walls):>12.3f} "
                  f"{statistics.median(cpus):>11.3f} {look.improvement:>12.4g} {look.noise:>8.4g}")


if __name__ == "__main__":
    main()
