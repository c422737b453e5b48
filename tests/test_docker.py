"""docker/ cannot be built here (no registry access); check that it matches the code it ships."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from hpsearch.cli import main

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def test_dockerfile_copies_files_that_exist() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    sources = [s for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE) for s in line.split()[:-1]]
    assert sources and all((DOCKER.parent / s).exists() for s in sources), sources
    assert 'ENTRYPOINT ["hpsearch"]' in text


def test_compose_runs_real_commands_and_keeps_the_dashboard_on_loopback() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "dashboard", "worker"}
    assert services["worker"]["command"][0] in main.commands
    assert services["dashboard"]["command"][0] in main.commands
    assert all(p.startswith("127.0.0.1:") for p in services["dashboard"]["ports"])
    for name in ("dashboard", "worker"):
        assert services[name]["environment"]["HPSEARCH_STORAGE"].startswith("postgresql+psycopg://")


def test_kubernetes_job_is_an_indexed_job_of_workers() -> None:
    job = yaml.safe_load((DOCKER / "k8s" / "worker-job.yaml").read_text())
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "worker" and "worker" in main.commands
    env = {e["name"] for e in container["env"]}
    assert {"HPSEARCH_STORAGE", "HPSEARCH_WORKER_INDEX"} <= env
