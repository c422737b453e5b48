"""Damaged, unreadable or hostile data files end in one `Error:` line naming the file and the fix,
and leave the study, the data cache and everything outside the data folder as they were."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from hpsearch.cli import main
from hpsearch.data.files import extract_tar_safely
from tests.conftest import write_idx

STUDY = "quickstart-fashion-mnist"


def _truncate_gz(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])  # a download cut off
    return f"{path} is not a complete gzip file"


def _bad_magic(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = folder / "train-labels-idx1-ubyte.gz"
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(struct.pack(">I", 0x803) + content[4:]))  # images' magic
    return f"{path} is not a valid IDX file: magic number 0x00000803, expected 0x00000801"


def _short_idx(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = folder / "t10k-images-idx3-ubyte.gz"
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(content[:-784]))  # one image short of what the header says
    return f"{path} is not a valid IDX file: its header promises 100x28x28 values"


def _labels_disagree(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = folder / "t10k-labels-idx1-ubyte.gz"
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(struct.pack(">II", 0x801, 99) + content[8:107]))
    return "holds 100 images but " + str(path) + " holds 99 labels"


def _directory_in_place(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    (folder / "train-labels-idx1-ubyte").mkdir()
    return f"cannot read {folder / 'train-labels-idx1-ubyte'}: Is a directory"


def _unreadable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = folder / "train-images-idx3-ubyte.gz"
    path.chmod(0)
    return f"cannot read {path}: Permission denied; make it a readable file (e.g. chmod a+r {path})"


def _unwritable_cache(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    blocked = folder.parent / "blocked"
    blocked.write_text("a file where a folder of the cache should be\n")
    monkeypatch.setenv("HPSEARCH_DATA_DIR", str(blocked / "cache"))
    return (f"cannot write the data cache {blocked / 'cache' / 'FashionMNIST'}: Not a directory; "
            "set HPSEARCH_DATA_DIR to a writable folder")


FAULTS: dict[str, Callable[[Path, pytest.MonkeyPatch], str]] = {
    "truncated gzip": _truncate_gz,
    "wrong magic number": _bad_magic,
    "IDX shorter than its header": _short_idx,
    "images and labels disagree": _labels_disagree,
    "a directory in place of a file": _directory_in_place,
    "unreadable file": _unreadable,
    "unwritable cache folder": _unwritable_cache,
}


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its hash (a missing folder is empty)."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_a_bad_data_file_is_one_error_line_and_nothing_stored_changes(
    fault: str, cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("HPSEARCH_DATA_DIR", str(cache))
    good = write_idx(tmp_path / "good", n_train=300, n_test=100)
    bad = write_idx(tmp_path / "bad", n_train=300, n_test=100)
    db = tmp_path / "study.db"
    run = ["run", "quickstart", "--dataset", "fashion-mnist", "--trials", "1", "--epochs", "1",
           "--pruner", "none", "--storage", f"sqlite:///{db}"]
    assert cli.invoke(main, [*run, "--data-dir", str(good)]).exit_code == 0
    stored, cached = hashlib.sha256(db.read_bytes()).hexdigest(), _tree(cache)

    expected = FAULTS[fault](bad, monkeypatch)
    if fault == "unreadable file" and os.geteuid() == 0:
        # root reads a chmod-000 file anyway; make opening it fail as it does for anyone else.
        real_open = gzip.open

        def denied(filename: object, *args: object, **kwargs: object) -> object:
            if Path(str(filename)) == bad / "train-images-idx3-ubyte.gz":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(filename))
            return real_open(filename, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(gzip, "open", denied)
    result = cli.invoke(main, [*run, "--trials", "2", "--data-dir", str(bad)])

    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output and "Aborted" not in result.output
    assert expected in errors[0]
    assert "--data-dir" in errors[0] or "HPSEARCH_DATA_DIR" in errors[0]  # the fix
    assert hashlib.sha256(db.read_bytes()).hexdigest() == stored
    assert len(optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}").trials) == 1
    assert _tree(cache) == cached  # no partial or empty file left in the cache


def test_a_truncated_download_poisons_nothing_the_complete_file_then_works(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPSEARCH_DATA_DIR", str(tmp_path / "cache"))
    folder = write_idx(tmp_path / "data", n_train=300, n_test=100)
    images = folder / "train-images-idx3-ubyte.gz"
    complete = images.read_bytes()
    images.write_bytes(complete[:4000])
    run = ["run", "quickstart", "--dataset", "fashion-mnist", "--trials", "1", "--epochs", "1",
           "--data-dir", str(folder), "--storage", f"sqlite:///{tmp_path / 's.db'}"]
    assert "is not a complete gzip file" in cli.invoke(main, run).output
    images.write_bytes(complete)
    result = cli.invoke(main, run)
    assert result.exit_code == 0, result.output


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.mark.parametrize("python_filter", [True, False], ids=["data filter", "own member check"])
def test_a_crafted_cifar_archive_writes_nothing_outside_and_is_refused(
    python_filter: bool, cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not python_filter:  # as on Pythons before 3.10.12 / 3.11.4, which lack the data filter
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    folder = tmp_path / "data"
    folder.mkdir()
    _archive(folder / "cifar-10-python.tar.gz", {
        "cifar-10-batches-py/batches.meta": b"meta",
        "../escaped.txt": b"written outside the data folder",
    })
    result = cli.invoke(main, ["run", "quickstart", "--dataset", "cifar10", "--data-dir", str(folder),
                               "--trials", "1", "--storage", f"sqlite:///{tmp_path / 's.db'}"])
    assert result.exit_code == 1, result.output
    assert result.output.count("Error:") == 1
    assert f"{folder / 'cifar-10-python.tar.gz'} was refused" in result.output
    assert "its member '../escaped.txt'" in result.output
    assert "nothing was extracted" in result.output
    assert not (tmp_path / "escaped.txt").exists() and not (folder / "escaped.txt").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-python.tar.gz"]


def test_a_well_formed_archive_is_extracted_whole(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a.tar.gz", {"keep/one": b"1", "keep/sub/two": b"2"})
    extract_tar_safely(archive, tmp_path, keep="keep", fix="-")
    assert (tmp_path / "keep" / "sub" / "two").read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "keep"]
