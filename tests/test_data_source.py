"""The data a trial trains on is the data the user named, and every record says which it was.

The user's sequence from issue 9: a 1,000-image subset in folder A, a bigger set in folder B,
one shared unpack cache. Before the fix, everything after the first run trained on A.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from hpsearch.cli import main
from hpsearch.data import DataDirs, load_raw
from tests.conftest import write_idx

RUN = ["run", "quickstart", "--dataset", "fashion-mnist", "--trials", "1", "--epochs", "1",
       "--pruner", "none"]
STUDY = "quickstart-fashion-mnist"


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("HPSEARCH_DATA_DIR", str(tmp_path / "cache"))  # one cache for both
    a = write_idx(tmp_path / "A", n_train=1000, n_test=500)
    b = write_idx(tmp_path / "B", n_train=2000, n_test=700)
    return a, b


def _ok(cli: CliRunner, args: list[str]) -> str:
    result = cli.invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output


def _refused(cli: CliRunner, args: list[str]) -> str:
    result = cli.invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.output.count("Error:") == 1 and "Traceback" not in result.output
    return result.output


def _trials(url: str) -> int:
    return len(optuna.load_study(study_name=STUDY, storage=url).trials)


def test_run_final_and_rerun_on_folder_b_use_b_after_a_run_on_folder_a(
    cli: CliRunner, folders: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = folders
    url_a, url_b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    _ok(cli, [*RUN, "--data-dir", str(a), "--storage", url_a])
    assert "train 900, val 100" in _ok(cli, ["status", STUDY, "--storage", url_a])

    _ok(cli, [*RUN, "--data-dir", str(b), "--storage", url_b])
    status = _ok(cli, ["status", STUDY, "--storage", url_b])
    assert f"folder {b}" in status and "train 1800, val 200" in status
    trial = optuna.load_study(study_name=STUDY, storage=url_b).trials[0]
    assert trial.user_attrs["run"]["data"]["sizes"] == {"train": 1800, "val": 200, "test": None}
    assert trial.user_attrs["run"]["data"]["location"] == str(b)

    export = tmp_path / "b.yaml"
    _ok(cli, ["export", STUDY, "--storage", url_b, "-o", str(export)])
    out = tmp_path / "final.json"
    final = _ok(cli, ["final", str(export), "--seeds", "1", "--data-dir", str(b), "-o", str(out)])
    assert "train 2000, test 700" in final
    assert "train 2000, test 700" in out.with_suffix(".md").read_text()

    rerun = _ok(cli, ["rerun", STUDY, "0", "--storage", url_b, "--data-dir", str(b)])
    assert rerun.count("train 1800, val 200") == 2  # stored and now
    assert "(identical)" in rerun

    # The other way round, each on the data it did not record: refused, with both sides named.
    for args in (
        [*RUN, "--data-dir", str(b), "--storage", url_a, "--trials", "2"],
        ["final", str(export), "--seeds", "1", "--data-dir", str(a), "-o", str(out)],
        ["rerun", STUDY, "0", "--storage", url_b, "--data-dir", str(a)],
    ):
        message = _refused(cli, args)
        assert str(a) in message and str(b) in message and "--allow-other-data" in message
        assert message.count("sha256") == 2
    assert _trials(url_a) == 1
    assert "train 2000, test 700" in out.with_suffix(".md").read_text()  # not overwritten


def test_allow_other_data_resumes_says_so_and_status_counts_the_trial(
    cli: CliRunner, folders: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = folders
    url = f"sqlite:///{tmp_path / 'a.db'}"
    _ok(cli, [*RUN, "--data-dir", str(a), "--storage", url])
    _ok(cli, [*RUN, "--data-dir", str(b), "--storage", url, "--trials", "2", "--allow-other-data"])
    # A warning on the console (the CLI logs warnings to stderr), naming both sides.
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("going on because of --allow-other-data" in w and str(a) in w and str(b) in w
               for w in warnings), warnings
    assert _trials(url) == 2
    assert "1 trial(s) ran on other data" in _ok(cli, ["status", STUDY, "--storage", url])
    report = tmp_path / "report.html"
    _ok(cli, ["report", STUDY, "--storage", url, "-o", str(report)])
    assert f"folder {a} (sha256" in report.read_text() and "train 900, val 100" in report.read_text()
    # Exporting the two together puts a trial on other data beside the rest: refused too.
    _refused(cli, ["export", STUDY, "--storage", url, "--top", "2", "-o", str(tmp_path / "x.yaml")])
    assert not (tmp_path / "x.yaml").exists()


def test_a_changed_file_under_the_same_path_is_caught(
    cli: CliRunner, folders: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = folders
    url = f"sqlite:///{tmp_path / 'a.db'}"
    _ok(cli, [*RUN, "--data-dir", str(a), "--storage", url])
    labels = a / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[-1] = (content[-1] + 1) % 10  # one test label changed
    before = labels.stat()
    labels.write_bytes(gzip.compress(bytes(content)))
    # In one process (as here) the hash is reused while path, inode, size and mtime stay.
    os.utime(labels, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    message = _refused(cli, [*RUN, "--data-dir", str(a), "--storage", url, "--trials", "2"])
    assert message.count(f"folder {a}") == 2
    assert _trials(url) == 1


def test_cache_entries_are_named_by_content_and_built_in_sets_have_a_fingerprint(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = folders

    def dirs(folder: Path) -> DataDirs:  # the fixture's cache, as the CLI would pass it
        return DataDirs(data_dir=folder, cache_dir=tmp_path / "cache", download=False)

    raw_a, raw_b = load_raw("mnist", dirs(a)), load_raw("mnist", dirs(b))
    assert (len(raw_a.train_y), len(raw_b.train_y)) == (1000, 2000)
    assert raw_a.source and raw_b.source and raw_a.source.sha256 != raw_b.source.sha256
    entries = sorted(p.name for p in (tmp_path / "cache" / "MNIST").iterdir())
    assert entries == sorted([raw_a.source.sha256[:16], raw_b.source.sha256[:16]])
    # Same content, packaged differently (unpacked, in another folder): same fingerprint.
    plain = write_idx(tmp_path / "plain", n_train=1000, n_test=500, compress=False)
    assert load_raw("mnist", dirs(plain)).source.sha256 == raw_a.source.sha256  # type: ignore[union-attr]
    iris = load_raw("iris").source
    assert iris is not None and iris.kind == "built-in" and "load_iris" in iris.location
    assert load_raw("iris").source == iris
