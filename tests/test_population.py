"""Population training: the stacked optimizer, stacked trials against single ones, the worker."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.config import TrainConfig
from hpsearch.data import Split, Splits, load_raw, make_splits
from hpsearch.errors import ConfigError
from hpsearch.search.registry import load_study
from hpsearch.search.settings import resolve_settings
from hpsearch.search.storage import open_storage
from hpsearch.search.study import open_study
from hpsearch.search.worker import WorkerOptions, run_worker
from hpsearch.training import (
    EpochRecord,
    RunInfo,
    StackedOptimizer,
    TrainResult,
    build_optimizer,
    many,
    stackable_key,
    train,
    train_many,
    train_population,
)

CPU = torch.device("cpu")
BASE = TrainConfig(dataset="digits", hidden=(32, 16), batch_size=64, epochs=3)


@pytest.fixture(scope="module")
def digits() -> Splits:
    return make_splits(load_raw("digits"), name="digits", val_fraction=0.1, split_seed=0)


def _members(optimizer: str) -> list[TrainConfig]:
    """Three members that differ in every per-member hyperparameter the stack supports."""
    sgd = optimizer == "sgd"
    return [
        BASE.replace(optimizer=optimizer, seed=0, lr=0.05 if sgd else 1e-3),
        BASE.replace(optimizer=optimizer, seed=1, lr=0.1 if sgd else 3e-3, weight_decay=1e-3,
                     dropout=0.3, momentum=0.9 if sgd else 0.0, beta1=0.8),
        BASE.replace(optimizer=optimizer, seed=2, lr=0.02 if sgd else 1e-2, l1=1e-4, dropout=0.1,
                     schedule="step", step_size=1, gamma=0.5, beta2=0.99, init="he_normal"),
    ]


# The fused update compiles once per kind and step variant (about 5-50 s each on two CPU cores).
FUSED = [False, pytest.param(True, marks=pytest.mark.slow)]


@pytest.mark.parametrize("fused", FUSED, ids=["eager", "fused"])
@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd", "sgd-nesterov"])
def test_stacked_optimizer_matches_torch_optim(kind: str, fused: bool) -> None:
    torch.manual_seed(0)
    optimizer = kind.split("-")[0]
    configs = [
        TrainConfig(optimizer=optimizer, lr=lr, weight_decay=wd, beta1=b1, beta2=b2,
                    momentum=mom if optimizer == "sgd" else 0.0, nesterov=kind == "sgd-nesterov")
        for lr, wd, b1, b2, mom in [(1e-2, 0.0, 0.9, 0.999, 0.9), (3e-3, 1e-3, 0.8, 0.99, 0.5),
                                    (0.1, 0.05, 0.5, 0.9, 0.3)]
    ]
    flat = torch.randn(len(configs), 50)
    flat_start = flat.clone()
    reference = [torch.nn.Parameter(row.clone()) for row in flat]
    single = [build_optimizer([p], c) for p, c in zip(reference, configs)]
    stacked = StackedOptimizer(flat, configs, fused=fused)
    for _ in range(25):
        grad = torch.randn_like(flat)
        stacked.step(flat, grad.clone())  # the step consumes (overwrites) its gradient
        for p, opt, g in zip(reference, single, grad):
            p.grad = g.clone()
            opt.step()
    expected = torch.stack([p.detach() for p in reference])
    assert (expected - flat_start).abs().min() > 0  # every parameter moved
    torch.testing.assert_close(flat, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # compiles the fused Adam update once (about 5-50 s on two CPU cores)
def test_fused_update_compiles_once_for_every_stack_of_one_shape() -> None:
    torch._dynamo.reset()  # no compiled code of an earlier test's shapes to fall back on
    counters = torch._dynamo.utils.counters["stats"]
    configs = [TrainConfig(lr=lr, weight_decay=wd) for lr, wd in [(1e-2, 0.0), (3e-3, 1e-3)]]
    graphs = counters["unique_graphs"]
    for trial in range(3):  # three stacks of one shape, as a study's successive batches
        flat = torch.randn(2, 37)
        optimizer = StackedOptimizer(flat, configs, fused=True)
        for epoch in range(2):
            optimizer.set_lr([1e-2 / (epoch + 1), 3e-3])
            for _ in range(3):
                optimizer.step(flat, torch.randn_like(flat))
    assert counters["unique_graphs"] - graphs == 1
    assert torch.isfinite(flat).all()


def test_stacked_optimizer_refuses_mixed_kinds() -> None:
    with pytest.raises(ConfigError, match="one optimizer"):
        StackedOptimizer(torch.zeros(2, 3), [TrainConfig(), TrainConfig(optimizer="sgd")])


@pytest.mark.parametrize("forward", ["baddbmm", "vmap"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_population_matches_single_trials(optimizer: str, forward: str, digits: Splits) -> None:
    configs = _members(optimizer)
    stacked = train_population(configs, digits, device=CPU, forward=forward)
    for config, result in zip(configs, stacked):
        alone = train(config, digits, device=CPU)
        assert result.config == config and result.stop_reason == alone.stop_reason == "epochs"
        assert result.n_params == alone.n_params and result.best_epoch == alone.best_epoch
        ours, theirs = result.history_dict(), alone.history_dict()
        for name in ("train_loss", "val_loss", "val_accuracy", "val_f1", "lr"):
            assert ours[name] == pytest.approx(theirs[name], rel=1e-5, abs=1e-6), name
        # The member's model ends with the same weights as the single run's.
        for p, q in zip(result.model.parameters(), alone.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert max(r.final.val_accuracy for r in stacked) > 0.5  # ten classes: chance is 0.1


@pytest.fixture(scope="module")
def tiny_mnist(mnist_dir: Path) -> Splits:
    splits = make_splits(load_raw("mnist", mnist_dir), name="mnist", val_fraction=0.1, split_seed=0)
    return Splits(splits.name, Split(splits.train.x[:128], splits.train.y[:128]), splits.val,
                  None, splits.classes)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_lenet5_stack_matches_single_trials(optimizer: str, tiny_mnist: Splits) -> None:
    sgd = optimizer == "sgd"
    base = TrainConfig(dataset="mnist", model="lenet5", optimizer=optimizer, batch_size=64,
                       epochs=2, lr=0.05 if sgd else 1e-3)
    configs = [base, base.replace(seed=1, lr=0.1 if sgd else 3e-3, weight_decay=1e-3,
                                  momentum=0.9 if sgd else 0.0, l1=1e-4, init="xavier_uniform")]
    assert stackable_key(configs[0]) == stackable_key(configs[1]) is not None
    stacked = train_population(configs, tiny_mnist, device=CPU)
    for config, result in zip(configs, stacked):
        alone = train(config, tiny_mnist, device=CPU)
        ours, theirs = result.history_dict(), alone.history_dict()
        for name in ("train_loss", "val_loss", "val_accuracy", "lr"):
            assert ours[name] == pytest.approx(theirs[name], rel=1e-5, abs=1e-6), name
        # Adam's step is lr * sign-like for a weight whose gradient is near zero, so a
        # rounding-level difference in the batched convolutions can move one such weight by a
        # fraction of lr (seen: 1.6e-5 on 1 of 10,080, with one CPU thread); the histories
        # above stay within 1e-5.
        for p, q in zip(result.model.parameters(), alone.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)
    assert stacked[0].history[-1].train_loss != stacked[1].history[-1].train_loss


def test_alexnet_members_with_dropout_match_their_single_runs() -> None:
    cifar = make_splits(load_raw("tiny-cifar"), name="tiny-cifar", val_fraction=0.1, split_seed=0)
    small = Splits(cifar.name, Split(cifar.train.x[:48], cifar.train.y[:48]),
                   Split(cifar.val.x[:16], cifar.val.y[:16]), None, cifar.classes)
    # SGD: Adam's step normalises each gradient, so over 5.8M weights it turns rounding-level
    # differences of the batched convolutions into whole steps; SGD keeps them at rounding.
    base = TrainConfig(dataset="tiny-cifar", model="alexnet_cifar", optimizer="sgd", lr=0.01,
                       batch_size=16, epochs=1)
    configs = [base.replace(dropout=0.5), base.replace(seed=1, dropout=0.0, momentum=0.9)]
    for config, result in zip(configs, train_population(configs, small, device=CPU)):
        alone = train(config, small, device=CPU)
        assert result.history_dict()["train_loss"] == pytest.approx(
            alone.history_dict()["train_loss"], rel=1e-5)
        assert result.final.val_loss == pytest.approx(alone.final.val_loss, rel=1e-5)


def test_early_stopping_member_keeps_its_best_epoch(digits: Splits) -> None:
    # lr 0.5 with Adam overshoots: validation loss stops improving and patience 1 ends the run.
    configs = [BASE.replace(epochs=6, stopping="early", patience=1, lr=lr, seed=s)
               for s, lr in enumerate([3e-3, 0.3])]
    for result, config in zip(train_population(configs, digits, device=CPU), configs):
        alone = train(config, digits, device=CPU)
        assert (result.stop_reason, result.best_epoch, len(result.history)) == (
            alone.stop_reason, alone.best_epoch, len(alone.history))
        assert result.final.val_loss == pytest.approx(alone.final.val_loss, rel=1e-5)


def test_a_diverging_member_fails_alone(digits: Splits) -> None:
    configs = [BASE.replace(optimizer="sgd", seed=i, lr=1e6 if i == 1 else 0.05) for i in range(3)]
    results = train_population(configs, digits, device=CPU)
    assert results[1].failure is not None and "training loss became" in results[1].failure
    assert results[1].stop_reason == "diverged" and len(results[1].history) < 3
    for i in (0, 2):
        assert results[i].failure is None and len(results[i].history) == 3
        alone = train(configs[i], digits, device=CPU)
        assert results[i].history_dict()["val_loss"] == pytest.approx(
            alone.history_dict()["val_loss"], rel=1e-5)


def test_pruning_one_member_stops_only_it(digits: Splits) -> None:
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def on_epoch(member: int, record: EpochRecord) -> bool:
        seen[member].append(record.epoch)
        return member == 1 and record.epoch == 1

    results = train_population([BASE.replace(seed=s) for s in range(3)], digits, device=CPU,
                               on_epoch=on_epoch)
    assert seen == {0: [1, 2, 3], 1: [1], 2: [1, 2, 3]}
    assert results[1].stop_reason == "stopped" and len(results[1].history) == 1
    assert [r.stop_reason for r in (results[0], results[2])] == ["epochs", "epochs"]
    assert all(math.isfinite(r.final.val_loss) for r in results)


def test_train_many_stacks_same_shapes_and_keeps_the_order(digits: Splits) -> None:
    configs = [BASE.replace(epochs=2, seed=0), BASE.replace(epochs=2, optimizer="rmsprop"),
               BASE.replace(epochs=2, seed=2, lr=3e-3), BASE.replace(epochs=2, hidden=(8,))]
    started: dict[int, RunInfo] = {}
    results = train_many(configs, lambda config: digits, device=CPU,
                         on_start=lambda index, info: started.__setitem__(index, info))
    assert {i: info.population for i, info in started.items()} == {0: 2, 1: 1, 2: 2, 3: 1}
    for config, result in zip(configs, results):
        assert isinstance(result, TrainResult) and result.config == config
        alone = train(config, digits, device=CPU)
        assert result.history_dict()["val_loss"] == pytest.approx(
            alone.history_dict()["val_loss"], rel=1e-5)


def test_train_many_fails_one_member_alone_and_retries_a_stack_out_of_memory(
    digits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_third(index: int, info: RunInfo) -> None:
        if index == 2:
            raise RuntimeError("storage said no")

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("stack too large")

    monkeypatch.setattr(many, "train_population", out_of_memory)
    configs = [BASE.replace(epochs=1, seed=s) for s in range(3)]
    populations: list[int] = []
    results = train_many(configs, lambda config: digits, device=CPU,
                         on_start=lambda i, info: (refuse_third(i, info),
                                                   populations.append(info.population)))
    assert isinstance(results[2], RuntimeError) and "storage said no" in str(results[2])
    assert all(isinstance(r, TrainResult) for r in results[:2])
    # The two left were told again with the stack they train in (a trial's run record must
    # not say 3), which then ran out of memory, so each was told once more, alone.
    assert populations == [3, 3, 2, 2, 1, 1]


def test_stackable_key_groups_same_shapes_only() -> None:
    assert stackable_key(BASE.replace(lr=0.1, dropout=0.2, seed=4)) == stackable_key(BASE)
    assert stackable_key(BASE.replace(hidden=(32, 32))) != stackable_key(BASE)
    # The CNNs stack too (they have no batch norm); an MLP's widths do not shape them.
    lenet, alexnet = BASE.replace(model="lenet5"), BASE.replace(model="alexnet_cifar")
    assert None not in {stackable_key(lenet), stackable_key(alexnet)}
    assert len({stackable_key(lenet), stackable_key(alexnet), stackable_key(BASE)}) == 3
    assert stackable_key(lenet.replace(hidden=(8,), dropout=0.5)) == stackable_key(lenet)
    for unstackable in (BASE.replace(batch_norm=True), BASE.replace(optimizer="rmsprop"),
                        BASE.replace(batch_mode="sample")):
        assert stackable_key(unstackable) is None
    with pytest.raises(ConfigError, match="cannot train as one stack"):
        train_population([BASE, BASE.replace(hidden=(8,))], make_splits(
            load_raw("iris"), name="iris", val_fraction=0.2, split_seed=0), device=CPU)


def test_cli_population_run_finishes_exactly_the_budget(
    cli: CliRunner, sqlite_url: str, mnist_dir: Path
) -> None:
    args = ["run", "hinton_mlp", "--population", "4", "--trials", "6", "--epochs", "2",
            "--dataset", "fashion-mnist", "--data-dir", str(mnist_dir), "--storage", sqlite_url,
            "--device", "cpu", "--pruner", "none"]
    result = cli.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "ran 6 trials" in result.output
    trials = optuna.load_study(study_name="hinton_mlp", storage=sqlite_url).get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    # Asked four, then the two left in the budget; each batch trained as one stack.
    assert sorted(t.user_attrs["run"]["population"] for t in trials) == [2, 2, 4, 4, 4, 4]
    for trial in trials:
        history = trial.user_attrs["history"]
        assert len(history["val_error"]) == 2 == len(trial.intermediate_values)
        assert trial.value == pytest.approx(history["val_error"][-1])
        assert trial.user_attrs["config"]["seed"] == trial.number
        assert trial.user_attrs["result"]["outcome"] == "complete"
    assert min(t.value for t in trials) < 0.5  # ten classes: chance error is 0.9
    # Running again with a larger budget resumes and adds exactly the difference.
    more = cli.invoke(main, [*args[:5], "7", *args[6:]])
    assert more.exit_code == 0 and "ran 1 trials" in more.output, more.output


class _PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1


def test_population_worker_prunes_members_one_by_one(
    sqlite_url: str, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hpsearch.search.study.make_pruner", lambda settings: _PruneTrialOne())
    settings = resolve_settings(load_study("hinton_mlp"), dataset="fashion-mnist", epochs=3,
                                data_dir=mnist_dir)
    handle = open_storage(sqlite_url)
    study = open_study(handle, settings)
    report = run_worker(handle, settings, WorkerOptions(trials=3, population=3, device=CPU))
    assert [o.outcome for o in report.outcomes] == ["complete", "pruned", "complete"]
    trials = study.get_trials()
    assert [len(t.intermediate_values) for t in trials] == [3, 1, 3]
    assert trials[1].state == TrialState.PRUNED and trials[1].user_attrs["run"]["population"] == 3
    assert trials[1].user_attrs["result"]["reason"] == "pruned after epoch 1"


def test_population_worker_gives_the_one_at_a_time_results(tmp_path: Path) -> None:
    """Same sampler seed, same trials: stacking changes the speed, not the study's values."""
    values = {}
    for k in (1, 3):
        settings = resolve_settings(load_study("hinton_mlp"), dataset="digits", epochs=2,
                                    sampler="random", pruner="none", study_name=f"k{k}")
        handle = open_storage(f"sqlite:///{tmp_path / f'k{k}.db'}")
        run_worker(handle, settings, WorkerOptions(trials=3, population=k, device=CPU, sampler_seed=0))
        trials = optuna.load_study(study_name=f"k{k}", storage=handle.storage).trials
        values[k] = [(t.params, t.value) for t in trials]
    assert [p for p, _ in values[1]] == [p for p, _ in values[3]]
    for (_, alone), (_, stacked) in zip(values[1], values[3]):
        assert stacked == pytest.approx(alone, abs=1.5 / 180)  # at most one of 180 val images
