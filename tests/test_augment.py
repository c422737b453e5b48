"""Crop-and-flip augmentation on the device: its distribution, its identity, where it applies."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from scipy import stats

from hpsearch.analysis.rerun import rerun_trial
from hpsearch.cli import main
from hpsearch.config import TrainConfig
from hpsearch.data import Split, Splits, load_raw, make_splits
from hpsearch.errors import ConfigError
from hpsearch.search.storage import open_storage
from hpsearch.training import evaluate, stackable_key, train, train_population
from hpsearch.training.augment import crop_flip, for_epoch

CPU = torch.device("cpu")
LENET = TrainConfig(dataset="mnist", model="lenet5", optimizer="adam", lr=3e-3, batch_size=32,
                    epochs=3, augment="crop_flip")


@pytest.fixture(scope="module")
def tiny_mnist(mnist_dir: Path) -> Splits:
    return make_splits(load_raw("mnist", mnist_dir), name="mnist", val_fraction=0.1, split_seed=0)


def _recover(n: int, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment n copies of an image with one lit pixel and read each shift and flip off it."""
    size, row, col = 20, 10, 4  # unflipped, the pixel lands in columns 0..8; flipped, in 11..19
    x = torch.zeros(n, 1, size, size)
    x[:, 0, row, col] = 1.0
    crops = for_epoch([TrainConfig(augment="crop_flip", augment_pad=pad)], n,
                      [torch.Generator().manual_seed(0)], device=CPU, stacked=False)
    assert crops is not None
    out = crops(x, 0, n)
    assert out.shape == x.shape and torch.all(out.sum(dim=(1, 2, 3)) == 1)  # the pixel stays in
    where = out[:, 0].flatten(1).argmax(dim=1)
    i, j = where // size, where % size
    flipped = j > size // 2
    j = torch.where(flipped, size - 1 - j, j)
    return row - i, col - j, flipped  # out(i, j) = x(i + dy, j + dx)


def test_flips_happen_at_rate_one_half() -> None:
    n = 20_000
    _, _, flipped = _recover(n, pad=4)
    assert stats.binomtest(int(flipped.sum()), n, 0.5).pvalue > 1e-3
    assert 0.48 < flipped.float().mean() < 0.52


def test_crops_cover_every_offset_uniformly() -> None:
    n, pad = 20_000, 4
    dy, dx, _ = _recover(n, pad=pad)
    assert dy.min() == dx.min() == -pad and dy.max() == dx.max() == pad
    cells = ((dy + pad) * (2 * pad + 1) + dx + pad).bincount(minlength=(2 * pad + 1) ** 2)
    assert len(cells) == 81 and cells.min() > 0
    assert stats.chisquare(cells.numpy()).pvalue > 1e-3  # each (dy, dx) with frequency 1/81


def test_offset_zero_without_flip_is_the_image_and_matches_torchvision() -> None:
    tf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.randn(6, 3, 32, 32)
    zero = torch.zeros(6, 2, dtype=torch.long)
    assert torch.equal(crop_flip(x, zero, torch.zeros(6, dtype=torch.bool), pad=4), x)
    shifts = torch.tensor([[0, 0], [-4, 4], [4, -4], [1, 2], [-3, 0], [2, -1]])
    flips = torch.tensor([True, False, True, False, True, True])
    out = crop_flip(x, shifts, flips, pad=4)
    for image, (dy, dx), flip, ours in zip(x, shifts.tolist(), flips.tolist(), out):
        # RandomCrop(32, padding=4) with top/left 4 + shift, then RandomHorizontalFlip.
        theirs = tf.crop(tf.pad(image, [4]), 4 + dy, 4 + dx, 32, 32)
        assert torch.equal(ours, tf.hflip(theirs) if flip else theirs)


def test_augmented_lenet5_trains_and_evaluation_is_untouched(tiny_mnist: Splits) -> None:
    result = train(LENET, tiny_mnist, device=CPU)
    plain = train(LENET.replace(augment="none"), tiny_mnist, device=CPU)
    assert result.history_dict()["train_loss"] != plain.history_dict()["train_loss"]
    # Flips mirror some classes' patches onto others' (see conftest), so the bound is 4x chance.
    assert result.final.val_accuracy > 0.4
    # The recorded validation loss is that of the clean split: evaluation never augments.
    assert result.final.val_loss == pytest.approx(
        evaluate(result.model, tiny_mnist.val, "cross_entropy", 10).loss, rel=1e-6)


def test_stacked_members_draw_their_own_crops_and_match_single_runs(tiny_mnist: Splits) -> None:
    small = Splits(tiny_mnist.name, Split(tiny_mnist.train.x[:128], tiny_mnist.train.y[:128]),
                   tiny_mnist.val, None, tiny_mnist.classes)
    base = LENET.replace(epochs=2)
    configs = [base, base.replace(seed=1, augment_pad=2), base.replace(seed=2, augment="none")]
    assert len({stackable_key(c) for c in configs}) == 1  # augment does not split a stack
    for config, result in zip(configs, train_population(configs, small, device=CPU)):
        alone = train(config, small, device=CPU)
        ours, theirs = result.history_dict(), alone.history_dict()
        for name in ("train_loss", "val_loss", "val_accuracy"):
            assert ours[name] == pytest.approx(theirs[name], rel=1e-5, abs=1e-6), name


def test_bad_augmentation_is_refused_with_the_fix(iris_splits: Splits) -> None:
    with pytest.raises(ConfigError, match="unknown augment 'crop'; valid names: none, crop_flip"):
        TrainConfig(augment="crop")
    with pytest.raises(ConfigError, match="augment_pad=-1 is not valid"):
        TrainConfig(augment_pad=-1)
    with pytest.raises(ConfigError, match=r"not \(channels, height, width\); set augment='none'"):
        train(TrainConfig(dataset="iris", augment="crop_flip"), iris_splits, device=CPU)
    digits = make_splits(load_raw("digits"), name="digits", val_fraction=0.1, split_seed=0)
    with pytest.raises(ConfigError, match="8x8 images of 'digits'; choose a padding under 8"):
        train(TrainConfig(augment="crop_flip", augment_pad=8), digits, device=CPU)
    # A config stored before the fields existed loads with augmentation off.
    old = {k: v for k, v in TrainConfig().to_dict().items() if not k.startswith("augment")}
    assert TrainConfig.from_dict(old).augment == "none"


AUGMENTED_STUDY = '''"""LeNet-5 with crops and flips."""
from hpsearch.config import TrainConfig

BASE = TrainConfig(dataset="mnist", model="lenet5", batch_size=64, epochs=2, augment="crop_flip")
TRIALS = 2
PRUNER = "none"


def suggest(trial, base):
    return base.replace(lr=trial.suggest_float("lr", 1e-3, 1e-2, log=True),
                        augment_pad=trial.suggest_int("augment_pad", 1, 4))
'''


def test_a_stored_augmented_trial_reruns_exactly(tmp_path: Path, mnist_dir: Path) -> None:
    module = tmp_path / "augmented.py"
    module.write_text(AUGMENTED_STUDY)
    url = f"sqlite:///{tmp_path / 'a.db'}"
    made = CliRunner().invoke(main, ["run", str(module), "--storage", url, "--device", "cpu",
                                     "--data-dir", str(mnist_dir)])
    assert made.exit_code == 0, made.output
    study = optuna.load_study(study_name="augmented",
                              storage=open_storage(url, heartbeat=None).storage)
    for trial in study.trials:
        rerun = rerun_trial(study, trial.number, device=CPU, data_dir=mnist_dir)
        assert rerun.config.augment == "crop_flip"
        assert rerun.value == rerun.stored_value is not None
        assert rerun.max_epoch_difference == 0.0
