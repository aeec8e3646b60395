"""The confirm stage with Ray Tune (local Ray, 2 CPUs) and a stand-in objective: a search
winner that only its own seed favours (tests/lucky_method.py) is retrained K times, found below
its target, flagged "not confirmed", and the next candidate is retrained and confirmed; the
retrains are recorded in MLflow and a resumed stage trains nothing again."""

from __future__ import annotations

import importlib
import os

import pytest

from orchestrator.config import SweepConfig
from orchestrator.confirm import CONFIRMED, NOT_CONFIRMED, ROLE, run_confirm
from orchestrator.pareto import TrialPoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    import ray

    importlib.import_module("tests.lucky_method")  # registers lucky-ibp (after collection: see there)
    log = tmp_path_factory.mktemp("builds") / "builds.txt"
    os.environ["LUCKY_BUILD_LOG"] = str(log)  # before ray.init: the workers inherit it
    ray.init(num_cpus=2, include_dashboard=False)
    yield log
    ray.shutdown()
    os.environ.pop("LUCKY_BUILD_LOG", None)


def candidate(trial_id, val_acr, lucky):
    config = {"method": "lucky-ibp", "epochs": 2, "std_epochs": 1, "ramp_epochs": 1, "lr": 1e-2,
              "batch_size": 64, "lucky": lucky, "target": 0.7}  # fmt: skip
    return TrialPoint(trial_id, 1.0, val_acr, "lucky-ibp", config)


def make_tracker(cfg):
    from orchestrator.sweep import make_tracker

    tracker = make_tracker(cfg)
    tracker.start(params={})
    return tracker


def lucky_config(tmp_path, name: str) -> SweepConfig:
    """One target, the lucky stand-in, two retrains per candidate and two candidates at most."""
    return SweepConfig(
        dataset="synthetic", accs=(0.7,), methods=("lucky-ibp",), plugins=("tests.lucky_method",),
        trials=2, epochs=2, name=name, storage=str(tmp_path / "sweeps"), data_dir=str(tmp_path / "data"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", synthetic_size=512, val_acr_samples=64,
        test_samples=64, threads=1, scheduler="none", max_failures=0, confirm_seeds=2, confirm_candidates=2,
    )  # fmt: skip


def test_unconfirmed_candidate_is_flagged_and_the_next_one_confirmed(ray_session, tmp_path):
    cfg = lucky_config(tmp_path, "confirm")
    # the lucky config wins the search (larger validation ACR), the steady one is second
    pools = {"lucky-ibp": [candidate("steady", 0.05, False), candidate("lucky", 0.09, True)]}
    tracker = make_tracker(cfg)
    ray_session.write_text("")
    (tc,) = run_confirm(cfg, pools, tracker)
    lucky, steady = tc.attempts
    assert (lucky.trial_id, lucky.status, steady.trial_id, steady.status) == (
        "lucky",
        NOT_CONFIRMED,
        "steady",
        CONFIRMED,
    )
    assert lucky.mean_val_acc < 0.7 <= steady.mean_val_acc
    assert "< target 0.7" in lucky.reason
    builds = sorted(ray_session.read_text().splitlines())
    assert builds == ["False 1", "False 2", "True 1", "True 2"]  # K = 2 fresh seeds per candidate

    tracker.flush()
    runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`sweep.role` = '{ROLE}'")
    assert len(runs) == 4
    by_of = {(r.data.tags["confirm.of"], r.data.tags["confirm.seed"]): r for r in runs}
    assert set(by_of) == {("lucky", "1"), ("lucky", "2"), ("steady", "1"), ("steady", "2")}
    parent = tracker.parent_run_id()
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in runs)
    for seed in ("1", "2"):  # the confirmed candidate's retrains are certified on the test set
        m = by_of[("steady", seed)].data.metrics
        assert m["val_acc"] >= 0.7 and 0 <= m["test_acc"] <= 1 and m["test_acr"] >= 0
        assert "test_acc" not in by_of[("lucky", seed)].data.metrics
    assert by_of[("lucky", "1")].data.tags["confirm.verdicts"] == "0.7:not confirmed"
    for run in runs:  # every epoch of every retrain, logged while it trained (2 epochs)
        history = tracker.client.get_metric_history(run.info.run_id, "val_acr")
        assert sorted(m.step for m in history) == [1, 2], [(m.step, m.value) for m in history]
    first = by_of[("steady", "1")].data
    assert (
        first.tags["mlflow.runName"] == "confirm-lucky-ibp-steady-s1"
        and first.tags["sweep.method"] == "lucky-ibp"
    )
    assert (first.params["train_seed"], first.params["seed"], first.params["dataset"]) == (
        "1",
        "0",
        "synthetic",
    )

    # resumed: both rounds are restored from their Tune experiments, nothing is trained again
    (again,) = run_confirm(cfg, pools, tracker)
    assert [(a.trial_id, a.status) for a in again.attempts] == [
        ("lucky", NOT_CONFIRMED),
        ("steady", CONFIRMED),
    ]
    assert sorted(ray_session.read_text().splitlines()) == builds


def test_a_sweep_with_confirm_seeds_reports_confirmed_means_in_its_frontier(ray_session, tmp_path, capsys):
    import json

    from orchestrator.sweep import run_sweep

    cfg = SweepConfig(
        dataset="synthetic", accs=(0.5,), methods=("ibp", "lucky-ibp"), plugins=("tests.lucky_method",),
        trials=2, epochs=2, name="confirmed", storage=str(tmp_path / "sweeps"), data_dir=str(tmp_path / "data"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", synthetic_size=512, val_acr_samples=64,
        test_samples=64, threads=1, scheduler="none", max_failures=0, fixed=("lr=0.01", "batch_size=64", "std_epochs=1", "ramp_epochs=1"),
        register_models=False, confirm_seeds=2, confirm_candidates=1,
    )  # fmt: skip
    rows = {r["method"]: r for r in run_sweep(cfg)}
    ibp, lucky = rows["ibp"], rows["lucky-ibp"]
    assert ibp["confirm_status"] == "confirmed" and ibp["confirm_trial_id"] == ibp["trial_id"]
    assert ibp["confirm_seeds"] == [1, 2] and 0.5 <= ibp["mean.val_acc"] <= 1
    assert ibp["ci95.test_acc"] is not None and ibp["mean.test_acr"] >= 0
    # one candidate allowed: the search winner; a lucky one fails under fresh seeds
    expected = "not confirmed" if lucky["config"]["lucky"] else "confirmed"
    assert lucky["confirm_status"] == expected
    folder = tmp_path / "sweeps" / "confirmed"
    saved = {r["method"]: r for r in json.loads((folder / "frontier.json").read_text())}
    assert saved["ibp"]["mean.test_acc"] == pytest.approx(ibp["mean.test_acc"])
    assert "mean.test_acr" in (folder / "frontier.csv").read_text().splitlines()[0]
    assert "confirmed, mean ± 95 % CI" in (folder / "frontier.html").read_text()
    assert (folder / "confirm-1").is_dir()

    # the report from MLflow alone: the search's trials as points, the confirmed table below
    from orchestrator.frontier import load_panel, main
    from orchestrator.tracking.reads import client_for

    panel = load_panel(client_for(cfg.tracking_uri), cfg.tracking_uri, "synthetic", None, None)
    assert {m: len(p) for m, p in panel.points.items()} == {"ibp": 2, "lucky-ibp": 2}  # no retrain among them
    capsys.readouterr()
    assert (
        main(["--datasets", "synthetic", "--tracking-uri", cfg.tracking_uri, "--out", str(tmp_path / "f")])
        == 0
    )
    out = capsys.readouterr().out
    assert "confirmed over seeds (mean ± 95 % half-width)" in out
    assert f"| ibp | 0.5 | confirmed | 2 | {ibp['mean.val_acc']:.4f} ± " in out


def test_a_stage_interrupted_between_rounds_resumes_without_retraining(ray_session, tmp_path, monkeypatch):
    import orchestrator.confirm_tune as ct

    cfg = lucky_config(tmp_path, "interrupted")
    pools = {"lucky-ibp": [candidate("steady", 0.05, False), candidate("lucky", 0.09, True)]}
    tracker = make_tracker(cfg)
    ray_session.write_text("")
    real = ct.run_round

    def stop_at_round_two(cfg, rnd, todo, *rest):
        if rnd == 2:  # as Ctrl+C between the rounds
            raise KeyboardInterrupt("stopped")
        return real(cfg, rnd, todo, *rest)

    monkeypatch.setattr(ct, "run_round", stop_at_round_two)
    with pytest.raises(KeyboardInterrupt):
        run_confirm(cfg, pools, tracker)
    assert sorted(ray_session.read_text().splitlines()) == ["True 1", "True 2"]
    monkeypatch.setattr(ct, "run_round", real)
    (tc,) = run_confirm(cfg, pools, tracker)
    assert [a.status for a in tc.attempts] == [NOT_CONFIRMED, CONFIRMED]
    # round 1 restored from its Tune experiment, round 2 trained once
    assert sorted(ray_session.read_text().splitlines()) == ["False 1", "False 2", "True 1", "True 2"]
