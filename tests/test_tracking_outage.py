"""The MLflow server dies mid-sweep and comes back later than the client's retry window: the
sweep trains on, its record waits in the journal, and is replayed once, in order, when the
server is back; also when the driver itself was killed during the outage and resumed.

The outage is made deterministic with the gate of tests/gate.py: a trial waits mid-epoch while
the server is killed, then the gate opens and the sweep runs on with no server. The test
restarts the server only once the journal provably holds entries MLflow has not seen
(``tracking.applied`` behind ``tracking.journal``) and every trial has finished, so the
outage spans the trials' end whatever the machine's speed. The client's retry window is made
short with MLflow's own variables (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``), as a user can.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.gate import GATED_METHOD as NAME
from tests.gate import Gate
from tests.mlflow_schema import new_database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TRIALS = 3


class Server:
    """``mlflow server`` on a fixed port and database, stopped and started again at will."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "server.log", "a")  # noqa: SIM115 - the server's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its workers, no goodbye
            self.proc.wait(timeout=30)


def argv(tmp: Path, uri: str) -> list[str]:
    return [
        "--dataset", "synthetic", "--accs", "0.3,0.4", "--trials", str(TRIALS), "--epochs", "2",
        "--methods", NAME, "--plugins", "tests.gated_method", "--name", "outage",
        "--synthetic-size", "512", "--val-acr-samples", "50", "--test-samples", "100",
        "--max-concurrent", "1", "--scheduler", "none", "--threads", "1",
        "--storage", str(tmp / "sweeps"), "--data-dir", str(tmp / "data"),
        "--tracking-uri", uri, "--tracking-wait", "600",
    ]  # fmt: skip


@contextlib.contextmanager
def driver(args: list[str], cwd: Path, env: dict, log: Path):
    with open(log, "a") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.sweep", *args],
            cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def journal(sweep: Path) -> tuple[list[dict], int]:
    path = sweep / "tracking.journal"
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    applied = int((sweep / "tracking.applied").read_text() or 0)
    return entries, applied


def ended_trials(entries: list[dict]) -> set[str]:
    return {e["run"] for e in entries if e["op"] == "status" and e["run"].startswith("trial:")}


def wait_for(what: str, check, proc, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None:
            raise AssertionError(
                f"the driver ended (rc {proc.returncode}) before {what}:\n{log.read_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def outage_until_trials_end(tmp: Path, server: Server, proc, log: Path, gate: Gate) -> None:
    """A trial waits mid-epoch; the server dies; the sweep runs all its trials with no server."""
    sweep = tmp / "sweeps" / "outage"
    gate.wait_for_waiting(1, why=lambda: log.read_text()[-3000:])
    server.kill()
    gate.open()

    def offline_and_done() -> bool:
        if not (sweep / "tracking.journal").exists():
            return False
        entries, applied = journal(sweep)
        return (
            applied < len(entries) and len(ended_trials(entries[applied:]) | ended_trials(entries)) >= TRIALS
        )

    wait_for("every trial ended with the server down", offline_and_done, proc, log)
    entries, applied = journal(sweep)
    assert len(entries) - applied >= 2, "the outage must hold back part of the record"
    assert "unreachable" in log.read_text()


def check_record(uri: str, tmp: Path) -> None:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("acert-sweep-synthetic")
    runs = c.search_runs([exp.experiment_id], "", run_view_type=ViewType.ALL, max_results=100)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("sweep.role") == "trial" and r.info.status != "KILLED"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [r.data.tags["ray.trial_id"] for r in trials]
    assert len(ids) == len(set(ids)) == TRIALS, sorted(ids)
    assert {r.info.status for r in trials} == {"FINISHED"}
    for r in trials:
        hist = [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "val_acr")]
        assert [s for s, _ in hist] == [1, 2], (r.data.tags["ray.trial_id"], hist)  # each epoch once
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.data.tags["sweep.id"] == parents[0].data.tags["sweep.id"]
    assert {a.path for a in c.list_artifacts(parents[0].info.run_id)} >= {"frontier.json", "frontier.html"}
    rows = json.loads((tmp / "sweeps" / "outage" / "frontier.json").read_text())
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok, "the targets are low: some must be feasible"
    for row in ok:
        (version,) = c.search_model_versions(f"name='{row['registered_model']}'")
        assert version.run_id == parents[0].info.run_id
        assert row["run_id"] in {r.info.run_id for r in trials}


@pytest.fixture
def setting(tmp_path):
    server = Server(tmp_path)
    new_database(tmp_path / "server.db")  # MLflow's tables, from the session's template
    server.start()
    gate = Gate(tmp_path / "gate")
    env = {
        **os.environ,
        **gate.env,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    yield server, gate, env
    gate.open()
    server.kill()


def test_the_sweep_trains_through_an_mlflow_outage_and_replays_its_record_once(tmp_path, setting):
    server, gate, env = setting
    log = tmp_path / "driver.log"
    with driver(argv(tmp_path, server.uri), tmp_path, env, log) as proc:
        outage_until_trials_end(tmp_path, server, proc, log, gate)
        server.start()  # back, long after the client's retry window (0 retries) ran out
        assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert "MLflow is back after" in text and "journal entries replayed" in text
    entries, applied = journal(tmp_path / "sweeps" / "outage")
    assert applied == len(entries)
    check_record(server.uri, tmp_path)


def test_a_driver_killed_during_an_outage_resumes_and_replays_the_journal_once(tmp_path, setting):
    server, gate, env = setting
    log = tmp_path / "driver.log"
    with driver(argv(tmp_path, server.uri), tmp_path, env, log) as proc:
        outage_until_trials_end(tmp_path, server, proc, log, gate)
        os.killpg(proc.pid, signal.SIGKILL)  # the head pod is lost in the middle of the outage
        proc.wait(timeout=30)
    server.start()
    resume = ["--resume", "outage", "--storage", str(tmp_path / "sweeps"), "--tracking-uri", server.uri]
    with driver(resume, tmp_path, env, log) as proc:
        assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    entries, applied = journal(tmp_path / "sweeps" / "outage")
    assert applied == len(entries)
    check_record(server.uri, tmp_path)
