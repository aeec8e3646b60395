"""The confirm stage without Ray: fresh training seeds on the sweep's split, candidates in
winner order, and the rounds' bookkeeping (a candidate below its target is not confirmed and
the next one is tried). tests/test_confirm_sweep.py runs the stage with Ray Tune."""

from __future__ import annotations

import math

import torch

from orchestrator.config import SweepConfig
from orchestrator.confirm import (
    CONFIRMED,
    NOT_CONFIRMED,
    Retrain,
    TargetConfirmation,
    judge,
    next_round,
    ranked_candidates,
)
from orchestrator.pareto import TrialPoint, select_winner
from trainers.config import TrainConfig
from trainers.train import run_training

QUICK = dict(
    dataset="synthetic", synthetic_size=512, epochs=2, std_epochs=1, ramp_epochs=1, batch_size=64,
    val_acr_samples=64, device="cpu", threads=1, lr=1e-2, eval_test_at_end=False,
)  # fmt: skip


def trained_weights(tmp_path, **kw):
    cfg = TrainConfig(**QUICK, **kw)
    run_training(cfg, output_dir=tmp_path, log=lambda _m: None)
    return torch.load(tmp_path / "model.pt", weights_only=False)


def all_weights(saved):
    state = saved["state_dict"] if "state_dict" in saved else saved["model"]
    return torch.cat([v.flatten().float() for v in state.values()])


def test_train_seed_changes_initialisation_and_order_but_not_the_split(tmp_path):
    a = TrainConfig(**QUICK, seed=3)
    b = TrainConfig(**QUICK, seed=3, train_seed=11)
    sa, sb = a.load_splits(), b.load_splits()
    assert torch.equal(sa.x_val, sb.x_val) and torch.equal(sa.y_val, sb.y_val)
    assert a.init_seed == 3 and b.init_seed == 11
    same = all_weights(trained_weights(tmp_path / "a", seed=3))
    again = all_weights(trained_weights(tmp_path / "b", seed=3, train_seed=3))
    other = all_weights(trained_weights(tmp_path / "c", seed=3, train_seed=11))
    assert torch.equal(same, again) and not torch.equal(same, other)


def pt(trial_id, acc, acr, **config):
    return TrialPoint(trial_id, acc, acr, "ibp", config)


def test_ranked_candidates_follow_the_winner_rule():
    points = [
        pt("a", 0.9, 0.1),
        pt("b", 0.8, 0.3),
        pt("c", 0.6, 0.9),
        pt("d", 0.85, 0.3),
        pt("e", math.nan, 1.0),
    ]
    ranked = ranked_candidates(points, 0.7)
    assert [p.trial_id for p in ranked] == ["d", "b", "a"]  # c infeasible, e not usable, tie by accuracy
    assert ranked[0] == select_winner(points, 0.7)
    assert [p.trial_id for p in ranked_candidates(points, 0.7, limit=2)] == ["d", "b"]
    assert ranked_candidates(points, 0.95) == []


def sweep_cfg(tmp_path, **kw):
    return SweepConfig(
        dataset="synthetic", accs=(0.5, 0.7), methods=("ibp",), trials=4, name="c",
        storage=str(tmp_path), data_dir=str(tmp_path), **kw,
    )  # fmt: skip


def test_rounds_move_to_the_next_candidate_when_one_is_not_confirmed(tmp_path):
    cfg = sweep_cfg(tmp_path, confirm_seeds=3, confirm_candidates=2, seed=5)
    lucky, steady, third = pt("lucky", 0.9, 0.5, lr=1.0), pt("steady", 0.8, 0.3), pt("x", 0.75, 0.2)
    tc = TargetConfirmation(
        "ibp", 0.7, ranked_candidates([third, steady, lucky], 0.7, cfg.confirm_candidates)
    )
    retrains: dict[str, Retrain] = {}
    todo = next_round(cfg, [tc], retrains)
    assert sorted(r.seed for r in todo.values()) == [6, 7, 8]  # fresh: never the sweep's seed 5
    assert {r.of for r in todo.values()} == {"lucky"} and all(
        r.train_config["train_seed"] == r.seed for r in todo.values()
    )
    for r, acc in zip(todo.values(), (0.75, 0.6, 0.7)):  # mean 0.683 < 0.7
        r.val_acc, r.val_acr, r.failed = acc, 0.4, False
    retrains.update(todo)
    judge(tc.attempts[0], retrains, 0.7)
    assert tc.attempts[0].status == NOT_CONFIRMED and "0.6833" in tc.attempts[0].reason and tc.open
    todo = next_round(cfg, [tc], retrains)
    assert {r.of for r in todo.values()} == {"steady"} and len(todo) == 3
    for r in todo.values():
        r.val_acc, r.failed = 0.72, False
    retrains.update(todo)
    judge(tc.attempts[1], retrains, 0.7)
    assert tc.confirmed is tc.attempts[1] and tc.attempts[1].status == CONFIRMED
    assert not tc.open and next_round(cfg, [tc], retrains) == {}  # x is beyond --confirm-candidates


def test_a_failed_retrain_leaves_the_candidate_unconfirmed_and_shared_retrains_run_once(tmp_path):
    cfg = sweep_cfg(tmp_path, confirm_seeds=2)
    p = pt("p", 0.9, 0.5)
    both = [TargetConfirmation("ibp", t, ranked_candidates([p], t)) for t in (0.5, 0.7)]
    todo = next_round(cfg, both, {})
    assert len(todo) == 2  # one candidate of two targets: trained once per seed
    first, second = todo.values()
    first.val_acc, first.failed = 0.95, False  # second stays failed (diverged, errored)
    judge(both[0].attempts[0], todo, 0.5)
    assert both[0].attempts[0].status == NOT_CONFIRMED and "failed" in both[0].attempts[0].reason
    assert not both[0].open  # its only candidate is spent


def test_a_confirmed_second_candidate_becomes_the_rows_winner():
    """When the search's winner is not confirmed and the next candidate is, the frontier row
    reports that candidate (its test figures, and so its registered model), names the search's
    winner it replaced, and the confirm fields agree with the row's trial."""
    from types import SimpleNamespace

    from orchestrator.confirm import Attempt, ConfirmOutcome
    from orchestrator.evaluation import frontier_rows

    cfg = SweepConfig(dataset="synthetic", accs=(0.7, 0.8), epochs=2, name="t")
    lucky, steady = pt("lucky", 0.85, 0.3), pt("steady", 0.75, 0.2)
    res = SimpleNamespace(points=[lucky, steady], checkpoints={"lucky": "ck-l", "steady": "ck-s"})
    seeds = {f"confirm-ibp-{t}-s{s}": Retrain(f"confirm-ibp-{t}-s{s}", "ibp", t, s, {}) for t in ("lucky", "steady") for s in (1, 2)}  # fmt: skip
    for key, r in seeds.items():
        r.failed, r.val_acr = False, 0.2
        r.val_acc = 0.5 if "lucky" in key else 0.76
        r.test = {"test_acc": r.val_acc, "test_acr": 0.2}
    at_07 = TargetConfirmation("ibp", 0.7, [lucky, steady], retrains=seeds)
    for t in ("lucky", "steady"):
        at_07.attempts.append(Attempt(t, len(at_07.attempts) + 1, [k for k in seeds if f"-{t}-" in k]))
        judge(at_07.attempts[-1], seeds, 0.7)
    at_08 = TargetConfirmation("ibp", 0.8, [lucky], retrains=seeds)  # its only candidate fails
    at_08.attempts.append(Attempt("lucky", 1, [k for k in seeds if "-lucky-" in k]))
    judge(at_08.attempts[-1], seeds, 0.8)
    outcome = ConfirmOutcome([at_07, at_08])

    assert outcome.winner("ibp", 0.7, res.points).trial_id == "steady"
    assert outcome.winner("ibp", 0.8, res.points).trial_id == "lucky"  # unconfirmed: the search's
    tests = {"lucky": {"test_acc": 0.84, "test_acr": 0.29}, "steady": {"test_acc": 0.74, "test_acr": 0.19}}
    rows = outcome.extend_rows(frontier_rows(cfg, {"ibp": res}, tests, {}, outcome.winner))
    r07, r08 = rows
    assert (r07["trial_id"], r07["test_acc"], r07["search_winner_trial_id"]) == ("steady", 0.74, "lucky")
    assert r07["confirm_status"] == CONFIRMED and r07["confirm_trial_id"] == "steady"
    assert (r08["trial_id"], r08["confirm_status"]) == ("lucky", NOT_CONFIRMED)
    assert "search_winner_trial_id" not in r08
