"""TargetSearcher without Ray's runtime: target choice, sharing, outcomes, record, restore,
as the composed searcher (each part on its own: tests/test_search_parts.py)."""

import math
import pickle

import optuna
import pytest
from ray.tune.search import Searcher

from bench.search import stand_in
from bench.search_parts import fail_told_parts
from orchestrator.searcher import (
    CANCELLED,
    COMPLETE,
    CONSTRAINT,
    FAILED,
    PRUNED,
    RAY_ID,
    TargetSearcher,
    choose_target,
    classify,
    measured,
)
from search_spaces import SpaceContext, get_space
from trainers.metrics import DONE, EPOCH, VAL_ACC, VAL_ACR

optuna.logging.set_verbosity(optuna.logging.WARNING)
CTX = SpaceContext(max_epochs=4, ref_eps=0.1)
C, P, F = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL


def make(tmp_path=None, budget=12, targets=(0.6, 0.8), storage=None, **kw):
    return TargetSearcher(
        get_space("acert"), CTX, targets, budget, study_prefix="s", storage=storage, seed=0, **kw
    )


def result(acc, acr, epoch=4):
    return {VAL_ACC: acc, VAL_ACR: acr, EPOCH: epoch, DONE: True}


def finish(s, tid, config, acc, acr):
    s.on_trial_complete(tid, result(acc, acr, config["epochs"]))


def by_ray(study):
    return {t.user_attrs[RAY_ID]: t for t in study.get_trials(deepcopy=False)}


def test_measured_rejects_missing_and_non_finite():
    assert measured({"val_acc": 0.5, "val_acr": 0.1}, "val_acr") == (0.5, 0.1)
    assert measured({"val_acc": 0.5, "val_acr": math.nan}, "val_acr") is None
    assert measured({"val_acc": math.inf, "val_acr": 0.1}, "val_acr") is None
    assert measured({"val_acc": 0.5}, "val_acr") is None
    assert measured(None, "val_acr") is None


def test_classify_tells_stopped_from_finished_by_epochs_not_done():
    # Ray sets done=True on the last result of a trial its scheduler stopped: epochs decide
    assert classify(result(0.7, 0.1, epoch=2), False, 4) == (PRUNED, (0.7, 0.1), 2)
    assert classify(result(0.7, 0.1, epoch=4), False, 4) == (COMPLETE, (0.7, 0.1), 4)
    assert classify({VAL_ACC: 0.7, VAL_ACR: 0.1}, False, None)[0] == PRUNED  # no epoch, no done
    assert classify(result(0.7, 0.1), True, 4)[0] == FAILED  # raised
    assert classify(result(0.7, math.nan), False, 4)[0] == FAILED  # diverged
    assert classify(None, False, 4)[0] == CANCELLED  # removed by Ray before it ran


def test_choose_target_rule():
    # no feasible trial yet (and below its share): first, fewest in flight, then fewest given
    assert choose_target([True, False, False], [0, 2, 1], [9, 3, 3], share=10) == 2
    assert choose_target([False, False], [1, 1], [4, 3], share=10) == 1
    assert choose_target([False, False], [0, 0], [0, 0], share=10) == 0
    # all feasible: round robin on trials given, then fewest in flight
    assert choose_target([True, True, True], [0, 5, 0], [4, 3, 5], share=10) == 1
    assert choose_target([True, True], [2, 1], [4, 4], share=10) == 1
    # a target without a feasible trial past its share no longer comes first
    assert choose_target([True, False], [0, 0], [3, 10], share=10) == 0


def test_an_unreachable_target_does_not_take_the_budget():
    s = make(budget=30, targets=(0.6, 0.99))
    for i in range(30):
        cfg = s.suggest(f"t{i}")
        finish(s, f"t{i}", cfg, 0.7, 0.1)  # feasible for 0.6, never for 0.99
    assert s._given == [15, 15]


def test_all_targets_search_from_the_first_trial_under_concurrency():
    s = make(budget=9, targets=(0.6, 0.7, 0.8))
    configs = [s.suggest(f"t{i}") for i in range(6)]  # 6 in flight, none finished
    assert sorted(c["target"] for c in configs) == [0.6, 0.6, 0.7, 0.7, 0.8, 0.8]
    assert "search_phase" not in configs[0]


def test_budget_then_finished():
    s = make(budget=3)
    for i in range(3):
        assert isinstance(s.suggest(f"t{i}"), dict)
    assert s.suggest("t3") == Searcher.FINISHED
    assert s.n_suggested == 3


def test_trial_is_shared_only_where_feasible_or_nearly():
    s = make(targets=(0.6, 0.7, 0.8))
    cfg = {t: s.suggest(t) for t in ("a", "b", "c")}  # one per target
    assert [cfg[t]["target"] for t in "abc"] == [0.6, 0.7, 0.8]
    finish(s, "b", cfg["b"], 0.785, 0.3)  # meets 0.7 and 0.6; within the margin of 0.8
    finish(s, "a", cfg["a"], 0.65, 0.4)  # feasible for 0.6 only: not near 0.7 (margin 0.02)
    finish(s, "c", cfg["c"], 0.5, 0.45)  # infeasible everywhere: its own study only
    low, mid, high = (by_ray(st) for st in s.studies)
    assert set(low) == {"a", "b"} and set(mid) == {"b"} and set(high) == {"b", "c"}
    assert low["b"].constraints[CONSTRAINT] == pytest.approx(0.6 - 0.785)  # recomputed per target
    assert high["b"].constraints[CONSTRAINT] == pytest.approx(0.8 - 0.785)
    assert high["b"].user_attrs["shared_from"] == "0.7"
    assert high["c"].constraints[CONSTRAINT] == pytest.approx(0.3) and high["c"].value == 0.45


def test_a_copy_enters_another_study_only_into_its_good_group():
    """The good group (ceil(0.1 n) trials) must not grow with feasible-but-poor copies: a
    high-target trial is copied into the low study only while it would rank in its good group."""
    s = make(budget=60, targets=(0.6, 0.8))
    first = {f"t{i}": s.suggest(f"t{i}") for i in range(2)}  # one per target
    finish(s, "t1", first["t1"], 0.81, 0.1)  # the low study is empty: the copy enters
    finish(s, "t0", first["t0"], 0.61, 0.5)
    n_high = 1
    for i in range(2, 60):
        cfg = s.suggest(f"t{i}")
        if cfg["target"] == 0.6:  # ever better trials for the low target
            finish(s, f"t{i}", cfg, 0.61, 0.5 + 0.01 * i)
        else:  # feasible for both, weak for 0.6
            finish(s, f"t{i}", cfg, 0.81, 0.1)
            n_high += 1
    low = s.studies[0].trials
    copies = [t for t in low if t.user_attrs.get("shared_from") == "0.8"]
    # only the first: once the low study holds a better trial for each place in its good
    # group, the weak copies would only join the bad group (and grow the good group)
    assert [c.user_attrs[RAY_ID] for c in copies] == ["t1"] and n_high >= 5
    assert len(s.studies[1].trials) == n_high  # the high study holds all of its own


def test_stopped_trial_is_pruned_with_its_last_value_everywhere():
    s = make(targets=(0.6, 0.8))
    cfg = s.suggest("a")
    s.on_trial_complete("a", result(0.9, 0.2, epoch=cfg["epochs"] - 1))  # stopped one epoch short
    for study in s.studies:
        (t,) = study.trials
        assert t.state == P and t.intermediate_values == {cfg["epochs"] - 1: 0.2}
        assert t.constraints[CONSTRAINT] < 0


def test_failed_and_diverged_trials_are_the_worst_trial_of_every_study():
    s = make(targets=(0.6, 0.8))
    for i in range(3):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", None, error=True)
    s.on_trial_complete("t1", result(0.9, math.nan))
    s.on_trial_complete("t2", None)  # cancelled before it ran: FAIL, not shared
    for k, study in enumerate(s.studies):
        trials = by_ray(study)
        for tid in ("t0", "t1"):
            assert trials[tid].state == C and trials[tid].value == 0.0
            assert trials[tid].constraints[CONSTRAINT] == pytest.approx(s.targets[k])
    owner = next(st for st in s.studies if "t2" in by_ray(st))
    assert by_ray(owner)["t2"].state == F
    assert sum("t2" in by_ray(st) for st in s.studies) == 1
    s.on_trial_complete("t1", result(0.1, 9.0))  # a replay is ignored
    assert all(by_ray(st)["t1"].value == 0.0 for st in s.studies)


def lr_space(trial, ctx):
    """Two knobs: the larger the learning rate the better, until it diverges above 3e-3."""
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
        "kappa": trial.suggest_float("kappa", 0, 1),
        "epochs": 4,
    }


def lr_objective(cfg):
    if cfg["lr"] > 3e-3:
        return math.nan, math.nan
    return 0.9 - 0.3 * (1 - cfg["kappa"]), (1 - cfg["kappa"]) * math.log10(cfg["lr"] / 1e-4)


def test_sampler_learns_to_avoid_a_diverging_region():
    """The best configs sit at the edge of divergence (as learning rates often do). Told as
    the worst trial, a diverged one moves TPE away; told as FAIL, TPE ignores it and keeps
    proposing diverging configs (the previous design)."""

    shares = {}
    for name in ("worst", "fail"):
        diverged = 0
        for seed in range(3):
            s = TargetSearcher(
                lr_space, CTX, (0.7,), 40, study_prefix="d", seed=seed, **fail_told_parts(name)
            )
            for i in range(40):
                cfg = s.suggest(f"t{i}")
                acc, acr = lr_objective(cfg)
                s.on_trial_complete(f"t{i}", result(acc, acr))
                diverged += i >= 10 and math.isnan(acc)
        shares[name] = diverged / 90
    assert shares["fail"] > 0.8, shares  # stuck in the region: nothing learnt from a FAIL
    assert shares["worst"] < 0.45, shares  # the region is 51 % of the prior


def test_restore_replays_the_studies_and_suggests_as_the_original(tmp_path):
    space, ctx = get_space("acert"), SpaceContext(max_epochs=10, ref_eps=0.1)
    s = TargetSearcher(space, ctx, (0.65, 0.8), 40, study_prefix="r", seed=1)
    cfgs = {f"t{i}": s.suggest(f"t{i}") for i in range(14)}
    for i in range(12):  # t12, t13 stay in flight
        s.on_trial_complete(f"t{i}", result(*stand_in(cfgs[f"t{i}"]), cfgs[f"t{i}"]["epochs"]))
    s.save(str(tmp_path / "searcher.pkl"))
    later = s.suggest("t14")  # asked after the checkpoint: Ray never recorded it
    s.on_trial_complete("t12", result(*stand_in(cfgs["t12"]), 10))  # finished after the checkpoint

    r = TargetSearcher.__new__(TargetSearcher)  # as Ray rebuilds it: unpickled, then restore()
    r.restore(str(tmp_path / "searcher.pkl"))

    def view(study):  # what TPE sees, leaving out the two trials that differ by design
        return [
            (t.number, t.state, t.value, t.params, t.constraints)
            for t in study.trials
            if t.user_attrs[RAY_ID] not in ("t12", "t14")
        ]

    assert [view(st) for st in r.studies] == [view(st) for st in s.studies]
    assert all("t14" not in by_ray(st) for st in r.studies)  # gone, not left RUNNING
    assert r.n_suggested == 14
    assert r.suggest("t14") == later  # same sampler state, same studies: same suggestion
    r.on_trial_complete("t12", result(*stand_in(cfgs["t12"]), 10))  # Ray replays it: told once
    r.on_trial_complete("t12", result(0.1, 9.0, 10))
    (own,) = [
        st for st in r.studies if by_ray(st).get("t12") and "shared_from" not in by_ray(st)["t12"].user_attrs
    ]
    assert by_ray(own)["t12"].state == C and by_ray(own)["t12"].value == stand_in(cfgs["t12"])[1]


def test_checkpoint_holds_a_log_not_the_studies(tmp_path):
    s = make(budget=30)
    for i in range(30):
        cfg = s.suggest(f"t{i}")
        finish(s, f"t{i}", cfg, 0.55 + 0.01 * i, 0.1)
    s.save(str(tmp_path / "p.pkl"))
    with open(tmp_path / "p.pkl", "rb") as f:
        state = pickle.load(f)
    assert "_studies" not in state and len(state["_log"].records) == 30
    r = TargetSearcher.__new__(TargetSearcher)
    r.restore(str(tmp_path / "p.pkl"))
    assert [len(st.trials) for st in r.studies] == [len(st.trials) for st in s.studies]


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_storage_record_is_written_at_checkpoints_once(tmp_path, kind):
    url = str(tmp_path / "optuna.journal") if kind == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    s = make(budget=8, storage=url)
    cfgs = {f"t{i}": s.suggest(f"t{i}") for i in range(6)}
    for i in range(4):
        finish(s, f"t{i}", cfgs[f"t{i}"], 0.9, 0.1)
    record = s.record.studies()
    assert sum(len(st.trials) for st in record) == 0  # nothing written between checkpoints
    s.save(str(tmp_path / "p.pkl"))
    assert sorted(t.user_attrs[RAY_ID] for st in record for t in st.trials) == ["t0", "t1", "t2", "t3"]
    finish(s, "t4", cfgs["t4"], 0.9, 0.1)
    s.flush()  # the record gets ahead of the checkpoint (the driver then dies)
    record[0].add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING))  # an old orphan

    r = TargetSearcher.__new__(TargetSearcher)
    r.restore(str(tmp_path / "p.pkl"))
    finish(r, "t4", cfgs["t4"], 0.9, 0.1)  # Ray replays t4
    finish(r, "t5", cfgs["t5"], 0.9, 0.1)
    r.flush()
    ids = [t.user_attrs.get(RAY_ID) for st in r.record.studies() for t in st.trials]
    assert sorted(i for i in ids if i) == ["t0", "t1", "t2", "t3", "t4", "t5"]  # each once
    states = [t.state for st in r.record.studies() for t in st.trials]
    assert optuna.trial.TrialState.RUNNING not in states  # the orphan was closed


def test_a_failed_write_to_the_record_is_retried_without_duplicates(tmp_path, monkeypatch):
    s = make(budget=4, storage=str(tmp_path / "optuna.journal"))
    cfgs = {f"t{i}": s.suggest(f"t{i}") for i in range(4)}  # two per target
    for tid, cfg in cfgs.items():
        finish(s, tid, cfg, 0.9, 0.1)
    record = s.record.studies()
    monkeypatch.setattr(record[1], "add_trials", lambda trials: (_ for _ in ()).throw(OSError("disk full")))
    s.save(str(tmp_path / "p.pkl"))  # logged, not raised: the sweep goes on
    assert len(record[0].trials) == 2 and len(record[1].trials) == 0
    monkeypatch.undo()
    s.save(str(tmp_path / "p.pkl"))
    ids = sorted(t.user_attrs[RAY_ID] for st in s.record.studies() for t in st.trials)
    assert ids == ["t0", "t1", "t2", "t3"]


def test_pareto_mode_one_study_on_both_objectives(tmp_path):
    s = make(budget=10, targets=(0.6, 0.8), search="pareto", storage=str(tmp_path / "optuna.journal"))
    cfgs = {f"t{i}": s.suggest(f"t{i}") for i in range(6)}
    assert {c["target"] for c in cfgs.values()} == {0.6}  # the loosest: it counts for every target
    finish(s, "t0", cfgs["t0"], 0.85, 0.2)
    s.on_trial_complete("t1", result(0.7, 0.3, epoch=cfgs["t1"]["epochs"] - 1))  # stopped early
    s.on_trial_complete("t2", None, error=True)
    s.on_trial_complete("t3", result(math.nan, 0.3))
    (study,) = s.studies
    trials = by_ray(study)
    assert trials["t0"].values == [0.85, 0.2] and trials["t1"].state == P
    assert trials["t2"].values == [0.0, 0.0] and trials["t3"].values == [0.0, 0.0]  # the worst point
    assert s.best_feasible() == [0.3, 0.2]  # a stopped trial is a real model too
    s.save(str(tmp_path / "p.pkl"))
    r = TargetSearcher.__new__(TargetSearcher)
    r.restore(str(tmp_path / "p.pkl"))
    assert [(t.number, t.state, t.values) for t in r.studies[0].trials] == [
        (t.number, t.state, t.values) for t in study.trials
    ]
    assert r.suggest("t6") == s.suggest("t6")
    (record,) = r.record.studies()
    assert record.study_name == "s-pareto" and len(record.trials) == 4


def test_old_checkpoints_are_refused_with_a_reason(tmp_path):
    with open(tmp_path / "old.pkl", "wb") as f:
        pickle.dump({"_studies": [], "_finished": {}}, f)
    r = TargetSearcher.__new__(TargetSearcher)
    with pytest.raises(ValueError, match="older TargetSearcher"):
        r.restore(str(tmp_path / "old.pkl"))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        make(targets=(0.8, 0.6))
    with pytest.raises(ValueError, match="budget=0"):
        make(budget=0)
