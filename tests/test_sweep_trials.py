"""Whole sweeps through ``orchestrator.sweep.main`` on local Ray (2 CPUs) and synthetic data, for
how single trials end: with --fixed settings, diverged, hung. What they leave is read from the Ray
Tune experiment folder (``<storage>/<name>/<method>/<trial>/``), the record the sweep itself reads
back."""

import json
from pathlib import Path

import pytest

from orchestrator.sweep import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def argv(tmp: Path, name: str, *extra: str) -> list[str]:
    return [
        "--dataset",
        "synthetic",
        "--accs",
        "0.5",
        "--trials",
        "2",
        "--epochs",
        "1",
        "--name",
        name,
        "--storage",
        str(tmp / "sweeps"),
        "--tracking-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--data-dir",
        str(tmp / "data"),
        "--synthetic-size",
        "256",
        "--val-acr-samples",
        "20",
        "--threads",
        "1",
        "--no-register",
        *extra,
    ]


def trials(tmp: Path, name: str, method: str = "acert") -> dict[str, dict]:
    """Per trial folder: its config (params.json) and every result it reported (result.json)."""
    out = {}
    for folder in sorted((tmp / "sweeps" / name / method).glob("*/")):
        if (folder / "params.json").is_file():
            lines = (folder / "result.json").read_text().splitlines()
            out[folder.name] = {
                "config": json.loads((folder / "params.json").read_text()),
                "results": [json.loads(line) for line in lines if line.strip()],
            }
    return out


def test_a_sweep_with_fixed_settings_finishes(ray_session, tmp_path):
    """--fixed (every preset in configs/ uses it): the searcher, with its fixed space, is pickled
    at every save of the experiment, and every trial trains with the fixed value."""
    assert main(argv(tmp_path, "fixed", "--fixed", "lr=0.001")) == 0
    done = trials(tmp_path, "fixed")
    assert len(done) == 2
    for trial in done.values():
        assert trial["config"]["lr"] == 0.001
        assert trial["results"][-1]["done"] and trial["results"][-1]["epoch"] == 1


def ended_sweep(tmp: Path, name: str, method: str, *extra: str):
    """A sweep of one of tests/faulty_methods.py's methods, with retries allowed: its frontier
    rows and its trials' folders."""
    from orchestrator.cli import parse_sweep_args
    from orchestrator.sweep import run_sweep

    cfg = parse_sweep_args(
        argv(
            tmp, name, "--plugins", "tests.faulty_methods", "--methods", method, "--max-failures", "2", *extra
        )
    )
    rows = run_sweep(cfg)
    return rows, trials(tmp, name, method)


def optuna_outcomes(tmp: Path, name: str) -> list[str]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp / "sweeps" / name / "optuna.journal")))
    return [
        t.user_attrs["outcome"]
        for study in optuna.get_all_study_names(storage=storage)
        for t in optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    ]


def test_a_diverged_trial_is_finished_with_the_worst_figures_and_not_retried(ray_session, tmp_path):
    """nan-ibp trains one epoch (checkpointed, val_acc well above the target), then its loss is
    NaN. The trial is finished, not failed: one report per epoch (a retry would report epoch 2
    again), the last one marked diverged with the worst figures and the reason; it wins no
    target, though its first epoch would have; the searcher records it as failed."""
    from tests.faulty_methods import NAN

    rows, done = ended_sweep(tmp_path, "nan", NAN, "--epochs", "2", "--accs", "0.1", "--scheduler", "none")
    assert len(done) == 2
    for folder, trial in done.items():
        results = trial["results"]
        assert [r["epoch"] for r in results] == [1, 2], folder
        assert results[0]["val_acc"] >= 0.1 and results[0]["checkpoint_dir_name"]
        last = results[-1]
        assert (last["diverged"], last["val_acc"], last["val_acr"]) == (1, 0.0, 0.0)
        assert last["end_reason"].startswith("diverged: loss is nan at step")
        assert not list((tmp_path / "sweeps" / "nan" / NAN / folder).glob("error.*"))
    assert [r["status"] for r in rows] == ["infeasible"]
    assert optuna_outcomes(tmp_path, "nan") == ["failed", "failed"]


def test_a_trial_with_no_epoch_within_the_timeout_is_ended_and_recorded(ray_session, tmp_path):
    """hung-ibp blocks in its first step, forever: each trial is ended after --trial-timeout,
    recorded as timed out with the reason, not retried, and the sweep goes on to the next."""
    from tests.faulty_methods import HUNG

    rows, done = ended_sweep(tmp_path, "hung", HUNG, "--trial-timeout", "1", "--max-concurrent", "1")
    assert len(done) == 2
    for trial in done.values():
        (last,) = trial["results"]
        assert (last["timed_out"], last["epoch"], last["val_acc"], last["val_acr"]) == (1, 1, 0.0, 0.0)
        assert last["end_reason"] == "no epoch reported for 1 s"
    assert [r["status"] for r in rows] == ["infeasible"]
    assert optuna_outcomes(tmp_path, "hung") == ["failed", "failed"]
