"""A sweep whose driver is SIGKILLed mid-way completes with --resume: no trial lost or repeated,
each record once, in the tracking database the resume was told to use."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.gate import GATED_METHOD as GATED
from tests.gate import Gate
from tests.mlflow_schema import new_database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = str(Path(__file__).resolve().parents[1])
# ACERT behind the gate: the first trial goes through, the others wait mid-epoch until it opens
GATED_ARGS = ["--methods", GATED, "--plugins", "tests.gated_method"]
ARGS = [
    "--dataset",
    "synthetic",
    "--accs",
    "0.5,0.7",
    "--trials",
    "6",
    "--epochs",
    "3",
    "--name",
    "k1",
    "--synthetic-size",
    "512",
    "--val-acr-samples",
    "100",
    "--max-concurrent",
    "2",
]


def child_runs(uri):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("acert-sweep-synthetic")
    if exp is None:
        return c, []
    runs = c.search_runs([exp.experiment_id], "tags.`sweep.role` = 'trial'", run_view_type=ViewType.ALL)
    return c, list(runs)


def history(c, run):
    return [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "val_acr")]


def run_driver(argv, cwd, env, kill_at=None, timeout=400):
    env = {**env, **({"ACERT_KILL_AT": kill_at} if kill_at else {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", *argv], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@contextlib.contextmanager
def driver_in_background(argv, cwd, env, log):
    """The sweep driver in a session of its own, its output in ``log``; killed with its process
    group if the test leaves it running."""
    env = {**env}
    env.pop("RAY_ADDRESS", None)
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.sweep", *argv],
            cwd=cwd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_for_log(proc, log, text, count=1, poll=0.5, timeout=240):
    """Until ``text`` appears ``count`` times in the driver's log; the driver must still run.
    (Watch the progress lines, not the database: querying SQLite while the driver creates its
    schema races with MLflow's migrations.)"""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and log.read_text().count(text) < count:
        time.sleep(poll)
    assert proc.poll() is None, log.read_text()[-3000:]


def test_killed_driver_resumes_without_losing_or_repeating_trials(tmp_path):
    """SIGKILL to the driver while trials wait mid-epoch at the gate (tests/gate.py) and the one
    that went through is finished in Tune's saved state: the resume loses and repeats nothing."""
    from tests.cluster.records import saved_after, saved_trials

    uri = new_database(tmp_path / "mlflow.db")  # MLflow's tables, from the session's template
    gate = Gate(tmp_path / "gate")
    env = {**os.environ, **gate.env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": REPO}
    log = tmp_path / "driver.log"
    experiment = tmp_path / "sweeps" / "k1" / GATED
    try:
        with driver_in_background([*ARGS, *GATED_ARGS], tmp_path, env, log) as proc:
            waiting = gate.wait_for_waiting(2, why=lambda: log.read_text()[-3000:])
            first = gate.passed()
            wait_for_log(proc, log, f"[{GATED}] trial {first} ")
            c, runs = child_runs(uri)
            before = {r.data.tags["ray.trial_id"]: history(c, r) for r in runs if r.info.status == "FINISHED"}
            assert set(before) == {first}
            queried = time.time() + 1.0  # after the file system's mtime granularity
            wait_until(lambda: saved_after(experiment, queried), proc, log)
            saved = saved_trials(experiment)
            assert saved[first]["status"] == "TERMINATED" and all(
                saved[t]["status"] == "RUNNING" for t in waiting
            )
            proc.send_signal(signal.SIGKILL)  # the driver only, as when a head pod dies
            proc.wait(timeout=30)
    finally:
        gate.open()

    # the tracking database moves while the driver is down: the resume is told its new URI, and
    # Tune's restored callbacks must write there, not to the URI they were pickled with
    moved = tmp_path / "moved.db"
    shutil.copy(tmp_path / "mlflow.db", moved)
    stamp = (tmp_path / "mlflow.db").stat().st_mtime_ns
    uri = f"sqlite:///{moved}"
    out = run_driver(["--resume", "k1", "--tracking-uri", uri], tmp_path, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "restoring" in out.stdout
    assert (tmp_path / "mlflow.db").stat().st_mtime_ns == stamp

    c, runs = child_runs(uri)
    recorded = [r for r in runs if r.info.status != "KILLED"]  # KILLED: lost before Ray saved it
    ids = [r.data.tags["ray.trial_id"] for r in recorded]
    assert len(ids) == len(set(ids)) == 6  # the budget, each trial once
    assert all(r.info.status in ("FINISHED", "FAILED") for r in recorded)
    by_id = {r.data.tags["ray.trial_id"]: r for r in recorded}
    for trial_id, hist in before.items():  # finished trials were not run again
        assert history(c, by_id[trial_id]) == hist
    for r in recorded:
        steps = [s for s, _ in history(c, r)]
        assert steps == sorted(set(steps)), "an epoch was logged twice"
    (parent,) = c.search_runs([runs[0].info.experiment_id], "tags.`sweep.role` = 'parent'")
    assert parent.info.status == "FINISHED"
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"frontier.csv", "frontier.json"}


def wait_until(check, proc, log, timeout=300):
    deadline = time.time() + timeout
    while not check():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def test_kills_in_the_closing_work_resume_to_one_record_each(tmp_path):
    """SIGKILL after the trials, after a model upload and before the frontier files, resuming
    each time, the first resume from a moved tracking database (--tracking-uri changes): the
    sweep ends with every trial once in the current database, the frontier files logged, and
    each winner uploaded and registered exactly once."""
    from mlflow.tracking import MlflowClient

    old_db, new_db = tmp_path / "old.db", tmp_path / "moved.db"
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    argv = ["--dataset", "synthetic", "--accs", "0.3,0.4", "--trials", "3", "--epochs", "3", "--name", "k2",
            "--synthetic-size", "512", "--val-acr-samples", "50", "--max-concurrent", "2", "--threads", "1",
            "--scheduler", "none"]  # fmt: skip
    out = run_driver([*argv, "--tracking-uri", new_database(old_db)], tmp_path, env, "after-trials")
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert "[kill point] after-trials" in out.stderr
    shutil.copy(old_db, new_db)  # the database moves; the resume is told the new URI
    stamp = old_db.stat().st_mtime_ns
    new_uri = f"sqlite:///{new_db}"
    for kill_at in ("after-model-upload", "before-frontier-files", None):
        out = run_driver(["--resume", "k2", "--tracking-uri", new_uri], tmp_path, env, kill_at)
        if kill_at:
            assert out.returncode == -signal.SIGKILL and f"[kill point] {kill_at}" in out.stderr, out.stderr[
                -3000:
            ]
    assert out.returncode == 0, out.stderr[-3000:]
    assert old_db.stat().st_mtime_ns == stamp  # nothing went to the old database

    c, runs = child_runs(new_uri)
    ids = [r.data.tags["ray.trial_id"] for r in runs]
    assert len(ids) == len(set(ids)) == 3 and all(r.info.status == "FINISHED" for r in runs)
    exp = runs[0].info.experiment_id
    (parent,) = c.search_runs([exp], "tags.`sweep.role` = 'parent'")
    assert parent.info.status == "FINISHED"
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {
        "frontier.csv",
        "frontier.json",
        "frontier.html",
    }
    rows = [
        r
        for r in json.loads((tmp_path / "sweeps" / "k2" / "frontier.json").read_text())
        if r["status"] == "ok"
    ]
    assert rows, "the synthetic targets are low: some must be feasible"
    for row in rows:
        versions = c.search_model_versions(f"name='{row['registered_model']}'")
        assert len(versions) == 1 and versions[0].run_id == parent.info.run_id
        assert row["model_uri"] == f"models:/{row['registered_model']}/1"
    logged = MlflowClient(new_uri).search_logged_models([exp])
    names = [m.name for m in logged]
    assert len(names) == len(set(names)) == len(rows)  # no second upload of a winner


def test_ctrl_c_stops_the_whole_sweep_and_resume_finishes_it(tmp_path):
    """SIGINT (Ctrl+C) during the first method's search: Ray Tune saves and ends that search,
    and the sweep stops there (exit 130, the resume command printed) instead of going on to the
    next method and publishing a frontier of an unfinished search; --resume then finishes both."""
    uri = new_database(tmp_path / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    gate = Gate(tmp_path / "gate")
    env.update(gate.env, PYTHONPATH=REPO)
    argv = ["--dataset", "synthetic", "--accs", "0.5", "--methods", f"{GATED},ibp", "--trials", "4",
            "--epochs", "2", "--name", "k3", "--synthetic-size", "512", "--val-acr-samples", "50",
            "--max-concurrent", "2", "--threads", "1", "--scheduler", "none", "--no-register",
            "--plugins", "tests.gated_method"]  # fmt: skip
    log = tmp_path / "driver.log"
    try:
        with driver_in_background(argv, tmp_path, env, log) as proc:
            gate.wait_for_waiting(2, why=lambda: log.read_text()[-3000:])  # the search is mid-way
            wait_for_log(proc, log, f"[{GATED}] trial ", poll=0.2)
            proc.send_signal(signal.SIGINT)  # the driver only, as a terminal's Ctrl+C reaches Python
            proc.wait(timeout=120)
    finally:
        gate.open()
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "continue with --resume k3" in text
    assert "[ibp]" not in text  # the next method did not start
    sweep = tmp_path / "sweeps" / "k3"
    assert not (sweep / "frontier.json").exists() and not (sweep / "ibp").exists()
    c, runs = child_runs(uri)
    (parent,) = c.search_runs([runs[0].info.experiment_id], "tags.`sweep.role` = 'parent'")
    assert parent.info.status == "KILLED"

    out = run_driver(["--resume", "k3"], tmp_path, env)
    assert out.returncode == 0, out.stderr[-3000:]
    c, runs = child_runs(uri)
    recorded = [r for r in runs if r.info.status != "KILLED"]
    methods = sorted(r.data.params["method"] for r in recorded)
    assert methods == [GATED] * 4 + ["ibp"] * 4, methods
    for r in recorded:
        steps = [s for s, _ in history(c, r)]
        assert steps == sorted(set(steps)) and steps[-1] == 2, "an epoch lost or logged twice"
    frontier = json.loads((sweep / "frontier.json").read_text())
    assert {r["method"] for r in frontier} == {GATED, "ibp"}


def test_a_driver_killed_in_the_confirm_stage_resumes_without_retraining(tmp_path):
    """SIGKILL after a confirm round trained, before its retrains were certified or recorded:
    --resume restores the round from its Tune experiment (no retrain trains again, no search
    trial either) and records each retrain once."""
    uri = new_database(tmp_path / "mlflow.db")
    builds = tmp_path / "builds.txt"  # one line per training run (tests/lucky_method.py)
    env = {**os.environ, "PYTHONPATH": REPO, "LUCKY_BUILD_LOG": str(builds)}
    argv = ["--dataset", "synthetic", "--accs", "0.3", "--methods", "lucky-ibp", "--plugins",
            "tests.lucky_method", "--trials", "2", "--epochs", "2", "--name", "k4", "--synthetic-size",
            "512", "--val-acr-samples", "50", "--test-samples", "50", "--max-concurrent", "2", "--threads",
            "1", "--scheduler", "none", "--no-register", "--fixed", "lucky=false,lr=0.01",
            "--confirm-seeds", "2", "--confirm-candidates", "1", "--tracking-uri", uri]  # fmt: skip
    out = run_driver(argv, tmp_path, env, "after-confirm-round")
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert "[kill point] after-confirm-round" in out.stderr
    trained = sorted(builds.read_text().splitlines())
    assert trained == ["False 1", "False 2", "False None", "False None"]  # 2 search trials, 2 retrains

    out = run_driver(["--resume", "k4", "--tracking-uri", uri], tmp_path, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[confirm] restoring" in out.stdout
    assert sorted(builds.read_text().splitlines()) == trained

    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("acert-sweep-synthetic")
    runs = c.search_runs([exp.experiment_id], "tags.`sweep.role` = 'confirm'")
    assert sorted(r.data.tags["confirm.seed"] for r in runs) == ["1", "2"]
    assert all(r.info.status == "FINISHED" and "test_acr" in r.data.metrics for r in runs)
    for r in runs:  # each epoch logged once, while it trained; the restore logged none again
        assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_acr")) == [1, 2]
    (row,) = json.loads((tmp_path / "sweeps" / "k4" / "frontier.json").read_text())
    assert row["confirm_status"] == "confirmed" and row["confirm_seeds"] == [1, 2]
