"""The final evaluation: exported configs, trained on the whole official training set with
several seeds and evaluated once on the official test set, which the search never loaded.

For each config and seed: test error and accuracy with a 95% Wilson interval (the test set is a
sample of examples), macro-F1 and the confusion matrix. Per config: the mean over seeds with a
95% t-interval (the seed is a sample of training runs). Between configs: McNemar's exact test
on the same test examples, each config represented by the plurality vote of its seeds (one
prediction per example, so the examples stay the independent units of the test; pooling the
seeds' predictions instead would count each example several times and overstate significance).
The p-values of all pairs are Holm-corrected; a pair whose corrected p-value is not below 0.05 is
reported as tied.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hpsearch.analysis.export import ExportedConfig, label_all
from hpsearch.analysis.final_objectives import (
    objective_record,
    objective_summary,
    objectives_table,
    search_values,
)
from hpsearch.analysis.stats import (
    ALPHA,
    CONFIDENCE,
    holm,
    mcnemar_paired,
    mean_std,
    plurality_vote,
    t_interval,
    wilson_interval,
)
from hpsearch.config import TrainConfig
from hpsearch.data import DataCache, DataPlace, Splits, check_same_data, describe_data
from hpsearch.search.provenance import RunRecord
from hpsearch.training import TrainResult, train

logger = logging.getLogger(__name__)

OnRun = Callable[[str, dict[str, Any]], None]
OnData = Callable[[str, dict[str, Any], str | None], None]  # label, provenance, note


def run_final(
    entries: Sequence[ExportedConfig],
    *,
    seeds: int,
    device: torch.device,
    data_dir: DataPlace = None,
    export_path: Path | None = None,
    on_run: OnRun | None = None,
    on_data: OnData | None = None,
    allow_other_data: bool = False,
) -> dict[str, Any]:
    """Train and test every entry with `seeds` seeds; the whole result as a JSON-ready dict.

    Seed k of a config is the config's own seed + k, so seed 0 repeats the trial's seed. An
    entry whose recorded data hash differs from the data loaded now is refused (DataError)
    unless `allow_other_data`.
    """
    data = DataCache(data_dir, device)
    # Where this evaluation runs, recorded as a trial's run record is (its config aside).
    here = RunRecord.here(device)
    labels = label_all(entries)
    configs = []
    test_labels: dict[str, list[int]] = {}
    for label, entry in zip(labels, entries):
        result = evaluate_config(entry, label=label, seeds=seeds, device=device, data=data,
                                 on_run=on_run, on_data=on_data, allow_other_data=allow_other_data,
                                 export_path=export_path)
        test_labels.setdefault(result["dataset"], result.pop("test_labels"))
        configs.append(result)
    return {
        "hpsearch_final": 1,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "export_file": str(export_path) if export_path else None,
        "export_sha256": _sha256(export_path) if export_path else None,
        "seeds": seeds,
        "confidence": CONFIDENCE,
        "device": here.device,
        "device_name": here.device_name,
        "host": here.worker.host,
        "versions": dict(here.versions),
        "method": {
            "per_seed_interval": "Wilson score interval for the test error (scipy binomtest)",
            "mean_interval": "Student t interval over the per-seed test errors (scipy ttest_1samp), "
                             "cut to [0, 1]",
            "comparison": "exact McNemar test (binomial on discordant examples) between the "
                          "plurality votes of each config's seeds, on the same test examples",
            "correction": f"Holm over all pairs; tied when the corrected p >= {ALPHA:.2f}",
        },
        "configs": configs,
        "comparisons": compare_configs(configs, test_labels),
        "test_labels": test_labels,
    }


def evaluate_config(
    entry: ExportedConfig,
    *,
    label: str,
    seeds: int,
    device: torch.device,
    data: DataCache,
    on_run: OnRun | None = None,
    on_data: OnData | None = None,
    allow_other_data: bool = False,
    export_path: Path | None = None,
) -> dict[str, Any]:
    config = entry.config
    splits = data.get(config.dataset, val_fraction=config.val_fraction,
                      split_seed=config.split_seed, final=True)
    assert splits.test is not None and splits.source is not None
    # Checked before any training: a run on other data would be hours spent on a wrong answer.
    note = check_same_data(
        entry.source.get("data"), splits.source, allow_other_data=allow_other_data,
        recorded_by=f"{label} in {export_path or 'the export file'}",
        fix="pass --data-dir with the data the study used",
    )
    if note:
        logger.warning("%s", note)
    if on_data is not None:
        on_data(label, splits.provenance(), note)
    runs = []
    for k in range(seeds):
        seeded = config.replace(seed=config.seed + k)
        result = train(seeded, splits, device=device, evaluate_test=True)
        here = RunRecord.of(seeded, device=device, study_module=entry.source.get("study_module"),
                            source_hash=entry.source.get("source_hash"))
        run = {"seed": seeded.seed, "epochs": len(result.history),
               "seconds": round(result.seconds, 3), "failure": result.failure,
               "rerun": _rerun_record(here, seeded, entry, splits),
               **_test_record(result, n_test=len(splits.test)),
               **objective_record(entry.source, result)}
        if result.test is None:
            logger.warning("%s seed %d failed: %s", label, seeded.seed, result.failure)
        runs.append(run)
        if on_run is not None:
            on_run(label, run)
    return {
        "label": label,
        "study": entry.study,
        "trial": entry.trial,
        "metric": entry.metric,
        "search_value": entry.value,
        "dataset": config.dataset,
        "data": splits.provenance(),
        "data_note": note,
        "n_test": len(splits.test),
        "config": config.to_dict(),
        "summary": summarise(runs, splits.test.y.tolist()),
        **({"search_values": values, "objectives": objective_summary(runs)}
           if (values := search_values(entry.source)) else {}),
        "runs": runs,
        "test_labels": splits.test.y.tolist(),
    }


def _rerun_record(
    here: RunRecord, config: TrainConfig, entry: ExportedConfig, splits: Splits
) -> dict[str, Any]:
    """What re-runs one seed of a final evaluation: a trial's run record, on the official split."""
    assert splits.test is not None
    return {
        "config": config.to_dict(),
        "dataset": here.dataset,
        "split": {"final": True, "train": "official training set",
                  "test": "official test set", "n_train": len(splits.train),
                  "n_test": len(splits.test)},
        "device": here.device,
        "device_name": here.device_name,
        "versions": dict(here.versions),
        "study": entry.study,
        "trial": entry.trial,
        "study_module": here.study_module,
        "source_hash": here.source_hash,
    }


def _test_record(result: TrainResult, *, n_test: int) -> dict[str, Any]:
    """One seed's test-set figures, with 95% Wilson intervals; {} for a failed seed."""
    test = result.test
    if test is None:
        return {}
    errors = n_test - sum(test.confusion[i][i] for i in range(len(test.confusion)))
    low, high = wilson_interval(errors, n_test)
    return {"errors": errors, "error": test.error, "error_ci": [low, high],
            "accuracy": test.accuracy, "accuracy_ci": [1.0 - high, 1.0 - low], "f1": test.f1,
            "loss": test.loss, "confusion": test.confusion, "predictions": test.predictions}


def summarise(runs: Sequence[dict[str, Any]], labels: Sequence[int]) -> dict[str, Any] | None:
    """Mean over the seeds that finished, with t-intervals, and the seeds' plurality vote."""
    ok = [r for r in runs if r.get("error") is not None]
    if not ok:
        return None
    errors = [r["error"] for r in ok]
    mean_error, std_error = mean_std(errors)
    ci = t_interval(errors, within=(0.0, 1.0))
    f1_mean, _ = mean_std([r["f1"] for r in ok])
    vote = plurality_vote([r["predictions"] for r in ok])
    vote_errors = sum(p != y for p, y in zip(vote, labels))
    confusion = torch.tensor([r["confusion"] for r in ok]).sum(dim=0).tolist()
    return {
        "seeds_ok": len(ok),
        "seeds_failed": len(runs) - len(ok),
        "mean_error": mean_error,
        "std_error": std_error,
        "error_t_ci": list(ci) if ci else None,
        "mean_accuracy": 1.0 - mean_error,
        "accuracy_t_ci": [1.0 - ci[1], 1.0 - ci[0]] if ci else None,
        "mean_f1": f1_mean,
        "vote_error": vote_errors / len(labels),
        "vote_error_ci": list(wilson_interval(vote_errors, len(labels))),
        "confusion_sum": confusion,  # over the seeds that finished; rows true, columns predicted
        "vote_predictions": vote,
    }


def compare_configs(
    configs: Sequence[dict[str, Any]], test_labels: dict[str, list[int]]
) -> list[dict[str, Any]]:
    """McNemar on every pair of configs tested on the same data set, Holm-corrected together."""
    pairs = []
    for a, b in itertools.combinations(configs, 2):
        if a["dataset"] != b["dataset"] or a["summary"] is None or b["summary"] is None:
            continue
        labels = test_labels[a["dataset"]]
        correct_a = [p == y for p, y in zip(a["summary"]["vote_predictions"], labels)]
        correct_b = [p == y for p, y in zip(b["summary"]["vote_predictions"], labels)]
        test = mcnemar_paired(correct_a, correct_b)
        pairs.append({"a": a["label"], "b": b["label"], "only_a_correct": test.only_a,
                      "only_b_correct": test.only_b, "p_value": test.p_value})
    for pair, adjusted in zip(pairs, holm([p["p_value"] for p in pairs])):
        pair["p_holm"] = adjusted
        if adjusted >= ALPHA:
            pair["verdict"] = "tied"
        else:
            pair["verdict"] = f"{pair['a'] if pair['only_a_correct'] > pair['only_b_correct'] else pair['b']} better"
    return pairs


def markdown(document: dict[str, Any]) -> str:
    """The short tables printed after a final run and written beside the JSON."""
    configs = sorted(
        document["configs"],
        key=lambda c: c["summary"]["mean_error"] if c["summary"] else float("inf"),
    )
    best = configs[0]["label"] if configs and configs[0]["summary"] else None
    verdicts = {frozenset((p["a"], p["b"])): p for p in document["comparisons"]}
    lines = [
        (f"Test error over {document['seeds']} seed(s) per config, {document['device_name']}; "
         "95% intervals: t over seeds for the mean, Wilson for each seed and for the seeds' vote."),
        "",
        *(f"Data of {c['label']}: {describe_data(c.get('data'))}"
          + (f" ({c['data_note']})" if c.get("data_note") else "") for c in configs),
        "",
        ("| config | data | search value | test error: mean (95% t-CI) | per seed | macro-F1 "
         "| vote error (95% Wilson) | vs best (Holm) |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(_config_row(c, best=best, verdicts=verdicts) for c in configs),
        "", "| config | seed | test error (95% Wilson) | accuracy | macro-F1 | epochs | s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(_seed_row(c, r) for c in configs for r in c["runs"]),
        *objectives_table(configs),
    ]
    if document["comparisons"]:
        lines += ["", "| pair | only A right | only B right | McNemar p | Holm p | verdict |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for p in document["comparisons"]:
            lines.append(f"| {p['a']} vs {p['b']} | {p['only_a_correct']} | {p['only_b_correct']} "
                         f"| {p['p_value']:.3g} | {p['p_holm']:.3g} | {p['verdict']} |")
    return "\n".join(lines) + "\n"


def _config_row(
    c: dict[str, Any], *, best: str | None, verdicts: dict[frozenset[Any], dict[str, Any]]
) -> str:
    """A config's line of the summary table: its mean over seeds and how it compares to the best."""
    pct = _pct
    s = c["summary"]
    search = f"{c['metric']} {c['search_value']:.4f}" if c["search_value"] is not None else "-"
    if s is None:
        return f"| {c['label']} | {c['dataset']} | {search} | all seeds failed | | | | |"
    mean = pct(s["mean_error"])
    if s["error_t_ci"]:
        mean += f" ({pct(s['error_t_ci'][0])}-{pct(s['error_t_ci'][1])})"
    per_seed = ", ".join(pct(r["error"]) if r.get("error") is not None else "failed"
                         for r in c["runs"])
    vote = f"{pct(s['vote_error'])} ({pct(s['vote_error_ci'][0])}-{pct(s['vote_error_ci'][1])})"
    if c["label"] == best:
        versus = "best"
    else:
        pair = verdicts.get(frozenset((c["label"], best)))
        versus = "-" if pair is None else (
            f"tied (p={pair['p_holm']:.3g})" if pair["verdict"] == "tied"
            else f"{pair['verdict']} (p={pair['p_holm']:.3g})")
    return (f"| {c['label']} | {c['dataset']} | {search} | {mean} | {per_seed} "
            f"| {s['mean_f1']:.4f} | {vote} | {versus} |")


def _seed_row(c: dict[str, Any], r: dict[str, Any]) -> str:
    """One seed's line of the per-seed table."""
    if r.get("error") is None:
        return (f"| {c['label']} | {r['seed']} | failed: {r['failure']} | | | "
                f"{r['epochs']} | {r['seconds']:.1f} |")
    pct = _pct
    return (f"| {c['label']} | {r['seed']} | {pct(r['error'])} ({pct(r['error_ci'][0])}-"
            f"{pct(r['error_ci'][1])}) | {r['accuracy']:.4f} | {r['f1']:.4f} | {r['epochs']} "
            f"| {r['seconds']:.1f} |")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
