"""gpu-check.md from gpu-check.json's report: environment, GPU tests, timings, update, targets."""

from __future__ import annotations

# The issue's targets on one H100, checked against a full-size run: (b') at least 40x (a);
# (c) 0.15 s per trial or less at 256; (d) under 2 minutes; accuracy within 0.5 points of (a).
TARGET_COMPILE_RATIO = 40.0
TARGET_STACK_256_S = 0.15
TARGET_STUDY_S = 120.0
TARGET_ACCURACY_POINTS = 0.5


def render(report: dict) -> str:
    rows = [row | {"part": p["name"]} for p in report["parts"] for row in p["rows"]]
    lines = [f"# gpu-check: profile {report['profile']}, device {report['device']}", "",
             (f"Started {report['started']}; {report.get('wall_s', 0):.0f} s of the "
              f"{report['budget_s']:.0f} s budget so far. Data: {report['data_dir']}."), ""]
    lines += _environment(next((r for r in rows if r["group"] == "env"), None))
    lines += _gpu_tests(next((r for r in rows if r["group"] == "gpu-tests"), None))
    lines += _timings([r for r in rows if r["group"] in ("hinton", "lenet5", "alexnet")])
    lines += _updates([r for r in rows if r["group"] == "update"])
    if report["profile"] == "full":
        lines += _targets([r for r in rows if r["group"] == "hinton"])
    lines += ["## Parts", "", "| part | status | wall s | timeout s |", "| --- | --- | --- | --- |"]
    lines += [f"| {p['name']} | {p['status']} | {p.get('wall_s', 0):.0f} | {p.get('timeout_s', '-')} |"
              for p in report["parts"]]
    for part in report["parts"]:
        if part.get("log_tail"):
            lines += ["", f"### {part['name']}: end of its output", "", "```", part["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def _environment(env: dict | None) -> list[str]:
    if env is None:
        return ["Environment: not measured (the env part did not run).", ""]
    where = (f"{env['gpu']} ({env['gpu_memory_gib']} GiB, {env['multiprocessors']} SMs), "
             f"driver {env['driver']}" if "gpu" in env else f"CPU {env['cpu']}")
    return [(f"{where}; torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
             f"Python {env['python']}, {env['cpu_threads']} CPU threads."), ""]


def _gpu_tests(tests: dict | None) -> list[str]:
    lines = ["## GPU tests (`pytest -m gpu`)", ""]
    if tests is None:
        return lines + ["Not run, or no result (see Parts).", ""]
    passed = tests["tests"] - tests["failures"] - tests["errors"] - tests["skipped"]
    lines.append(f"{passed} passed, {tests['failures']} failed, {tests['errors']} errors, "
                 f"{tests['skipped']} skipped.")
    return lines + [f"- FAILED {line}" for line in tests["failed"]] + [""]


def _timings(rows: list[dict]) -> list[str]:
    lines = ["## Seconds per trial", "",
             ("`vs (a)`: how many times faster than the group's notebook loop (AlexNet: than "
              "its single path). AlexNet trains on random images, so its accuracy is chance."), "",
             "| model | variant | s/trial | val acc | vs (a) | peak GPU MiB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        base = next((r for r in rows if r["group"] == row["group"]
                     and r["variant"].startswith("(a)" if row["group"] != "alexnet" else "(b)")), None)
        ratio = f"{base['s_per_trial'] / row['s_per_trial']:.1f}x" if base else "-"
        acc = f"{row['val_accuracy']:.4f}" if row["val_accuracy"] is not None else "-"
        peak = f"{row['peak_gpu_mib']:.0f}" if row["peak_gpu_mib"] is not None else "-"
        lines.append(f"| {row['group']} | {row['variant']} | {row['s_per_trial']:.3f} | {acc} | "
                     f"{ratio} | {peak} |")
    return lines + [""]


def _updates(rows: list[dict]) -> list[str]:
    lines = ["## Stacked optimizer update, ms per step", "",
             "| kind | K | P | eager | fused | eager/fused | fused compile s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['kind']} | {r['k']} | {r['params']:,} | {r['eager_ms']:.2f} | "
              f"{r['fused_ms']:.2f} | {r['eager_ms'] / max(r['fused_ms'], 1e-9):.2f}x | "
              f"{r['compile_s']:.1f} |" for r in rows]
    return lines + [""]


def _targets(rows: list[dict]) -> list[str]:
    """Each target: met, missed, or not measured (its row is missing)."""
    by = {r["variant"]: r for r in rows}
    notebook = by.get("(a) notebook: DataLoader + ToTensor")
    compiled = by.get("(b') single path, --compile")
    stack = by.get("(c) stack of 256") or by.get("(c) stack of 256, fused update (--compile)")
    fused = by.get("(c) stack of 256, fused update (--compile)")
    study = next((r for v, r in by.items() if v.startswith("(d)")), None)
    checks = []
    if notebook and compiled:
        ratio = notebook["s_per_trial"] / compiled["s_per_trial"]
        checks.append((f"(b') at least {TARGET_COMPILE_RATIO:.0f}x (a)", f"{ratio:.1f}x",
                       ratio >= TARGET_COMPILE_RATIO))
    best = min((r for r in (stack, fused) if r), key=lambda r: r["s_per_trial"], default=None)
    if best:
        checks.append((f"(c) at 256: {TARGET_STACK_256_S} s/trial or less",
                       f"{best['s_per_trial']:.3f} ({best['variant']})",
                       best["s_per_trial"] <= TARGET_STACK_256_S))
    if study:
        total = study["s_per_trial"] * study["trials"]
        checks.append((f"(d) under {TARGET_STUDY_S:.0f} s", f"{total:.0f} s", total < TARGET_STUDY_S))
    if notebook and notebook["val_accuracy"] is not None:
        for row in rows:
            if row is notebook or row["val_accuracy"] is None or row["variant"].startswith("(d)"):
                continue
            diff = 100 * (row["val_accuracy"] - notebook["val_accuracy"])  # above (a) is fine
            what = f"{row['variant']}: accuracy no more than {TARGET_ACCURACY_POINTS} points below (a)"
            checks.append((what, f"{diff:+.2f} points", diff >= -TARGET_ACCURACY_POINTS))
    lines = ["## The issue's targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {what} | {value} | {'yes' if ok else 'NO'} |" for what, value, ok in checks]
    return lines + ["", "A target with no row was not measured (see Parts).", ""]
