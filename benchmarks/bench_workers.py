"""Trials per second with 1, 2, 4 and 8 workers on PostgreSQL and on a journal file.

Two workloads per storage:
- trivial: Optuna's own loop (TPE with the constant liar, 4 parameters, an objective that only
  adds them) through hpsearch's storage layer: what the storage and the sampler cost;
- real: `hpsearch launch quickstart` (an MLP on digits, 2 epochs): hpsearch's worker loop with its
  study lock, heartbeats, per-epoch reports and user attributes.

Throughput is read from the trials' timestamps in the storage, once every worker has finished
its first trial, so process start-up and imports are not counted. Each run
gets a fresh database or file. Not a test: numbers depend on the machine.

    python benchmarks/bench_workers.py [--workers 1,2,4,8] [--trivial-trials 200] [--real-trials 60]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import psycopg

from hpsearch.search.storage import open_storage

ADMIN = os.environ.get("HPSEARCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def trivial_worker(url: str, study_name: str, trials: int, seed: int, barrier: object) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    handle = open_storage(url, heartbeat=None)
    study = optuna.load_study(study_name=study_name, storage=handle.storage,
                              sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True))

    def objective(trial: optuna.Trial) -> float:
        return sum(trial.suggest_float(f"x{i}", -1.0, 1.0) for i in range(4))

    barrier.wait()  # type: ignore[attr-defined]
    study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(trials, states=None)])


def run_trivial(url: str, workers: int, trials: int) -> float:
    name = f"trivial-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=open_storage(url, heartbeat=None).storage)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=trivial_worker, args=(url, name, trials, k, barrier))
             for k in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return throughput(url, name, workers)


def run_real(url: str, workers: int, trials: int) -> float:
    env = {**os.environ, "HPSEARCH_DATA_DIR": os.environ.get("HPSEARCH_DATA_DIR", "")}
    env = {k: v for k, v in env.items() if v}
    subprocess.run([sys.executable, "-m", "hpsearch", "launch", "quickstart", "--workers",
                    str(workers), "--trials", str(trials), "--epochs", "2", "--pruner", "none",
                    "--storage", url], check=True, env=env, stdout=subprocess.DEVNULL)
    return throughput(url, "quickstart", workers)


def throughput(url: str, name: str, workers: int) -> float:
    """Trials finished per second once every worker is warm.

    A worker's first trial pays for imports and first-use costs (seconds for torch), so the span
    starts at the `workers`-th completion and counts the trials completed after it.
    """
    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=None).storage)
    ends = sorted(t.datetime_complete for t in study.get_trials(deepcopy=False)
                  if t.datetime_complete is not None)
    warm = ends[workers - 1]
    counted = [e for e in ends if e > warm]
    return len(counted) / max((ends[-1] - warm).total_seconds(), 1e-9)


class Storage:
    """A fresh PostgreSQL database or journal file for each run."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind, self.folder, self.databases = kind, folder, []  # type: list[str]

    def new(self) -> str:
        if self.kind == "journal":
            return f"journal:{self.folder / f'{uuid.uuid4().hex[:8]}.log'}"
        name = f"hpsearch_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return f"postgresql+psycopg://{ADMIN.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"

    def cleanup(self) -> None:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            for name in self.databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--storages", default="postgresql,journal")
    parser.add_argument("--trivial-trials", type=int, default=200)
    parser.add_argument("--real-trials", type=int, default=60)
    args = parser.parse_args()
    counts = [int(k) for k in args.workers.split(",")]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"optuna {optuna.__version__}, python {platform.python_version()}")
    print(f"{'storage':<11}{'workload':<9}{'workers':>8}{'trials':>8}{'trials/s':>10}{'vs 1':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.storages.split(","):
            storage = Storage(kind, Path(tmp))
            try:
                for workload, trials, run in (("trivial", args.trivial_trials, run_trivial),
                                              ("real", args.real_trials, run_real)):
                    base = None
                    for workers in counts:
                        started = time.monotonic()
                        rate = run(storage.new(), workers, trials)
                        base = base or rate
                        print(f"{kind:<11}{workload:<9}{workers:>8}{trials:>8}{rate:>10.1f}"
                              f"{rate / base:>7.2f}   ({time.monotonic() - started:.0f} s wall)",
                              flush=True)
            finally:
                if kind == "postgresql":
                    storage.cleanup()


if __name__ == "__main__":
    main()
