"""PenalisedASHA: rungs per target, stopping only trials dominated for every target they can
reach; and, through Ray, stopped trials reaching Optuna as PRUNED."""

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from orchestrator.pareto import penalised_score
from orchestrator.scheduler import PenalisedASHA, milestones
from trainers.metrics import DONE, EPOCH, VAL_ACC, VAL_ACR

STOP, GO = TrialScheduler.STOP, TrialScheduler.CONTINUE
TARGETS = (0.65, 0.8)


def asha(**kw):
    return PenalisedASHA(max_epochs=10, grace_epochs=1, ref_eps=0.1, penalty=10, targets=TARGETS, **kw)


def trial(tid, target):
    return SimpleNamespace(trial_id=tid, config={"target": target})


def report(s, t, acc, acr, epoch=1):
    return s.on_trial_result(None, t, {EPOCH: epoch, VAL_ACC: acc, VAL_ACR: acr})


def test_milestones_follow_asha():
    assert milestones(1, 10, 2) == [1, 2, 4, 8]
    assert milestones(2, 10, 3) == [2, 6]
    assert milestones(5, 5, 2) == []
    with pytest.raises(ValueError, match="grace_epochs"):
        PenalisedASHA(max_epochs=3, grace_epochs=4, ref_eps=0.1, penalty=10)


def test_feasible_high_target_trial_survives_where_one_ranking_stops_it():
    """Issue #10, point 3: low-target trials set the bar; a feasible high-target trial has a
    lower ACR by nature. Ray's ASHA on the penalised score stops it; per-target rungs do not."""
    low = [(f"l{i}", 0.66, 0.04 + 0.002 * i) for i in range(6)]  # ACR ~0.05: score ~0.5
    high = ("h", 0.81, 0.02)  # meets 0.8 and 0.65, score 0.2

    ray_asha = AsyncHyperBandScheduler(
        time_attr=EPOCH, metric="score", mode="max", max_t=10, grace_period=1, reduction_factor=2
    )
    ours = asha()
    for tid, acc, acr in low:
        t = trial(tid, 0.65)
        ray_asha.on_trial_add(None, t)
        score = penalised_score(acr, acc, target=0.65, ref_eps=0.1, penalty=10)
        ray_asha.on_trial_result(None, t, {EPOCH: 1, "score": score})
        report(ours, t, acc, acr)
    t = trial("h", 0.8)
    ray_asha.on_trial_add(None, t)
    score = penalised_score(high[2], high[1], target=0.8, ref_eps=0.1, penalty=10)
    assert ray_asha.on_trial_result(None, t, {EPOCH: 1, "score": score}) == STOP
    assert report(ours, t, high[1], high[2]) == GO
    assert set(ours._rungs[0.8][1]) == {"h"} and "h" in ours._rungs[0.65][1]  # competes for both


def test_stopped_only_when_dominated_for_every_target_it_reaches():
    s = asha()
    for i in range(4):  # the 0.65 rung: scores ~0.6
        report(s, trial(f"l{i}", 0.65), 0.66, 0.06)
    for i in range(4):  # the 0.8 rung: scores ~0.1-0.25
        report(s, trial(f"h{i}", 0.8), 0.81, 0.01 + 0.005 * i)
    # a 0.65 trial weak for 0.65 but with accuracy 0.85: it competes for 0.8 and leads there
    assert report(s, trial("x", 0.65), 0.85, 0.04) == GO
    # weak for 0.65 and infeasible (far) for 0.8: only its own target counts
    assert report(s, trial("y", 0.65), 0.70, 0.03) == STOP
    # weak for both targets it reaches
    assert report(s, trial("z", 0.65), 0.85, 0.005) == STOP
    # an 0.8 trial that misses 0.8 by a lot but is good for 0.65 continues; a weak one stops
    assert report(s, trial("w", 0.8), 0.70, 0.05) == GO
    assert report(s, trial("v", 0.8), 0.70, 0.01) == STOP


def test_each_rung_judges_a_trial_once_and_figures_are_needed():
    s = asha()
    for i in range(3):
        report(s, trial(f"l{i}", 0.65), 0.66, 0.06)
    t = trial("n", 0.65)
    assert report(s, t, float("nan"), float("nan")) == STOP  # diverged: -inf
    t = trial("m", 0.65)
    assert report(s, t, 0.66, 0.07, epoch=1) == GO
    assert report(s, t, 0.66, 0.0, epoch=1) == GO  # same rung again: not judged twice
    assert s.on_trial_result(None, t, {EPOCH: 3, VAL_ACC: 0.66}) == GO  # no ACR: no judgement
    assert report(s, t, 0.66, 0.01, epoch=3) == GO  # the epoch-2 rung is empty so far
    assert "m" in s._rungs[0.65][2]
    s.on_trial_complete(None, t, {EPOCH: 3, VAL_ACC: 0.66, VAL_ACR: 0.01})
    assert "m" not in s._passed


def test_targets_seen_in_configs_get_rungs():
    s = PenalisedASHA(max_epochs=4, grace_epochs=1, ref_eps=0.1, penalty=10)
    report(s, trial("a", 0.7), 0.75, 0.05)
    assert list(s._rungs) == [0.7] and s.metric == VAL_ACR
    assert "0.7" in s.debug_string()


# --- through Ray Tune -----------------------------------------------------------------
def _trainable(config):
    """Reports (val_acc, val_acr) per epoch; the trainer's ``done`` on its last epoch."""
    from ray import tune

    for epoch in range(1, config["epochs"] + 1):
        acc = 0.9 - 0.3 * (1 - config["kappa"]) * config["max_eps"] / 0.1 * epoch / config["epochs"]
        acr = 0.02 * epoch * config["lr"] * 1e3 * (1 - config["kappa"])
        tune.report({EPOCH: epoch, VAL_ACC: acc, VAL_ACR: acr, DONE: epoch == config["epochs"]})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stopped_trials_reach_optuna_as_pruned_through_ray(tmp_path):
    import optuna
    import ray
    from ray import tune

    from orchestrator.searcher import RAY_ID, TargetSearcher
    from search_spaces import SpaceContext, get_space

    ctx = SpaceContext(max_epochs=4, ref_eps=0.1)
    searcher = TargetSearcher(get_space("acert"), ctx, TARGETS, 10, study_prefix="e2e", seed=0)
    scheduler = PenalisedASHA(max_epochs=4, grace_epochs=1, ref_eps=0.1, penalty=10, targets=TARGETS)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        grid = tune.Tuner(
            _trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=10, max_concurrent_trials=2
            ),
            run_config=tune.RunConfig(name="e2e", storage_path=str(tmp_path), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    restored = TargetSearcher.__new__(TargetSearcher)  # the searcher as Ray checkpointed it
    restored.restore_from_dir(str(tmp_path / "e2e"))
    states = {}
    for study in restored.studies:
        for t in study.trials:
            if "shared_from" not in t.user_attrs:
                states[t.user_attrs[RAY_ID]] = t.state
    stopped = {r.metrics["trial_id"] for r in grid if r.metrics[EPOCH] < r.config["epochs"]}
    assert stopped, "ASHA stopped nothing: the check below would be empty"
    assert all(r.metrics[DONE] for r in grid)  # Ray marks stopped trials done too
    for r in grid:
        tid = r.metrics["trial_id"]
        want = optuna.trial.TrialState.PRUNED if tid in stopped else optuna.trial.TrialState.COMPLETE
        assert states[tid] == want, (tid, r.metrics[EPOCH], r.config["epochs"])
