"""TargetSearcher without Ray's runtime: phases, warm start, constraints, failures, restore."""

import math

import optuna
import pytest
from ray.tune.search import Searcher

from orchestrator.searcher import CONSTRAINT, TargetSearcher, measured, phase_budgets
from search_spaces import SpaceContext, get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
CTX = SpaceContext(max_epochs=4, ref_eps=0.1)


def make(tmp_path, budget=6, targets=(0.6, 0.8), storage=True):
    url = f"sqlite:///{tmp_path / 'optuna.db'}" if storage else None
    return TargetSearcher(get_space("acert"), CTX, targets, budget, study_prefix="s", storage=url, seed=0)


def fake_result(config):
    """A deterministic stand-in measurement of a config (the searcher only sees numbers)."""
    acc = 0.95 - config["kappa_final"] * 0.5
    return {"val_acc": acc, "val_acr": config["max_eps"] * (1 - acc)}


def test_phase_budgets_split_evenly():
    assert phase_budgets(7, 3) == [3, 2, 2]
    assert phase_budgets(3, 3) == [1, 1, 1]
    assert sum(phase_budgets(64, 5)) == 64


def test_measured_rejects_missing_and_non_finite():
    assert measured({"val_acc": 0.5, "val_acr": 0.1}, "val_acr") == (0.5, 0.1)
    assert measured({"val_acc": 0.5, "val_acr": math.nan}, "val_acr") is None
    assert measured({"val_acc": math.inf, "val_acr": 0.1}, "val_acr") is None
    assert measured({"val_acc": 0.5}, "val_acr") is None
    assert measured(None, "val_acr") is None


def test_targets_in_order_with_warm_start_and_constraints(tmp_path):
    s = make(tmp_path)
    configs = {}
    for i in range(3):  # phase 0: target 0.6
        configs[f"t{i}"] = s.suggest(f"t{i}")
        assert configs[f"t{i}"]["target"] == 0.6
    for i in range(2):
        s.on_trial_complete(f"t{i}", fake_result(configs[f"t{i}"]))
    configs["t3"] = s.suggest("t3")  # phase 1 starts: warm-started with the 2 finished trials
    assert configs["t3"]["target"] == 0.8
    high = s.studies[1]
    warm = [t for t in high.trials if t.user_attrs.get("warm_start")]
    assert sorted(t.user_attrs["ray_trial_id"] for t in warm) == ["t0", "t1"]
    for t in warm:  # constraint recomputed against the higher target
        acc = fake_result(configs[t.user_attrs["ray_trial_id"]])["val_acc"]
        assert t.constraints[CONSTRAINT] == pytest.approx(0.8 - acc)
    s.on_trial_complete("t2", fake_result(configs["t2"]))  # a late lower-target trial still counts
    assert len([t for t in high.trials if t.user_attrs.get("warm_start")]) == 3
    low = s.studies[0].trials
    assert [t.state for t in low] == [optuna.trial.TrialState.COMPLETE] * 3
    assert low[0].constraints[CONSTRAINT] == pytest.approx(0.6 - fake_result(configs["t0"])["val_acc"])
    for i in (4, 5):
        s.suggest(f"t{i}")
    assert s.suggest("t6") == Searcher.FINISHED
    assert s.n_suggested == 6


def test_failed_and_nan_trials_are_fail_in_optuna(tmp_path):
    s = make(tmp_path, budget=4, targets=(0.5,))
    for i in range(3):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", None, error=True)
    s.on_trial_complete("t1", {"val_acc": 0.9, "val_acr": math.nan})
    s.on_trial_complete("t2", {"val_acc": 0.9, "val_acr": 0.05})
    s.on_trial_complete("t2", {"val_acc": 0.1, "val_acr": 9.0})  # a replay is ignored
    states = [t.state for t in s.studies[0].trials]
    F, C = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE
    assert states == [F, F, C]
    assert s.studies[0].best_trial.value == 0.05


def test_restore_continues_and_closes_orphans(tmp_path):
    s = make(tmp_path, budget=6)
    cfg0 = s.suggest("t0")
    s.suggest("t1")
    s.on_trial_complete("t0", fake_result(cfg0))
    s.save(str(tmp_path / "searcher.pkl"))
    s.suggest("t2")  # asked after the checkpoint: Ray never recorded it
    s.on_trial_complete("t1", {"val_acc": 0.7, "val_acr": 0.01})  # finished after the checkpoint

    r = TargetSearcher.__new__(TargetSearcher)  # as Ray rebuilds it: unpickled, then restore()
    r.restore(str(tmp_path / "searcher.pkl"))
    study = r.studies[0]
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.get_trials()}
    assert by_ray["t2"].state == optuna.trial.TrialState.FAIL  # orphan closed
    assert by_ray["t1"].state == optuna.trial.TrialState.COMPLETE  # storage was ahead: kept
    r.on_trial_complete("t1", {"val_acc": 0.7, "val_acr": 0.01})  # Ray replays it: no double tell
    assert r.n_suggested == 2
    assert r.suggest("t3")["target"] == 0.6
    assert len(study.get_trials()) == 4


def test_in_memory_storage_survives_pickling(tmp_path):
    s = make(tmp_path, storage=False)
    cfg = s.suggest("a")
    s.on_trial_complete("a", fake_result(cfg))
    s.save(str(tmp_path / "p.pkl"))
    r = TargetSearcher.__new__(TargetSearcher)
    r.restore(str(tmp_path / "p.pkl"))
    assert [t.user_attrs["ray_trial_id"] for t in r.studies[0].trials] == ["a"]


def test_targets_must_increase(tmp_path):
    with pytest.raises(ValueError, match="strictly increasing"):
        make(tmp_path, targets=(0.8, 0.6))
