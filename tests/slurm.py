"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd from Debian's
`slurm-wlm` and `munge`, configured in a temporary folder (this host as the one node, with its
real CPU count and memory; process tracking by /proc, so no cgroups), started and stopped by the
`Cluster` context manager.

`make test` installs the packages where they are missing, so CI runs these tests; a plain
`pytest` on a machine without them fails them with the command that installs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

import pytest

COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")
INSTALL = "apt-get install slurm-wlm munge"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(root: Path, node: str) -> str:
    memory_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    return "\n".join([
        "ClusterName=hpsearchtest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={root}/munge/socket",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
        # No cgroups: processes are tracked through /proc, tasks are not confined.
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none", "MpiDefault=none", "MailProg=/bin/true",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "ReturnToService=2",
        "KillWait=30",  # Slurm's default: SIGTERM, then SIGKILL 30 s later
        # As on many clusters: only jobs submitted with --requeue are requeued, preempted ones
        # included (Slurm's default would requeue any batch job).
        "JobRequeue=0",
        (f"NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} "
         "State=UNKNOWN"),
        # Up to 3 one-CPU tasks share each core, so a 3-task array runs at once on 2 cores. A
        # job of `urgent` preempts those of `test`, which go back in the queue (if they allow it).
        "PreemptType=preempt/partition_prio", "PreemptMode=REQUEUE",
        (f"PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP "
         "OverSubscribe=FORCE:3 PriorityTier=1"),
        (f"PartitionName=urgent Nodes={node} MaxTime=INFINITE State=UP OverSubscribe=NO "
         "PriorityTier=2 PreemptMode=OFF"),
        "",
    ])


class Cluster:
    """munged, slurmctld and slurmd of a cluster configured under `root`; `env` has SLURM_CONF
    for the client commands (sbatch, squeue, scancel, scontrol)."""

    def __init__(self, root: Path) -> None:
        missing = [c for c in COMMANDS if shutil.which(c) is None]
        if missing:
            pytest.fail(f"Slurm is not installed ({', '.join(missing)} missing): `make test` "
                        f"installs it ({INSTALL})")
        if os.geteuid() != 0:
            pytest.fail("the Slurm test runs slurmd, which starts jobs, as root (SlurmdUser=root); "
                        "run the suite as root")
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def __enter__(self) -> Self:
        for folder in ("munge", "state", "spool"):
            (self.root / folder).mkdir(mode=0o755, parents=True, exist_ok=True)
        key = self.root / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        (self.root / "slurm.conf").write_text(_config(self.root, self.node))
        munge = self.root / "munge"
        # --force: munged refuses to run as root otherwise (Slurm's daemons run as root here).
        self._run("munged", "--force", f"--key-file={key}", f"--socket={munge}/socket",
                  f"--pid-file={munge}/pid", f"--log-file={munge}/log", f"--seed-file={munge}/seed")
        try:
            self._run("slurmctld", "-c", "-i")  # a clean state: no jobs from an earlier run
            self._run("slurmd", "-N", self.node)
            self._wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T"), "the node to be idle")
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def run(self, *args: str) -> str:
        """A client command's output; it must succeed."""
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}{self.logs()}"
        return result.stdout

    def logs(self) -> str:
        return "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}"
                       for p in sorted(self.root.glob("*.log")))

    def jobs(self) -> dict[str, str]:
        """Each job (array task: JOB_TASK) in the controller's memory, with its state."""
        out = self.run("squeue", "-h", "-t", "all", "-r", "-o", "%i %T")
        return dict(line.split() for line in out.splitlines() if line.strip())

    def _run(self, *args: str) -> None:
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 0, f"{args[0]} did not start: {result.stderr}{self.logs()}"

    def _wait(self, predicate, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}{self.logs()}"
            time.sleep(0.2)

    def _stop(self) -> None:
        """Cancel what still runs (its processes get SIGTERM, then SIGKILL), then the daemons."""
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.run("scancel", "--user=root")
            with contextlib.suppress(AssertionError):
                self._wait(lambda: not any(s in ("RUNNING", "COMPLETING")
                                           for s in self.jobs().values()), "jobs to end", 40)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.root / pid_file).read_text()), signal.SIGTERM)

