"""Where a trial's checkpoint lies, which one a repeated trial resumes from, and when it goes.

With `--checkpoint-dir DIR`, a trial that trains alone saves itself after each epoch to
`DIR/<study>/trial-<number>.ckpt` (the training layer writes it: `training.RunCheckpoint`),
the header naming the study, the trial and its config's hash. A trial queued again after a
lost or interrupted worker (`storage.requeue`) carries the numbers of the attempts it repeats
(`storage.ATTR_REPEATS`); it trains with the first attempt's seed, so its config is theirs, and
resumes from the newest of their files that is usable. Its restored epochs are reported to it
as intermediate values and noted in its `resumed` attribute. Every file of the chain is removed
once the trial is complete, pruned or failed; an interrupted or taken-over trial keeps them for
the trial that repeats it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

import optuna

from hpsearch.errors import StudyError
from hpsearch.search.record import set_attrs
from hpsearch.training import CheckpointFile, EpochRecord, RunCheckpoint

logger = logging.getLogger(__name__)

ATTR_RESUMED = "resumed"  # trial user attribute: {"trial": N, "epoch": k} it resumed from
SUFFIX = ".ckpt"


def prepare_directory(directory: Path | str) -> Path:
    """Create the checkpoint folder if needed; a StudyError naming it when it is not writable."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".hpsearch-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise StudyError(
            f"--checkpoint-dir {str(directory)!r}: cannot write there ({e.strerror}); give a "
            "folder every worker can write (a shared file system for workers on several machines)"
        ) from e
    return directory


def checkpoint_file(directory: Path, study_name: str, number: int) -> CheckpointFile:
    path = directory / quote(study_name, safe="") / f"trial-{number}{SUFFIX}"
    return CheckpointFile(path, {"study": study_name, "trial": number})


def trial_checkpoint(directory: Path, trial: optuna.Trial, repeats: list[int], *,
                     metric: str) -> RunCheckpoint:
    """`trial` saves to its own file and resumes from those of the attempts it repeats, the
    newest first; once resumed, its restored epochs are reported to it (`metric`) and noted."""
    study_name = trial.study.study_name
    files = [checkpoint_file(directory, study_name, n) for n in reversed(repeats)]

    def on_resume(source: CheckpointFile, history: list[EpochRecord]) -> None:
        # The restored epochs belong to this trial's curve (the dashboard's, the pruner's).
        for record in history:
            trial.report(record.metric(metric), record.epoch)
        number = int(source.owner["trial"])
        set_attrs(trial, {ATTR_RESUMED: {"trial": number, "epoch": len(history)}})
        logger.info("trial %d resumes after epoch %d from the checkpoint of trial %d",
                    trial.number, len(history), number)

    return RunCheckpoint(save_to=checkpoint_file(directory, study_name, trial.number),
                         resume_from=files, on_resume=on_resume)


def remove_checkpoints(directory: Path, study_name: str, numbers: list[int]) -> None:
    """Remove the files of a finished trial and of the attempts it repeated."""
    for n in numbers:
        path = checkpoint_file(directory, study_name, n).path
        # With the temporary file of a worker killed while it wrote.
        for one in [path, *path.parent.glob(f".{path.name}.*.tmp")]:
            try:
                one.unlink(missing_ok=True)
            except OSError as e:
                logger.warning("cannot remove checkpoint %s: %s", one, e)
