"""How long the dashboard's study page waits on its API at 1,000 and 10,000 trials on PostgreSQL.

Each study is filled in bulk through Optuna's storage API (`study.add_trials` of FrozenTrials, a
few seconds per 10,000) with what an hpsearch trial stores: three parameters, one intermediate
value per epoch, and the config, run record, per-epoch history, result and outcome user
attributes, built by hpsearch's own record classes. The dashboard is then served as
`hpsearch dashboard --read-only --auth-file ...` serves it (waitress, basic auth, read-only
layer) and the calls the study page makes are timed from a client on the same machine: the first
call (the dashboard's in-memory trial cache still cold) and the median of the next ones.

Which calls: `--watch` serves the 1k study, loads its page in headless Chromium and prints the
/api paths the page requested (as in the table below).

    python benchmarks/bench_dashboard.py [--trials 1000,10000] [--epochs 20] [--repeats 3] [--watch]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import psycopg
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

# Optuna's table definitions, private: the bulk fill below writes rows as Optuna's own models.
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import orm

from hpsearch.analysis.dashboard import DEFAULT_THREADS, Access, DashboardServer, dashboard_app
from hpsearch.analysis.dashboard_auth import add_user
from hpsearch.config import TrainConfig
from hpsearch.search.provenance import RunRecord
from hpsearch.search.record import History, Outcome, ResultSummary, config_attrs
from hpsearch.search.storage import StorageHandle, open_storage

ADMIN = os.environ.get("HPSEARCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "units": IntDistribution(16, 512, log=True),
    "optimizer": CategoricalDistribution(("sgd", "adam", "rmsprop")),
}


def synthetic_trial(number: int, rng: random.Random, *, epochs: int) -> FrozenTrial:
    """A completed trial shaped like one `hpsearch run` stores (its values are made up)."""
    params = {"lr": 10 ** rng.uniform(-4, -1), "units": rng.randint(16, 512),
              "optimizer": rng.choice(("sgd", "adam", "rmsprop"))}
    config = TrainConfig(hidden=(params["units"],), optimizer=params["optimizer"], lr=params["lr"],
                         epochs=epochs)
    floor = rng.uniform(0.02, 0.3)
    curve = [floor + (0.9 - floor) * 0.7 ** e for e in range(epochs)]
    history = {name: [v * scale for v in curve] for name, scale in
               (("train_loss", 2.0), ("val_loss", 2.2), ("val_error", 1.0), ("lr", 0.0))}
    history["val_accuracy"] = [1 - v for v in curve]
    run = RunRecord(seed=number, dataset="digits", val_fraction=0.1, split_seed=0, device="cpu",
                    versions={"torch": "2.14.1", "optuna": optuna.__version__},
                    study_module="bench", source_hash="0" * 64)
    attrs = {**config_attrs(config), **run.to_attrs(), **History(history).to_attrs(),
             **ResultSummary("complete", None, "epochs", epochs, epochs, 5.0, 1000).to_attrs(),
             **Outcome("complete", None).to_attrs()}
    start = datetime(2026, 1, 1) + timedelta(seconds=10 * number)
    return FrozenTrial(
        number=number, state=TrialState.COMPLETE, value=curve[-1], datetime_start=start,
        datetime_complete=start + timedelta(seconds=5), params=params,
        distributions=DISTRIBUTIONS, user_attrs=attrs, system_attrs={},
        intermediate_values=dict(enumerate(curve, 1)), trial_id=number)


def fill_study(storage: optuna.storages.RDBStorage, name: str, trials: int, *, epochs: int = 20,
               seed: int = 0, chunk: int = 1000) -> optuna.Study:
    """A study named `name` holding `trials` synthetic completed trials, `chunk` per transaction.

    `study.add_trials` costs ~60 statements per trial here (each intermediate value is looked up
    before it is written): 0.2-0.6 s a trial on this 2-core machine, over half an hour for 10k.
    So the rows are written as Optuna's own ORM models (its schema, its stored forms of values
    and distributions) in one session per chunk; tests/test_dashboard_access.py checks that
    Optuna reads such a study back equal to one filled by `add_trials`.
    """
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    study.set_user_attr("metric", "val_error")
    rng = random.Random(seed)
    for first in range(0, trials, chunk):
        frozen = [synthetic_trial(n, rng, epochs=epochs)
                  for n in range(first, min(first + chunk, trials))]
        with orm.Session(storage.engine) as session, session.begin():
            session.add_all(_trial_model(study._study_id, t) for t in frozen)
    return study


def _trial_model(study_id: int, trial: FrozenTrial) -> models.TrialModel:
    row = models.TrialModel(number=trial.number, study_id=study_id, state=trial.state)
    row.datetime_start, row.datetime_complete = trial.datetime_start, trial.datetime_complete
    row.params = [models.TrialParamModel(
        param_name=k, param_value=trial.distributions[k].to_internal_repr(v),
        distribution_json=distribution_to_json(trial.distributions[k]))
        for k, v in trial.params.items()]
    value, value_type = models.TrialValueModel.value_to_stored_repr(trial.values[0])
    row.values = [models.TrialValueModel(objective=0, value=value, value_type=value_type)]
    intermediate = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr
    row.intermediate_values = [models.TrialIntermediateValueModel(
        step=step, intermediate_value=stored, intermediate_value_type=kind)
        for step, (stored, kind) in ((s, intermediate(v)) for s, v in trial.intermediate_values.items())]
    row.user_attributes = [models.TrialUserAttributeModel(key=k, value_json=json.dumps(v))
                           for k, v in trial.user_attrs.items()]
    return row


@contextmanager
def postgres_database() -> Iterator[str]:
    name = f"hpsearch_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def timed_get(url: str, headers: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=600) as r:
        size = len(r.read())
    return time.perf_counter() - start, size


def page_calls(study_id: int, trials: int) -> dict[str, str]:
    """The calls the study page makes (see --watch): once on load, then a poll every few seconds
    for trials after those it has."""
    return {
        "GET /api/meta": "/api/meta",
        "GET /api/studies/ID?after=0 (all trials)": f"/api/studies/{study_id}?after=0",
        "GET /api/studies/ID?after=N (poll)": f"/api/studies/{study_id}?after={trials}",
        "GET /api/studies/ID/param_importances": f"/api/studies/{study_id}/param_importances",
        "GET /api/studies (the study list page)": "/api/studies",
    }


def watch(base: str, study_id: int, seen: list[str]) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (apt-get install chromium)"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom",
                        f"{base}/dashboard/studies/{study_id}"],
                       capture_output=True, timeout=300, check=True)
    print("the study page requested:", *sorted(set(seen)), sep="\n  ")


def recording(app: Callable[..., Any], seen: list[str]) -> Callable[..., Any]:
    def record(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["PATH_INFO"].startswith("/api"):
            query = environ.get("QUERY_STRING")
            seen.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}"
                        + (f"?{query}" if query else ""))
        return app(environ, start_response)
    return record


def bench(trials: int, *, epochs: int, repeats: int, watch_page: bool, auth: Path) -> None:
    headers = {"Authorization": "Basic " + base64.b64encode(b"bench:bench-password").decode()}
    with postgres_database() as url:
        rdb = optuna.storages.RDBStorage(url.replace("postgresql://", "postgresql+psycopg://"))
        start = time.perf_counter()
        study = fill_study(rdb, f"bench-{trials}", trials, epochs=epochs)
        handle: StorageHandle = open_storage(url, heartbeat=None)  # as `hpsearch dashboard` does
        print(f"\n{trials} trials x {epochs} epochs: filled in {time.perf_counter() - start:.1f} s")
        seen: list[str] = []
        # Watched without a login: a page opened as http://user:password@host/... cannot fetch.
        access = Access(auth_file=None if watch_page else auth, read_only=True)
        server = DashboardServer(recording(dashboard_app(handle, access), seen), host="127.0.0.1",
                                 port=0, threads=DEFAULT_THREADS)
        with server.in_background() as base:
            if watch_page:
                watch(base, study._study_id, seen)
                return
            print(f"{'call':42s} {'first s':>8s} {'median s':>9s} {'MB':>7s}")
            for label, path in page_calls(study._study_id, trials).items():
                first, size = timed_get(base + path, headers)
                rest = [timed_get(base + path, headers)[0] for _ in range(repeats)]
                print(f"{label:42s} {first:8.3f} {statistics.median(rest):9.3f} {size / 1e6:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", default="1000,10000")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--watch", action="store_true",
                        help="Print the /api calls the study page makes in Chromium (first size).")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        auth = Path(folder) / "users.txt"
        add_user(auth, "bench", "bench-password")
        for trials in [int(t) for t in args.trials.split(",")]:
            bench(trials, epochs=args.epochs, repeats=args.repeats, watch_page=args.watch, auth=auth)
            if args.watch:
                break


if __name__ == "__main__":
    main()
