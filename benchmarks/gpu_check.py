"""`make gpu-check`: every GPU measurement of hpsearch in one command, each part in its own process.

    python3 benchmarks/gpu_check.py [--out DIR] [--device cuda|cpu] [--data-dir DIR]
                                    [--profile full|cpu|tiny] [--parts a,b,...] [--budget S]

Writes DIR/gpu-check.json and DIR/gpu-check.md (default ./gpu-check/) after every part, so a
run stopped half-way leaves what it measured. Each part runs as `gpu_check_parts.py PART` (the
GPU tests as `pytest -m gpu`) under its own timeout, capped by what is left of the whole run's
budget (450 s on a GPU, so the run ends inside 8 minutes); a part that hangs is killed with its
process group and the next one starts. Without CUDA (and no `--device cpu`) it says so in one
line and exits 2. On a machine without optuna and the other dependencies it installs the wheels
that `make gpu-wheels` put in .whl/ into a folder of its own first (no network needed).
This file itself needs only the standard library.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from gpu_check_report import render

ROOT = Path(__file__).resolve().parent.parent
ROW = "GPU_CHECK_ROW"
# What hpsearch imports that a bare GPU machine (python3 with torch, numpy, scipy, sklearn) lacks.
NEEDED = ("optuna", "sqlalchemy", "alembic", "colorlog", "cmaes", "plotly", "optuna_dashboard",
          "psycopg")
DATA_DIRS = (ROOT / ".gpu-data" / "fashion-mnist", ROOT.parent / "shared" / "data" / "fashion-mnist",
             Path("/usr/share/datasets/fashion-mnist"))
PARTS = {  # name: timeout in seconds on a GPU, in the order they run
    "env": 60, "gpu-tests": 150, "notebook": 150, "single": 60, "bf16": 60, "compile": 120,
    "stacked": 150, "stacked-fused": 120, "study": 180, "update": 90, "lenet5": 90, "alexnet": 90,
}
PROFILES: dict[str, dict] = {
    # The sizes: Fashion-MNIST 54k/6k, 20 epochs, stacks of 64 and 256, a 256-trial study.
    "full": {"epochs": 20, "populations": [64, 256], "fused_populations": [256],
             "study_trials": 256, "study_population": 256, "cnn_epochs": 1, "lenet_stack": 64,
             "alexnet_images": 50000, "alexnet_stack": 8, "update_sizes": [8, 64, 256],
             "update_params": 545810, "update_seconds": 1.0, "train_images": 0, "budget": 450,
             "timeout_scale": 1},
    # `make gpu-check DEVICE=cpu`: the same parts, small enough for a CPU (about 10 minutes).
    "cpu": {"epochs": 2, "populations": [4, 8], "fused_populations": [8], "study_trials": 8,
            "study_population": 8, "cnn_epochs": 1, "lenet_stack": 4, "alexnet_images": 512,
            "alexnet_stack": 2, "update_sizes": [8, 64, 256], "update_params": 20000,
            "update_seconds": 0.5, "train_images": 6000, "budget": 3000, "timeout_scale": 10,
            "threads": 1},
    # The default suite's check of this script (tests/test_gpu_check.py) on synthetic IDX files.
    "tiny": {"epochs": 1, "populations": [2], "fused_populations": [2], "study_trials": 2,
             "study_population": 2, "cnn_epochs": 1, "lenet_stack": 2, "alexnet_images": 64,
             "alexnet_stack": 2, "update_sizes": [2], "update_params": 1000,
             "update_seconds": 0.05, "train_images": 0, "budget": 600, "timeout_scale": 5,
             "threads": 1},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--device", default="cuda", help="cuda (the point) or cpu (reduced run)")
    parser.add_argument("--data-dir", type=Path, help="Fashion-MNIST's four IDX files (.gz or not); "
                        f"default: the first of {', '.join(map(str, DATA_DIRS))} that has them")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="sizes: full on CUDA, cpu on the CPU by default")
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts, comma-separated")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (profile's default)")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if unknown := [p for p in parts if p not in PARTS]:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    site = _ensure_packages()
    if args.device.startswith("cuda") and not _cuda_available():
        print("gpu-check: no CUDA device here; run `make gpu-check DEVICE=cpu` for the reduced CPU "
              "run", file=sys.stderr)
        return 2
    profile = args.profile or ("full" if args.device.startswith("cuda") else "cpu")
    sizes = PROFILES[profile]
    data_dir = args.data_dir or next((d for d in DATA_DIRS if _has_idx(d)), None)
    if data_dir is None or not _has_idx(data_dir):
        print(f"gpu-check: no Fashion-MNIST IDX files in {data_dir or ' or '.join(map(str, DATA_DIRS))}; "
              "pass --data-dir, or run `make gpu-data` here and carry .gpu-data", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        if sizes["train_images"]:
            data_dir = _cut_idx(data_dir, Path(tmp) / "data", sizes["train_images"])
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HPSEARCH_DOWNLOAD": "0",
               "HPSEARCH_DATA_DIR": str(Path(tmp) / "cache"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), site,
                                                           os.environ.get("PYTHONPATH")]))}
        report = {"profile": profile, "device": args.device, "data_dir": str(data_dir),
                  "sizes": sizes, "budget_s": args.budget or sizes["budget"],
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "parts": []}
        _run_parts(parts, report, env, args.out, data_dir)
    failed = [p["name"] for p in report["parts"] if p["status"] != "ok"]
    print(f"gpu-check: wrote {args.out / 'gpu-check.md'} and gpu-check.json; "
          + (f"not ok: {', '.join(failed)}" if failed else "every part ok"))
    return 1 if failed else 0


def _run_parts(parts: list[str], report: dict, env: dict[str, str], out: Path, data_dir: Path) -> None:
    started = time.monotonic()
    sizes = report["sizes"]
    for name in parts:
        left = report["budget_s"] - (time.monotonic() - started)
        timeout = min(PARTS[name] * sizes["timeout_scale"], left)
        if timeout < 3:
            record = {"name": name, "status": "not run: the budget was spent", "rows": []}
        elif name == "gpu-tests":
            record = _gpu_tests(env, out, timeout)
        else:
            record = _child(name, [sys.executable, str(ROOT / "benchmarks" / "gpu_check_parts.py"),
                                   name, "--device", report["device"], "--data-dir", str(data_dir),
                                   "--sizes", json.dumps(sizes)], env, timeout)
        report["parts"].append(record)
        report["wall_s"] = time.monotonic() - started
        print(f"gpu-check: {name}: {record['status']} ({record.get('wall_s', 0):.0f} s)", flush=True)
        (out / "gpu-check.json").write_text(json.dumps(report, indent=2))
        try:
            markdown = render(report)
        except Exception as e:  # noqa: BLE001 - the JSON holds every number; never lose a run to this
            markdown = f"# gpu-check\n\nrendering failed ({e!r}); read gpu-check.json\n"
        (out / "gpu-check.md").write_text(markdown)


def _child(name: str, cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    """Run one part in its own process group; its rows, status and error tail."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the part and anything it started
        out, err = proc.communicate()
        status = f"timeout after {timeout:.0f} s"
    rows = [json.loads(line[len(ROW):]) for line in out.splitlines() if line.startswith(ROW)]
    return {"name": name, "status": status, "timeout_s": round(timeout), "rows": rows,
            "wall_s": time.monotonic() - started,
            "log_tail": "" if status == "ok" else (out[-1500:] + "\n" + err[-3000:]).strip()}


def _gpu_tests(env: dict[str, str], out: Path, timeout: float) -> dict:
    """`pytest -m gpu` on tests/test_gpu.py; the counts and failures from its JUnit XML."""
    xml = out / "gpu-tests.xml"
    xml.unlink(missing_ok=True)
    record = _child("gpu-tests", [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py",
                                  "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"], env, timeout)
    if record["status"] == "failed (exit 1)":
        record["status"] = "ok"  # exit 1 is "some tests failed": counted below, not a crash
    if xml.is_file():
        top = ET.parse(xml).getroot()
        suite = top.find("testsuite") if top.tag == "testsuites" else top
        assert suite is not None
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failures = [f"{case.get('name')}: {(problem.get('message') or '').splitlines()[0][:300]}"
                    for case in suite.iter("testcase") for problem in case
                    if problem.tag in ("failure", "error")]
        record["rows"] = [{"group": "gpu-tests", **counts, "failed": failures}]
        if counts["failures"] or counts["errors"]:
            record["status"] = f"{counts['failures'] + counts['errors']} test(s) failed"
    return record


def _ensure_packages() -> str:
    """The folder holding the carried wheels' packages, installed there if missing; "" if none."""
    if not [m for m in NEEDED if importlib.util.find_spec(m) is None]:
        return ""
    site = Path(tempfile.gettempdir()) / "hpsearch-gpu-site"
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        sys.exit(f"gpu-check: {', '.join(m for m in NEEDED if importlib.util.find_spec(m) is None)} "
                 "not installed and no wheels in .whl/; run `make gpu-wheels` where pip reaches "
                 "PyPI and carry .whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
                    *map(str, wheels)], check=True)
    return str(site)


def _cuda_available() -> bool:
    code = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0


def _idx_file(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _has_idx(folder: Path) -> bool:
    return _idx_file(folder, "train-images-idx3-ubyte") is not None


def _cut_idx(source: Path, dest: Path, n: int) -> Path:
    """The first `n` training images (and at most `n // 6` test images) as plain IDX files."""
    dest.mkdir(parents=True)
    for prefix, count in (("train", n), ("t10k", max(n // 6, 1))):
        for kind, header in (("images-idx3", 16), ("labels-idx1", 8)):
            name = f"{prefix}-{kind}-ubyte"
            path = _idx_file(source, name)
            if path is None:
                raise SystemExit(f"gpu-check: {name}(.gz) not found in {source}")
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            dims = list(struct.unpack(f">{(header - 4) // 4}I", data[4:header]))
            keep = min(count, dims[0])
            record = len(data[header:]) // dims[0]
            dims[0] = keep
            (dest / name).write_bytes(data[:4] + struct.pack(f">{len(dims)}I", *dims)
                                      + data[header : header + keep * record])
    return dest


if __name__ == "__main__":
    sys.exit(main())
