"""``--search``: parsed, validated before anything starts, kept in sweep.json and the MLflow
params (SweepConfig.to_dict), and a short Ray sweep with ``--search pareto``."""

import json

import pytest

from orchestrator import sweep
from orchestrator.cli import parse_sweep_args
from orchestrator.search.studies import SEARCHES

BASE = ["--dataset", "synthetic", "--accs", "0.5,0.7"]


def test_search_is_parsed_and_kept_for_resume(in_tmp):
    assert parse_sweep_args(BASE).search == "targets"  # the default
    for name in SEARCHES:
        cfg = parse_sweep_args([*BASE, "--search", name, "--name", f"s-{name}"])
        assert cfg.search == name and cfg.to_dict()["search"] == name  # sweep.json, MLflow params
        folder = in_tmp / "sweeps" / f"s-{name}"
        folder.mkdir(parents=True)
        (folder / "sweep.json").write_text(json.dumps(cfg.to_dict()))
        assert parse_sweep_args(["--resume", f"s-{name}"]).search == name


def test_a_sweep_saved_before_the_option_resumes_with_the_default(in_tmp):
    cfg = parse_sweep_args([*BASE, "--name", "old"])
    saved = {k: v for k, v in cfg.to_dict().items() if k != "search"}
    (in_tmp / "sweeps" / "old").mkdir(parents=True)
    (in_tmp / "sweeps" / "old" / "sweep.json").write_text(json.dumps(saved))
    assert parse_sweep_args(["--resume", "old"]).search == "targets"


@pytest.mark.parametrize("value", ["nsga", "", "Pareto"])
def test_a_bad_search_is_one_line_exit_2_and_writes_nothing(value, in_tmp, capsys):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(sweep.main([*BASE, "--search", value]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--search {value!r}" in err and err.count("\n") == 1, err
    assert "targets, pareto, gp" in err
    assert not list(in_tmp.iterdir())  # no sweep folder, no MLflow database


def test_the_search_is_listed_in_the_help(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--search" in out and "one of: targets, pareto, gp" in out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_pareto_sweep_runs_one_study_and_picks_a_winner_per_target(tmp_path):
    import optuna
    import ray
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tests.test_sweep import small_config

    cfg = small_config(
        tmp_path, "par", f"sqlite:///{tmp_path / 'mlflow.db'}", trials=4, epochs=2, synthetic_size=256,
        val_acr_samples=50, register_models=False, search="pareto",
    )  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        rows = sweep.run_sweep(cfg)
    finally:
        ray.shutdown()
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "sweeps" / "par" / "optuna.journal")))
    assert optuna.get_all_study_names(storage=storage) == ["par-acert-pareto"]
    study = optuna.load_study(study_name="par-acert-pareto", storage=storage)
    assert len(study.directions) == 2 and len(study.trials) == 4  # every trial, once
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(len(t.values) == 2 for t in finished)
    assert sorted(r["target"] for r in rows) == [0.5, 0.7]  # a row (winner or infeasible) per target
    for r in rows:
        assert r["status"] in ("ok", "infeasible")
        if r["status"] == "ok":
            assert r["val_acc"] >= r["target"]
