"""`hpsearch launch`: K local worker processes of one study, each with its own GPU or CPU threads.

Each worker is a separate `hpsearch worker` process (its own CUDA context, its own data copy);
they share nothing but the storage, exactly like workers on different machines. The launcher
only places them (CUDA_VISIBLE_DEVICES, thread counts), forwards Ctrl-C and waits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from hpsearch.errors import HPSearchError
from hpsearch.search.outcomes import Interrupted

logger = logging.getLogger(__name__)

# After forwarding Ctrl-C, how long workers get to mark their running trials before being killed.
STOP_GRACE_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    index: int
    gpu: str | None  # the CUDA_VISIBLE_DEVICES value, or None for a CPU worker
    threads: int  # torch intra-op threads


def parse_gpus(text: str) -> list[str]:
    """`0,1,3` -> ["0", "1", "3"]; refuses anything but distinct non-negative integers."""
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    if not gpus or not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise HPSearchError(f"--gpus {text!r}: give distinct GPU indices separated by commas, like 0,1")
    return gpus


def plan_workers(
    *, workers: int | None, gpus: Sequence[str], per_gpu: int, cpu_count: int
) -> list[WorkerPlan]:
    """Place workers round-robin on the GPUs (at most `per_gpu` each), or on CPU threads."""
    if per_gpu < 1:
        raise HPSearchError(f"--per-gpu {per_gpu}: give at least 1")
    if gpus:
        slots = len(gpus) * per_gpu
        count = workers or slots
        if count > slots:
            raise HPSearchError(
                f"--workers {count} does not fit {len(gpus)} GPU(s) x --per-gpu {per_gpu}; raise "
                "--per-gpu or lower --workers"
            )
        # Worker k runs on GPU k mod G, so the GPUs fill evenly before any gets a second worker.
        threads = max(1, cpu_count // count)
        return [WorkerPlan(k, gpus[k % len(gpus)], threads) for k in range(count)]
    count = workers or 1
    if count < 1:
        raise HPSearchError(f"--workers {count}: give at least 1")
    if count > cpu_count:
        logger.warning("%d CPU workers on %d cores: each gets 1 thread, and they share cores",
                       count, cpu_count)
    return [WorkerPlan(k, None, max(1, cpu_count // count)) for k in range(count)]


def worker_env(plan: WorkerPlan, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env["HPSEARCH_WORKER_INDEX"] = str(plan.index)
    # Threads are set before torch starts, so the CPU workers do not oversubscribe the cores.
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(plan.threads)
    env["CUDA_VISIBLE_DEVICES"] = plan.gpu if plan.gpu is not None else ""
    return env


@dataclasses.dataclass
class LaunchResult:
    exit_codes: list[int]
    interrupted: bool
    seconds: float


def launch(
    plans: Sequence[WorkerPlan], worker_args: Sequence[str], *, env: Mapping[str, str] | None = None,
    grace: float = STOP_GRACE_SECONDS,
) -> LaunchResult:
    """Run one `hpsearch worker` per plan and wait for all; Ctrl-C stops them all cleanly.

    Each worker gets this process's environment with `env` over it (what the workers must
    share but not show in `ps`, such as the storage URL), then its own placement.

    Workers start in their own sessions so that a terminal's Ctrl-C reaches them once, from here:
    each gets SIGINT, marks its running trial interrupted (queued again) and exits. A second
    Ctrl-C, or `grace` seconds, kills the rest; their trials are recovered by the next worker.
    """
    started = time.monotonic()
    procs = []
    for plan in plans:
        command = [sys.executable, "-m", "hpsearch", "worker", *worker_args]
        procs.append(subprocess.Popen(command, env=worker_env(plan, {**os.environ, **(env or {})}),
                                      start_new_session=True))
    interrupted = False
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt as e:
        interrupted = True
        # Pass on the signal the launcher got, so the workers' trials name it.
        _stop(procs, grace, e.signal_name if isinstance(e, Interrupted) else "SIGINT")
    return LaunchResult([p.returncode for p in procs], interrupted, time.monotonic() - started)


def _stop(procs: Sequence[subprocess.Popen[bytes]], grace: float, signal_name: str) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.Signals[signal_name])
    deadline = time.monotonic() + grace
    try:
        for proc in procs:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        logger.warning("killing workers that did not stop; their trials are recovered later")
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
