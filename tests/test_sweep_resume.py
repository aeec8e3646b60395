"""A sweep whose driver is SIGKILLed mid-way completes with --resume: no trial lost or repeated."""

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
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


def test_killed_driver_resumes_without_losing_or_repeating_trials(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "driver.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.sweep", *ARGS],
            cwd=tmp_path,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Watch the progress lines, not the database: querying SQLite while the driver creates
        # its schema races with MLflow's migrations.
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and log.read_text().count("[acert] trial ") < 2:
            time.sleep(0.5)
        assert proc.poll() is None, log.read_text()[-3000:]
        c, runs = child_runs(uri)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        assert len(finished) >= 2
        before = {r.data.tags["ray.trial_id"]: history(c, r) for r in finished}
        proc.send_signal(signal.SIGKILL)  # the driver only, as when a head pod dies
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "--resume", "k1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "restoring" in out.stdout

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
