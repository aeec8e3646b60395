"""Who a sweep is and who runs it: the sweep id, the exclusive sweep.json, the driver's lock,
resume with other flags, a damaged sweep.json, and the parent run closed on every way out.

These refusals happen before Ray starts, each as one line and exit code 2 with nothing
written; the last tests run a driver (SIGTERM, and Ray failing to start)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import pytest

from orchestrator.cli import parse_sweep_args
from orchestrator.storage import DriverLock, create_exclusive
from orchestrator.sweep import claim, main

BASE = ["--dataset", "synthetic", "--accs", "0.5", "--trials", "2", "--epochs", "1", "--synthetic-size", "64"]


@pytest.fixture
def place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def run_main(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def new_sweep(name: str, *extra: str):
    """A sweep as a first driver leaves it right after its preflight: sweep.json and the lock."""
    cfg = parse_sweep_args([*BASE, "--name", name, *extra])
    return cfg, claim(cfg)


def test_a_second_driver_on_one_name_is_refused(place, capsys):
    cfg, lock = new_sweep("one")
    try:
        code, err = run_main([*BASE, "--name", "one"], capsys)  # a new sweep of the same name
        assert code == 2 and "a sweep of that name exists" in err and err.count("\n") == 1
        code, err = run_main(["--resume", "one"], capsys)  # or the same sweep, resumed meanwhile
        assert code == 2 and f"being run by another driver (pid {os.getpid()} on " in err
        assert err.count("\n") == 1
    finally:
        lock.release()
    assert DriverLock(cfg.sweep_dir).acquire() is None  # free once the first driver is gone


def _create(args) -> bool:
    path, who = args
    return create_exclusive(path, json.dumps({"who": who}))


def test_sweep_json_is_created_by_exactly_one_of_racing_drivers(tmp_path):
    path = str(tmp_path / "race" / "sweep.json")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        made = pool.map(_create, [(path, i) for i in range(8)])
    assert sum(made) == 1
    assert json.loads(Path(path).read_text())["who"] == made.index(True)  # whole, and the winner's
    assert [p.name for p in Path(path).parent.iterdir()] == ["sweep.json"]  # no temporary left


def test_every_new_sweep_gets_its_own_id_and_resume_keeps_it(place):
    a = parse_sweep_args([*BASE, "--name", "a"])
    b = parse_sweep_args([*BASE, "--name", "b"])
    assert len(a.sweep_id) == 16 and a.sweep_id != b.sweep_id
    claim(a).release()
    assert parse_sweep_args(["--resume", "a"]).sweep_id == a.sweep_id
    assert json.loads((Path(a.sweep_dir) / "sweep.json").read_text())["sweep_id"] == a.sweep_id


def test_a_name_mlflow_records_under_another_id_is_refused(place, capsys):
    from orchestrator.tracking import SweepTracker

    uri = f"sqlite:///{place / 'mlflow.db'}"
    SweepTracker(uri, "synthetic", "taken", "0123456789abcdef", place / "old-journal").start({})
    capsys.readouterr()  # MLflow's lines on creating the database belong to the set-up
    code, err = run_main([*BASE, "--name", "taken", "--tracking-uri", uri], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "already records a sweep of that name (sweep id 0123456789abcdef)" in err
    new_id = err.split("not this one (sweep id ")[1].split(",")[0]
    assert len(new_id) == 16 and new_id != "0123456789abcdef"
    assert not (place / "sweeps").exists()  # nothing written


def test_resume_if_exists_with_other_flags_names_each_of_them(place, capsys):
    _, lock = new_sweep("kept")
    lock.release()
    argv = [*BASE, "--name", "kept", "--resume-if-exists"]
    changed = [a if a not in ("2", "1") else {"2": "5", "1": "3"}[a] for a in argv]  # --trials 5 --epochs 3
    before = sorted(p.name for p in (place / "sweeps" / "kept").iterdir())
    code, err = run_main(changed, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--trials 5 (saved: 2)" in err and "--epochs 3 (saved: 1)" in err and "--accs" not in err
    assert sorted(p.name for p in (place / "sweeps" / "kept").iterdir()) == before
    assert parse_sweep_args(argv).resume  # the same flags: resumed


@pytest.mark.parametrize("text", ['{"dataset": "synth', "[1, 2]", ""])
def test_a_damaged_sweep_json_is_one_line(place, capsys, text):
    folder = place / "sweeps" / "broken"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(text)
    code, err = run_main(["--resume", "broken"], capsys)
    assert code == 2 and err.count("\n") == 1 and "damaged" in err and "broken" in err


def test_the_parent_run_is_closed_failed_when_ray_does_not_start(place, monkeypatch):
    from mlflow.tracking import MlflowClient

    import orchestrator.sweep as sweep

    cfg = parse_sweep_args([*BASE, "--name", "noray"])

    def no_ray(cfg):
        raise ConnectionError("could not connect to the Ray cluster")

    monkeypatch.setattr(sweep, "init_ray", no_ray)
    with pytest.raises(ConnectionError):
        sweep.run_sweep(cfg)
    c = MlflowClient(tracking_uri=cfg.tracking_uri)
    (parent,) = c.search_runs([c.get_experiment_by_name("acert-sweep-synthetic").experiment_id], "")
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.id"] == cfg.sweep_id


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_to_the_driver_stops_it_like_ctrl_c_and_resume_finishes(place):
    """A trial waits mid-epoch at the gate (tests/gate.py) when the driver gets SIGTERM: the
    driver exits 130 with the parent run KILLED; --resume finishes the sweep."""
    import subprocess

    from mlflow.tracking import MlflowClient

    from tests.gate import Gate
    from tests.mlflow_schema import new_database

    gate = Gate(place / "gate")
    env = {**os.environ, **gate.env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("RAY_ADDRESS", None)
    argv = [*BASE, "--trials", "2", "--epochs", "2", "--name", "term", "--methods", "gated-acert",
            "--plugins", "tests.gated_method", "--max-concurrent", "1", "--scheduler", "none",
            "--val-acr-samples", "20", "--test-samples", "50", "--no-register"]  # fmt: skip
    log = place / "driver.log"
    new_database(place / "mlflow.db")  # the default tracking URI's tables, from the template
    cmd = [sys.executable, "-m", "orchestrator.sweep", *argv]
    try:
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=place, env=env, stdout=f, stderr=subprocess.STDOUT)
        gate.wait_for_waiting(1, why=lambda: log.read_text()[-3000:])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 130, log.read_text()[-3000:]
    finally:
        gate.open()
        if proc.poll() is None:
            proc.kill()
    assert "continue with --resume term" in log.read_text()
    c = MlflowClient(tracking_uri=f"sqlite:///{place / 'mlflow.db'}")
    exp_id = c.get_experiment_by_name("acert-sweep-synthetic").experiment_id
    (parent,) = c.search_runs([exp_id], "tags.`sweep.role` = 'parent'")
    assert parent.info.status == "KILLED"
    out = subprocess.run([sys.executable, "-m", "orchestrator.sweep", "--resume", "term"], cwd=place, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (parent,) = c.search_runs([exp_id], "tags.`sweep.role` = 'parent'")
    assert parent.info.status == "FINISHED"
    trials = c.search_runs([exp_id], "tags.`sweep.role` = 'trial' and attributes.status = 'FINISHED'")
    assert len(trials) == 2


def test_a_new_sweep_whose_studies_exist_in_the_optuna_storage_is_refused(place, capsys):
    import optuna

    url = f"sqlite:///{place / 'optuna.db'}"
    optuna.create_study(study_name="shared-acert-acc0.5", storage=url)
    optuna.create_study(study_name="shared-2-acert-acc0.5", storage=url)  # another sweep's: not in the way
    capsys.readouterr()  # Optuna's lines on creating them belong to the set-up
    code, err = run_main([*BASE, "--name", "shared", "--optuna-storage", url], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--optuna-storage already holds its studies (shared-acert-acc0.5)" in err
    assert not (place / "sweeps").exists()
    from orchestrator.sweep import check_studies

    check_studies(
        parse_sweep_args([*BASE, "--name", "shared-3", "--optuna-storage", url])
    )  # no studies: passes
