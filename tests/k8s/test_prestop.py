"""The worker pods' preStop hook, run here as Kubernetes runs it: it sends SIGTERM to the trial
processes (Tune's ``ray::ImplicitFunc``) and to nothing else, and waits for them to end.

The hook matches every process of the machine whose title starts with its pattern, so the test
runs it with the pattern made unique to this test: a sweep running beside the tests keeps its
trials (the first version of this test, with the real pattern, preempted them)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# a stand-in for a trial process: its process title as Ray sets it, exit code 3 on SIGTERM
STAND_IN = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); time.sleep(120)"


def worker_pod_spec() -> dict:
    (job,) = [
        o for o in yaml.safe_load_all((REPO / "k8s/base/rayjob.yaml").read_text()) if o["kind"] == "RayJob"
    ]
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return group["template"]["spec"]


def process(title: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", f'exec -a "{title}" {sys.executable} -c "{STAND_IN}"'])


def test_the_prestop_hook_terminates_the_trial_processes_only():
    spec = worker_pod_spec()
    (container,) = spec["containers"]
    shell, flag, script = container["lifecycle"]["preStop"]["exec"]["command"]
    assert script.count('"ray::ImplicitFunc"*)') == 1
    mine = f"ray::ImplicitFunc-test{os.getpid()}"
    command = [shell, flag, script.replace('"ray::ImplicitFunc"*)', f'"{mine}"*)')]
    trials = [process(f"{mine}.train"), process(mine)]
    other = process(f"ray::DashboardAgent-test{os.getpid()}")
    try:
        time.sleep(1.0)  # the stand-ins have set their handlers
        t0 = time.monotonic()
        hook = subprocess.run(command, capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
        assert hook.returncode == 0, hook.stderr
        assert [p.wait(timeout=5) for p in trials] == [3, 3]  # SIGTERM, handled
        assert other.poll() is None  # not a trial: left to Ray
        assert took < 20  # it waited for the trials, not for its 25-s limit
        assert spec["terminationGracePeriodSeconds"] > 25 + 5
    finally:
        for p in [*trials, other]:
            p.kill()
