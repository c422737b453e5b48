"""Who and what ran a trial: the package versions, the worker, and the run record built from
them, which `hpsearch.search.record` stores with each trial and `final` writes beside its runs."""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

import hpsearch
from hpsearch.config import TrainConfig
from hpsearch.devices import device_name

ATTR_RUN = "run"  # the trial user attribute holding the run record
ATTR_DATA = "data"  # on the study, and in ATTR_RUN: data source, content hash, split sizes


def as_mapping(value: Any) -> Mapping[str, Any]:
    """A stored record as a mapping; anything else (absent, or not written by hpsearch) as {}."""
    return value if isinstance(value, Mapping) else {}


def package_versions() -> dict[str, str]:
    return {
        "hpsearch": hpsearch.__version__,
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
        "cuda": str(torch.version.cuda),
    }


@dataclasses.dataclass(frozen=True)
class WorkerIdentity:
    """Who runs a trial. A pid means something only to a process with the same host name, boot
    and PID namespace (containers on the host network, cloned VMs share a host name), so those
    are recorded with it; `id` tells this process apart from an earlier one with its pid."""

    host: str | None = None
    pid: int | None = None
    id: str | None = None
    boot_id: str | None = None
    pid_ns: int | None = None

    @classmethod
    def current(cls) -> WorkerIdentity:
        pid = os.getpid()
        return cls(host=socket.gethostname(), pid=pid, id=_worker_id(pid), boot_id=_boot_id(),
                   pid_ns=_pid_namespace())

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> WorkerIdentity:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in as_mapping(raw).items() if k in known})


def worker_identity() -> dict[str, Any]:
    """`WorkerIdentity.current()`, as stored."""
    return WorkerIdentity.current().to_dict()


@functools.cache
def _worker_id(pid: int) -> str:
    """A random id per process (keyed by pid, so a forked child gets its own)."""
    return uuid.uuid4().hex[:16]


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What re-runs a trial besides its config (user attribute `run`)."""

    seed: int | None = None
    dataset: str | None = None
    val_fraction: float | None = None
    split_seed: int | None = None
    cv_folds: int = 0  # k of k-fold cross-validation, 0: one validation split
    device: str | None = None
    device_name: str | None = None
    worker: WorkerIdentity = WorkerIdentity()
    versions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    study_module: str | None = None
    source_hash: str | None = None
    speed: Mapping[str, bool] = dataclasses.field(default_factory=dict)  # SpeedOptions.to_dict()
    population: int = 1  # how many trials trained in its stack (1: alone)
    data: Mapping[str, Any] | None = None  # `Splits.provenance()` of the data it trained on

    @classmethod
    def of(
        cls,
        config: TrainConfig,
        *,
        device: torch.device,
        study_module: str | None,
        source_hash: str | None,
        cv_folds: int = 0,
        speed: Mapping[str, bool] | None = None,
        population: int = 1,
        data: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        """The record of `config` about to train here, now (this process, these versions)."""
        return dataclasses.replace(
            cls.here(device),
            seed=config.seed, dataset=config.dataset, val_fraction=config.val_fraction,
            split_seed=config.split_seed, cv_folds=cv_folds, study_module=study_module,
            source_hash=source_hash, speed=dict(speed or {"compile": False, "bf16": False}),
            population=population, data=data,
        )

    @classmethod
    def here(cls, device: torch.device) -> RunRecord:
        """Where a run happens now: `device` (and its name), this worker, these versions; the
        rest is the run's own (`of`)."""
        return cls(device=str(device), device_name=device_name(device),
                   worker=WorkerIdentity.current(), versions=package_versions())

    def to_dict(self) -> dict[str, Any]:
        return {
            ATTR_DATA: dict(self.data) if self.data is not None else None,
            "speed": dict(self.speed),
            "population": self.population,
            "seed": self.seed,
            "dataset": self.dataset,
            "split": {"val_fraction": self.val_fraction, "split_seed": self.split_seed,
                      "cv_folds": self.cv_folds},
            "device": self.device,
            "device_name": self.device_name,
            "worker": self.worker.to_dict(),
            "versions": dict(self.versions),
            "study_module": self.study_module,
            "source_hash": self.source_hash,
        }

    def to_attrs(self) -> dict[str, Any]:
        return {ATTR_RUN: self.to_dict()}

    @classmethod
    def from_dict(cls, raw: Any) -> RunRecord:
        run = as_mapping(raw)
        split = as_mapping(run.get("split"))
        data = run.get(ATTR_DATA)
        return cls(
            seed=run.get("seed"), dataset=run.get("dataset"),
            val_fraction=split.get("val_fraction"), split_seed=split.get("split_seed"),
            cv_folds=int(split.get("cv_folds") or 0), device=run.get("device"),
            device_name=run.get("device_name"), worker=WorkerIdentity.from_dict(run.get("worker")),
            versions=dict(as_mapping(run.get("versions"))), study_module=run.get("study_module"),
            source_hash=run.get("source_hash"), speed=dict(as_mapping(run.get("speed"))),
            population=int(run.get("population") or 1),
            data=dict(data) if isinstance(data, Mapping) else None,
        )

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> RunRecord:
        return cls.from_dict(trial.user_attrs.get(ATTR_RUN))

    @property
    def precision(self) -> str:
        return "bf16" if self.speed.get("bf16") else "float32"
