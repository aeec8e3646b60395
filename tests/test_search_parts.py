"""The searcher's parts (orchestrator.search), each through its interface, and the composed
default pinned to the suggestions of the searcher before its split into parts."""

import json
import math
import pickle
from pathlib import Path

import optuna
import pytest

from bench.search import stand_in
from orchestrator.search.outcomes import COMPLETE, FAILED, PRUNED, RAY_ID, RUNNING, Record
from orchestrator.search.policy import NeediestTarget, TargetView
from orchestrator.search.record import StorageRecord
from orchestrator.search.replay import ReplayLog
from orchestrator.search.sharing import GoodGroupSharing
from orchestrator.search.studies import ConstrainedStudies, ParetoStudy
from orchestrator.searcher import TargetSearcher, make_studies
from search_spaces import SpaceContext, get_space
from trainers.metrics import DONE, EPOCH, VAL_ACC, VAL_ACR

optuna.logging.set_verbosity(optuna.logging.WARNING)
FIXTURES = Path(__file__).parent / "fixtures" / "search"
CTX = SpaceContext(max_epochs=10, ref_eps=0.1)
C, F, R = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING


# --- the default, as it was before the split ----------------------------------------
def outcome(i: int, cfg: dict) -> dict:
    """A deterministic mix of outcomes: every 7th trial diverges, every 5th is stopped early."""
    acc, acr = stand_in(cfg)
    if i % 7 == 3:
        return {VAL_ACC: math.nan, VAL_ACR: math.nan, EPOCH: 1, DONE: True}
    return {VAL_ACC: acc, VAL_ACR: acr, EPOCH: cfg["epochs"] - (i % 5 == 2), DONE: True}


def drive(s, n: int, in_flight: int) -> list[dict]:
    """Suggest up to ``in_flight`` trials, finish the oldest or the newest in turn."""
    flight, out, i = [], [], 0
    while i < n or flight:
        while i < n and len(flight) < in_flight:
            cfg = s.suggest(f"t{i}")
            out.append(cfg)
            flight.append((i, cfg))
            i += 1
        j, cfg = flight.pop(0 if len(flight) % 2 == 0 else -1)
        s.on_trial_complete(f"t{j}", outcome(j, cfg))
    return out


@pytest.mark.parametrize("search", ["targets", "pareto"])
def test_suggestions_are_those_of_the_searcher_before_the_split(search):
    """tests/fixtures/search/head_suggestions.json: the first 30 suggestions of the one-class
    TargetSearcher (commit e09a8e6, ``pareto=True`` for pareto) under this driver, with that
    commit's sampler seeds."""
    from orchestrator.search.studies import TPE, ConstrainedStudies, ParetoStudy

    expected = json.loads((FIXTURES / "head_suggestions.json").read_text())[search]
    # the samplers seeded as then (seed + k): the split is pinned, not the seeding rule after it
    kind = (
        ConstrainedStudies(TPE(True, legacy_seed=True))
        if search == "targets"
        else ParetoStudy(TPE(False, legacy_seed=True))
    )
    s = TargetSearcher(
        get_space("acert"), CTX, (0.65, 0.72, 0.8), 30, study_prefix="pin", seed=3, search=kind
    )
    assert same_configs(json.loads(json.dumps(drive(s, 30, 4))), expected)


def same_configs(got: list, expected: list) -> bool:
    """The same configurations up to the last bits of a float: a kappa drawn as 1 - exp(u)
    differs in its 16th digit between numpy builds."""
    if len(got) != len(expected):
        return False
    for g, e in zip(got, expected):
        if g.keys() != e.keys():
            return False
        for k, v in e.items():
            if isinstance(v, float) and not isinstance(g[k], bool):
                if g[k] != pytest.approx(v, rel=1e-12):
                    return False
            elif g[k] != v:
                return False
    return True


def test_a_checkpoint_of_the_searcher_before_the_split_resumes_as_it_would_have():
    """searcher_v2.pkl: saved by the one-class TargetSearcher after 12 suggestions (10
    finished); searcher_v2.json: the next 4 suggestions that version made after restoring it."""
    expected = json.loads((FIXTURES / "searcher_v2.json").read_text())
    r = TargetSearcher.__new__(TargetSearcher)
    r.restore(str(FIXTURES / "searcher_v2.pkl"))
    assert r.n_suggested == 12 and r.search == "targets"
    assert same_configs(json.loads(json.dumps([r.suggest(f"t{i}") for i in range(12, 16)])), expected["next"])
    for tid, cfg in expected["in_flight"].items():  # the trials in flight are still told
        r.on_trial_complete(tid, outcome(int(tid[1:]), cfg))
    assert all(r.on_trial_complete(t, None) is None for t in expected["in_flight"])  # once


# --- policy ----------------------------------------------------------------------------
def view(best, given, in_flight, budget=30):
    return TargetView((0.6, 0.7, 0.8), best, given, in_flight, budget, sum(given) - sum(in_flight))


def test_policy_picks_the_neediest_target():
    p = NeediestTarget()
    assert p.choose(view([0.1, None, None], [5, 3, 3], [0, 2, 1])) == 2  # infeasible, fewest in flight
    assert p.choose(view([0.1, 0.2, 0.1], [4, 3, 5], [0, 5, 0])) == 1  # all feasible: fewest given
    assert p.choose(view([0.1, None, 0.1], [4, 10, 4], [0, 0, 0])) == 0  # past its share (10)


def test_injected_policy_and_sharing_rule_decide():
    class Last:
        def choose(self, v):
            return len(v.targets) - 1

        def observe(self, v):
            self.seen = v.n_finished

    class Never(GoodGroupSharing):
        def shares(self, rec, j):
            return False

    policy = Last()
    s = TargetSearcher(
        get_space("acert"), CTX, (0.6, 0.8), 6, study_prefix="i", policy=policy, sharing=Never()
    )
    cfgs = {f"t{i}": s.suggest(f"t{i}") for i in range(3)}
    assert {c["target"] for c in cfgs.values()} == {0.8}
    for i, (tid, cfg) in enumerate(cfgs.items()):
        s.on_trial_complete(tid, {VAL_ACC: 0.9, VAL_ACR: 0.1 * i, EPOCH: cfg["epochs"], DONE: True})
    assert [len(st.trials) for st in s.studies] == [0, 3] and policy.seen == 3
    assert s.best_feasible() == [0.2, 0.2]  # feasible for both, though shared with neither


# --- sharing rule ----------------------------------------------------------------------
def rec(outcome, acc, value, k=0):
    return Record("x", k, 0, {}, 0, 4, outcome, acc, value, 4)


def test_sharing_rule_accepts_into_the_good_group_only():
    rule = GoodGroupSharing(margin=0.02)
    rule.reset((0.6, 0.8))
    assert rule.shares(rec(FAILED, math.nan, math.nan), 1)  # a failure: everywhere
    assert not rule.shares(rec(COMPLETE, 0.77, 0.5), 1)  # below the margin of 0.8
    assert rule.shares(rec(COMPLETE, 0.79, 0.5), 1)  # within it, and j's good group is empty
    for v in (0.5, 0.6, 0.7):  # three feasible trials in study 0
        rule.entered(rec(COMPLETE, 0.65, v), 0)
    rule.entered(rec(COMPLETE, 0.5, 0.9), 0)  # infeasible for 0.6: not in its good group
    for _ in range(16):
        rule.entered(rec(COMPLETE, 0.3, 0.0), 0)  # n = 20 entered, good group of 3 (ceil(0.1 * 21))
    assert not rule.shares(rec(COMPLETE, 0.85, 0.45), 0)  # below the third best (0.5)
    assert rule.shares(rec(COMPLETE, 0.85, 0.55), 0)
    assert not rule.shares(rec(PRUNED, 0.85, 0.55), 0)  # a full good group takes only COMPLETE


def test_sharing_rule_state_is_rebuilt_not_pickled():
    rule = GoodGroupSharing(margin=0.05)
    rule.reset((0.6,))
    rule.entered(rec(COMPLETE, 0.7, 0.3), 0)
    back = pickle.loads(pickle.dumps(rule))
    assert back.margin == 0.05
    with pytest.raises(ValueError, match="share_margin=-1"):
        GoodGroupSharing(margin=-1)


# --- replay log ------------------------------------------------------------------------
def test_replay_log_round_trip_gives_identical_studies():
    kind, space = ConstrainedStudies(), get_space("acert")
    samplers = kind.samplers(2, 0, 4)
    studies = [kind.create(f"s{k}", s) for k, s in enumerate(samplers)]
    log = ReplayLog(2)

    def freeze(r, j):
        common = {"params": r.params, "distributions": log.distributions(r), "user_attrs": {RAY_ID: r.ray_id}}
        return kind.freeze(r, (0.6, 0.8)[j], common)

    for i in range(8):
        k = i % 2
        trial = studies[k].ask()
        trial.set_user_attr(RAY_ID, f"t{i}")
        cfg = space(trial, CTX)
        serial = log.suggested(f"t{i}", k, trial, cfg["epochs"])
        if i < 6:  # t6, t7 stay in flight
            r = log.records[serial]
            r.outcome, (r.acc, r.value), r.epoch = (PRUNED if i == 4 else COMPLETE), stand_in(cfg), 3
            kind.tell(studies[k], trial, r, (0.6, 0.8)[k])
            log.finish(serial)
            if k == 1:  # a copy into the other study
                studies[0].add_trial(freeze(r, 0))
                log.entered(serial, 0)
    back = pickle.loads(pickle.dumps(log))
    fresh = [kind.create(f"s{k}", optuna.samplers.RandomSampler()) for k in range(2)]
    entered = []
    handles = back.replay(fresh, freeze, lambda r, j: entered.append((r.ray_id, j)))

    def seen(study):
        return [
            (t.number, t.state, t.params, t.value, t.constraints, t.intermediate_values) for t in study.trials
        ]

    assert [seen(st) for st in fresh] == [seen(st) for st in studies]  # a PRUNED one's value too
    assert len(entered) == sum(len(st.trials) for st in studies)
    assert {back.records[s].ray_id for s in handles} == {"t6", "t7"}
    assert back.running("t6") is not None and back.running("t0") is None


# --- storage record --------------------------------------------------------------------
def test_storage_record_writes_each_finished_trial_once_and_closes_orphans(tmp_path):
    kind = ConstrainedStudies()
    url = str(tmp_path / "optuna.journal")

    def opener(k, storage):
        return kind.create(f"rec-{k}", optuna.samplers.RandomSampler(), storage)

    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def freeze(r):
        common = {"params": {"x": 0.5}, "distributions": dist, "user_attrs": {RAY_ID: r.ray_id}}
        return kind.freeze(r, 0.6, common)

    done = [Record(f"t{i}", i % 2, i, {}, 0, 4, COMPLETE, 0.7, 0.1 * i, 4) for i in range(4)]
    record = StorageRecord(url)
    record.bind(2, opener)
    assert record.write(done[:3], freeze) == 3
    assert record.write(done[:3], freeze) == 0  # nothing new
    record.studies()[0].add_trial(optuna.trial.create_trial(state=R))  # a killed driver's orphan

    back = pickle.loads(pickle.dumps(record))  # as a checkpoint keeps it: url and count
    back.written = 2  # the checkpoint is older than the record: t2 is written already
    back.bind(2, opener)
    back.close_orphans()
    assert back.write(done, freeze) == 1  # t3 only
    ids = sorted(t.user_attrs[RAY_ID] for st in back.studies() for t in st.trials if RAY_ID in t.user_attrs)
    assert ids == ["t0", "t1", "t2", "t3"]
    assert R not in [t.state for st in back.studies() for t in st.trials]
    assert StorageRecord(None).write(done, freeze) == 0


# --- studies ---------------------------------------------------------------------------
def test_pareto_study_tells_both_objectives():
    kind = ParetoStudy()
    (sampler,) = kind.samplers(3, 0, 4)
    study = kind.create("p", sampler)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    kind.tell(study, trial, rec(FAILED, math.nan, math.nan), 0.6)
    assert study.trials[0].values == [0.0, 0.0] and kind.target_of((0.6, 0.8), 0) == 0.6
    assert rec(RUNNING, 0, 0).outcome == RUNNING


def test_unknown_search_is_refused():
    with pytest.raises(ValueError, match="search='nsga': choose one of targets, pareto, gp"):
        make_studies("nsga")


def test_gp_search_suggests_and_resumes_exactly(tmp_path):
    s = TargetSearcher(get_space("acert"), CTX, (0.65, 0.8), 12, study_prefix="g", seed=1, search="gp")
    assert s.search == "gp"
    for i in range(7):
        cfg = s.suggest(f"t{i}")
        acc, acr = stand_in(cfg)
        s.on_trial_complete(f"t{i}", {VAL_ACC: acc, VAL_ACR: acr, EPOCH: cfg["epochs"], DONE: True})
    s.save(str(tmp_path / "g.pkl"))
    r = TargetSearcher.__new__(TargetSearcher)
    r.restore(str(tmp_path / "g.pkl"))
    assert r.suggest("t7") == s.suggest("t7")  # past the 4 startup trials of each study: GP
    assert all(t.constraints for st in s.studies for t in st.trials if t.state == C)
    # every finished trial in every study (ShareMeasured), the constraint per target
    assert sorted(len(st.trials) for st in s.studies) == [7, 8]  # 7 finished in each, t7 in one
    (t0a,), (t0b,) = ([t for t in st.trials if t.user_attrs[RAY_ID] == "t0"] for st in s.studies)
    assert t0a.constraints["val_acc_shortfall"] - t0b.constraints["val_acc_shortfall"] == pytest.approx(
        0.65 - 0.8
    )


def test_study_seeds_of_neighbouring_sweep_seeds_are_all_different():
    """Two sweeps that differ only in --seed (a reproducibility check) share no study's stream;
    with seed + k, sweep 0's study 1 was sweep 1's study 0."""
    from orchestrator.search.studies import study_seed

    seeds = [study_seed(s, k) for s in range(8) for k in range(6)]
    assert len(set(seeds)) == len(seeds)
    assert study_seed(0, 1, legacy=True) == study_seed(1, 0, legacy=True)
    assert study_seed(3, 2) == study_seed(3, 2)  # a resumed driver builds the same samplers
