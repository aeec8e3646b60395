"""The cluster path for real, on one machine: the cpu-dev overlay's pods as processes, a sweep
submitted as its RayJob would be, and a pod lost mid-sweep: the head, a worker, PostgreSQL.

What runs comes from the rendered manifests (``kubectl kustomize k8s/overlays/cpu-dev``):
PostgreSQL with the StatefulSet's credentials; MLflow's init steps and ``mlflow server`` with the
Deployment's arguments (PostgreSQL backend, proxied artifacts); ``ray start --head`` and one
``ray start --address`` worker with token authentication; the RayJob's entrypoint, submitted as
KubeRay's submitter does, with every flag kept and only the sizes made small (``SMALL``). The
Optuna studies go to PostgreSQL (``--optuna-storage`` of the manifest), the data is fetched by
the head's prefetch step, never by trials.

The trials are ACERT behind a gate (``GATED``: tests/gated_method.py, tests/gate.py): the first
trial trains through and finishes; every other one waits at its first step, mid-epoch, until the
test opens the gate. A fault is injected once the finished trial is in MLflow and in Tune's saved
experiment state (written every 2 s) and every trial in flight waits at the gate: what happens
then does not depend on how fast or loaded the machine is.

- The head "pod" (every process it ran, the driver included) is SIGKILLed. The worker's raylet
  gives up on the lost head and exits, as a worker pod would (or the worker is replaced after
  30 s); a new head and worker start and the same command is resubmitted under the same
  submission id, as the submitter Job's retry does.
- The worker pod is SIGKILLed (no SIGTERM: its trials cannot save) and a new one starts; the
  driver lives on and runs the lost trials again (``--max-failures``).
- PostgreSQL (MLflow's backend and the Optuna studies) is SIGKILLed; the trials go on and the
  driver's MLflow requests fail (the test waits for one) until it is back on its data.
- The MLflow server is SIGKILLed; the trials go on and finish with no server, the driver's
  record waits in its journal (the test waits until it provably holds entries MLflow has not
  seen, which the client's retries gave up on, and every trial has ended), then the server's
  container restarts and the journal is replayed.

Each sweep must finish with every trial once in MLflow and in Optuna, finished trials not run
again, the frontier files logged, each winner registered once. The timings are printed and
written to ``rehearsal.json`` in the test's folder.

What only a real cluster shows (k8s/README.md, "Checking without a cluster"): the operator's
behaviour, Pod Security admission, scheduling (GPUs, priorities, affinity), NetworkPolicies,
volumes and image pulls.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gate import Gate
from tests.k8s.kubectl import render, require_kubectl
from tests.k8s.sweep_policy import sweep_violations

from . import processes as ps
from .local_cluster import Rehearsal, find, wait_for_exit
from .records import check_records, epochs_rerun, finished_trials, saved_after, saved_trials
from .translate import flag_values

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAY = "cpu-dev"
# The sizes of a sweep that fits this 2-core machine; every other flag is the manifest's...
SMALL = {
    "--dataset": "synthetic",
    "--accs": "0.3,0.4",
    "--trials": "4",
    "--epochs": "3",
    "--synthetic-size": "512",
    "--val-acr-samples": "50",
    "--test-samples": "100",
}
# ...but the method: ACERT behind the test's gate, a plugin as a user's own method would be.
METHOD = "gated-acert"
GATED = {"--methods": METHOD, "--plugins": "tests.gated_method"}
# What a restarted job relies on: these must stay in the manifest's entrypoint.
NEEDED = (
    "--name",
    "--resume-if-exists",
    "--storage",
    "--shared-storage",
    "--address",
    "--tracking-uri",
    "--optuna-storage",
    "--no-download",
    "--max-concurrent",
)
SUBMISSION_ID = "rehearsal-attempt-1"  # KubeRay's submitter retries reuse the attempt's id
# What ``mlflow server`` logs when a request fails (e.g. on a lost database connection).
HANDLER_ERROR = "ERROR mlflow.server.handlers: Error in"


def require_modules() -> None:
    """The rehearsal's Python needs: the PostgreSQL driver and Ray's dashboard (job submission)."""
    import importlib.util

    missing = [
        m for m in ("psycopg2", "aiohttp_cors", "prometheus_client") if importlib.util.find_spec(m) is None
    ]
    if missing:
        reason = f"missing {missing}: pip install psycopg2-binary 'ray[default]' (the dev extras)"
        if ps.ci_is_set():
            pytest.fail(f"{reason}; CI is set, so the rehearsal may not skip", pytrace=False)
        pytest.skip(reason)


def small_sweep(objects: list[dict]) -> list[dict]:
    """The overlay as rehearsed: the entrypoint with SMALL and GATED and the head's prefetch
    step for the same data set. It must still pass the sweep policy of tests/k8s."""
    spec = find(objects, "RayJob")["spec"]
    words = shlex.split(spec["entrypoint"])
    flags = flag_values(words[3:])
    assert set(NEEDED) <= set(flags), f"the entrypoint lost {set(NEEDED) - set(flags)}"
    flags.update({**SMALL, **GATED})
    spec["entrypoint"] = shlex.join(
        words[:3] + [w for f, v in flags.items() for w in ([f] if v is None else [f, v])]
    )
    for init in spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["initContainers"]:
        if init["name"] == "prefetch-data":
            init["args"][0] = SMALL["--dataset"]
    assert sweep_violations(objects) == []
    return objects


@pytest.fixture
def objects() -> list[dict]:
    kubectl = require_kubectl()
    require_modules()
    return small_sweep(render(K8S / "overlays" / OVERLAY, kubectl))


@pytest.fixture
def gate(tmp_path, monkeypatch):
    """The trials' gate; every pod started from now on inherits its folder, and the repository
    on PYTHONPATH (where the image would have the plugin installed). Opened on teardown, so
    that no trial outlives a failed test at the gate."""
    g = Gate(tmp_path / "gate")
    for k, v in g.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    try:
        yield g
    finally:
        g.open()


def sweep_flags(rh: Rehearsal) -> dict[str, str | None]:
    return flag_values(shlex.split(rh.job["spec"]["entrypoint"]))


def experiment(rh: Rehearsal) -> Path:
    return Path(rh.endpoints.path("/mnt/acert/sweeps")) / sweep_flags(rh)["--name"] / METHOD


def start_cluster(rh: Rehearsal) -> tuple[str, str]:
    """PostgreSQL, MLflow (refusing a request without the login), the head (its dashboard
    refusing a request without the token), one worker; returns (head, worker)."""
    rh.start_postgres()
    rh.start_mlflow()
    assert rh.mlflow_api_code(login=False) == 401, "MLflow must refuse a request without the login"
    head = rh.start_head()
    assert rh.http_code(f"{rh.dashboard}/api/jobs/") == 401, (
        "the dashboard must refuse a request without the token"
    )
    return head, rh.start_worker()


@dataclass
class AtTheGate:
    """A submitted sweep with one trial finished and every trial in flight waiting mid-epoch."""

    submitter: str
    log: ps.LogWatch
    finished: dict  # {trial id: val_acr history} in MLflow
    waiting: list[str]  # trial ids
    saved: dict  # Tune's saved state: {trial id: {"status", "num_failures"}}


def run_to_the_gate(rh: Rehearsal, gate: Gate, worker: str) -> AtTheGate:
    """Submit the sweep and wait until the trial that went through is FINISHED in MLflow, the
    trials in flight (--max-concurrent) wait at the gate and Tune has saved that state."""
    submitter, log = rh.submit(SUBMISSION_ID)

    def why() -> str:
        return ps.tail(log.path) + "\n" + ps.tail(rh.logs / f"{worker}.log", 10)

    waiting = gate.wait_for_waiting(int(sweep_flags(rh)["--max-concurrent"]), why=why)
    first = gate.passed()
    dataset = SMALL["--dataset"]
    ps.wait_until(
        f"trial {first}, which went through the gate, is FINISHED in MLflow",
        lambda: first in finished_trials(rh.tracking_uri, dataset),
        300,
        why=why,
    )
    finished = finished_trials(rh.tracking_uri, dataset)
    assert set(finished) == {first}, f"only {first} went through the gate: {sorted(finished)}"
    queried = time.time() + 1.0  # after the mtime's granularity
    ps.wait_until(
        "Tune saves its state after that", lambda: saved_after(experiment(rh), queried), 120, 0.2, why
    )
    saved = saved_trials(experiment(rh))
    assert saved[first]["status"] == "TERMINATED", saved
    assert all(saved[t]["status"] == "RUNNING" for t in waiting), (waiting, saved)
    assert rh.job_status(SUBMISSION_ID) == "RUNNING", ps.tail(log.path)
    return AtTheGate(submitter, log, finished, waiting, saved)


def wait_for_the_end(rh: Rehearsal, submitter: str, log: ps.LogWatch) -> float:
    ps.wait_until(
        "the sweep ends",
        lambda: log.poll() is not None and not rh.pod_alive(submitter),
        900,
        every_s=1,
        why=lambda: ps.tail(log.path),
    )
    t_end = time.monotonic()
    assert rh.job_status(SUBMISSION_ID) == "SUCCEEDED", ps.tail(log.path, 80)
    return t_end


def records(rh: Rehearsal, before: dict) -> dict[str, int]:
    return check_records(
        rh,
        before,
        name=sweep_flags(rh)["--name"],
        method=METHOD,
        dataset=SMALL["--dataset"],
        budget=int(SMALL["--trials"]),
    )


def report(tmp_path: Path, what: str, **figures) -> None:
    (tmp_path / "rehearsal.json").write_text(json.dumps(figures, indent=2))
    print(f"rehearsal, {what}:", json.dumps(figures))


def test_a_killed_head_resumes_the_sweep_from_the_manifests(tmp_path, objects, gate):
    t0 = time.monotonic()
    with Rehearsal(objects, tmp_path, ps.require_postgres()) as rh:
        head, worker = start_cluster(rh)
        t_up = time.monotonic()
        at = run_to_the_gate(rh, gate, worker)

        t_kill = time.monotonic()
        killed = rh.kill_pod(head)  # the head pod is lost: GCS, raylet, dashboard, the driver
        # The worker's raylet exits once it gives up on the lost GCS (10 s asked, often ~70 s on a
        # loaded machine); after 30 s its "pod" is replaced anyway, as KubeRay replaces a failed one.
        worker_gone = wait_for_exit(lambda: rh.pod_alive(worker), 30)
        rh.kill_pod(worker)
        rh.kill_pod(at.submitter)  # `ray job logs --follow` lost the head: the submitter pod fails
        rh.start_head()
        rh.start_worker()
        gate.open()  # the restored trials train through
        submitter, log2 = rh.submit(SUBMISSION_ID)  # the submitter Job's retry: the same command
        t_end = wait_for_the_end(rh, submitter, log2)
        assert log2.first("restoring") is not None, "the resubmitted sweep did not resume"
        faults = records(rh, at.finished)
        report(
            tmp_path,
            "head killed",
            wall_s=round(time.monotonic() - t0, 1),
            setup_s=round(t_up - t0, 1),
            processes_killed_with_the_head=killed,
            worker_exit_after_head_loss_s=None if worker_gone is None else round(worker_gone, 1),
            waiting_at_the_kill=at.waiting,
            saved_trials_at_kill=at.saved,
            epochs_rerun=epochs_rerun(experiment(rh)),
            **faults,
            kill_to_restored_s=round(log2.first("restoring") - t_kill, 1),
            kill_to_end_s=round(t_end - t_kill, 1),
        )


def test_a_worker_killed_mid_epoch_is_replaced_and_its_trials_run_again(tmp_path, objects, gate):
    t0 = time.monotonic()
    with Rehearsal(objects, tmp_path, ps.require_postgres()) as rh:
        _, worker = start_cluster(rh)
        at = run_to_the_gate(rh, gate, worker)

        t_kill = time.monotonic()
        killed = rh.kill_pod(worker)  # SIGKILL, no SIGTERM: the trials cannot save anything
        rh.start_worker()  # KubeRay replaces the lost worker pod
        gate.open()
        t_end = wait_for_the_end(rh, at.submitter, at.log)
        assert at.log.first("restoring") is None, "the driver was restarted: only the worker was lost"
        faults = records(rh, at.finished)
        failures = {t: s["num_failures"] for t, s in saved_trials(experiment(rh)).items()}
        assert all(failures[t] == 1 for t in at.waiting), f"each killed trial runs once more: {failures}"
        report(
            tmp_path,
            "worker killed",
            wall_s=round(time.monotonic() - t0, 1),
            processes_killed_with_the_worker=killed,
            waiting_at_the_kill=at.waiting,
            trial_failures=failures,
            **faults,
            kill_to_end_s=round(t_end - t_kill, 1),
        )


def test_postgres_restarted_mid_sweep(tmp_path, objects, gate):
    t0 = time.monotonic()
    with Rehearsal(objects, tmp_path, ps.require_postgres()) as rh:
        _, worker = start_cluster(rh)
        at = run_to_the_gate(rh, gate, worker)
        server_log = ps.LogWatch(rh.logs / "mlflow-1.log")
        before = server_log.count(HANDLER_ERROR)

        t_stop = time.monotonic()
        killed = rh.stop_postgres()
        gate.open()  # the trials train on and report while the database is down
        # Only the driver sends MLflow requests now (the test sends none until the sweep ends):
        # a request handler's error is the sweep meeting the outage.
        ps.wait_until(
            "a request of the sweep fails on the lost database",
            lambda: server_log.count(HANDLER_ERROR) > before,
            600,
            why=lambda: ps.tail(at.log.path) + "\n" + ps.tail(server_log.path, 10),
        )
        rh.restart_postgres()
        t_back = time.monotonic()
        t_end = wait_for_the_end(rh, at.submitter, at.log)
        assert at.log.first("restoring") is None, "the driver was restarted: only PostgreSQL was lost"
        faults = records(rh, at.finished)
        report(
            tmp_path,
            "PostgreSQL restarted",
            wall_s=round(time.monotonic() - t0, 1),
            processes_killed_with_postgres=killed,
            mlflow_request_errors=server_log.count(HANDLER_ERROR) - before,
            outage_s=round(t_back - t_stop, 1),
            **faults,
            back_to_end_s=round(t_end - t_back, 1),
        )


def sweep_journal(rh: Rehearsal) -> tuple[list[dict], int]:
    """The driver's tracking journal (orchestrator/tracking/journal.py) and how many of its
    entries MLflow has."""
    folder = experiment(rh).parent
    path = folder / "tracking.journal"
    if not path.exists():
        return [], 0
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    applied = folder / "tracking.applied"
    return entries, int(applied.read_text() or 0) if applied.exists() else 0


def test_mlflow_killed_mid_sweep_and_back_after_the_client_gave_up(tmp_path, objects, gate):
    t0 = time.monotonic()
    with Rehearsal(objects, tmp_path, ps.require_postgres()) as rh:
        _, worker = start_cluster(rh)
        at = run_to_the_gate(rh, gate, worker)
        budget = int(SMALL["--trials"])

        def held_back() -> bool:
            entries, applied = sweep_journal(rh)
            ended = {e["run"] for e in entries if e["op"] == "status" and e["run"].startswith("trial:")}
            return applied < len(entries) and len(ended) >= budget

        t_kill = time.monotonic()
        killed = rh.kill_pod(f"mlflow-{rh.generation['mlflow']}")
        gate.open()  # the trials train on and end while the server is gone
        ps.wait_until(
            "every trial ended with the record held back in the journal",
            held_back,
            600,
            why=lambda: ps.tail(at.log.path),
        )
        entries, applied = sweep_journal(rh)
        rh.start_mlflow(init=False)  # the server's container restarts in its pod
        t_back = time.monotonic()
        t_end = wait_for_the_end(rh, at.submitter, at.log)
        assert at.log.first("restoring") is None, "the driver was restarted: only MLflow was lost"
        assert at.log.first("MLflow is back after") is not None, ps.tail(at.log.path)
        faults = records(rh, at.finished)
        after, applied_after = sweep_journal(rh)
        assert applied_after == len(after), "the journal was not replayed to the end"
        report(
            tmp_path,
            "MLflow killed",
            wall_s=round(time.monotonic() - t0, 1),
            processes_killed_with_mlflow=killed,
            entries_held_back=len(entries) - applied,
            outage_s=round(t_back - t_kill, 1),
            **faults,
            back_to_end_s=round(t_end - t_back, 1),
        )
