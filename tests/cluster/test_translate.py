"""The rehearsal's machinery without a cluster: manifest -> local command, markers and kills."""

from __future__ import annotations

import os
import sys
import time

import pytest

from . import processes as ps
from .translate import (
    Endpoints,
    container_env,
    flag_values,
    k8s_expand,
    local_argv,
    ray_start_params,
    sweep_argv,
)

SECRETS = {"acert-postgres": {"username": "mlflow", "password": "s3cr3t"}}


def endpoints(tmp_path) -> Endpoints:
    e = Endpoints(tmp_path)
    e.add("postgres", 5432, 40001)
    e.add("mlflow", 5000, 40002)
    return e


def test_k8s_expand_like_the_kubelet():
    env = {"A": "1", "B": "two"}
    assert k8s_expand("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"


def test_container_env_reads_values_and_secrets_in_order():
    c = {
        "env": [
            {"name": "USER", "valueFrom": {"secretKeyRef": {"name": "acert-postgres", "key": "username"}}},
            {"name": "URL", "value": "postgresql://$(USER)@db"},
        ]
    }
    assert container_env(c, SECRETS) == {"USER": "mlflow", "URL": "postgresql://mlflow@db"}
    with pytest.raises(ValueError, match="only value and secretKeyRef"):
        container_env({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}, SECRETS)


def test_endpoints_map_services_paths_and_libpq(tmp_path):
    e = endpoints(tmp_path)
    assert e.url("postgresql+psycopg2://$(U):$(P)@postgres:5432/mlflow") == (
        "postgresql+psycopg2://$(U):$(P)@127.0.0.1:40001/mlflow"
    )
    assert e.url("http://mlflow:5000") == "http://127.0.0.1:40002"
    assert e.url("http://mlflow:50000") == "http://mlflow:50000"  # another port: not that Service
    assert e.path("/mnt/acert/data") == str(tmp_path / "mnt/acert/data")
    assert e.path("/opt/x") == "/opt/x"
    assert e.libpq({"PGHOST": "postgres", "PGPORT": "5432", "PGUSER": "u"}) == {
        "PGHOST": "127.0.0.1",
        "PGPORT": "40001",
        "PGUSER": "u",
    }


def test_local_argv_expands_maps_and_uses_this_python(tmp_path):
    c = {
        "command": ["python", "-m", "mlflow", "db", "upgrade"],
        "args": ["postgresql://$(U)@postgres:5432/mlflow"],
    }
    argv = local_argv(c, {"U": "mlflow"}, endpoints(tmp_path))
    assert argv == [
        sys.executable,
        "-m",
        "mlflow",
        "db",
        "upgrade",
        "postgresql://mlflow@127.0.0.1:40001/mlflow",
    ]


def test_sweep_argv_keeps_every_flag_and_overrides_sizes(tmp_path):
    entry = "python -m orchestrator.sweep --dataset mnist --no-download --storage /mnt/s --tracking-uri http://mlflow:5000"
    argv = sweep_argv(entry, {"--dataset": "synthetic", "--trials": "4"}, endpoints(tmp_path))
    assert argv[:3] == [sys.executable, "-m", "orchestrator.sweep"]
    assert flag_values(argv[3:]) == {
        "--dataset": "synthetic",
        "--no-download": None,
        "--storage": str(tmp_path / "mnt/s"),
        "--tracking-uri": "http://127.0.0.1:40002",
        "--trials": "4",
    }
    with pytest.raises(ValueError, match="not the sweep"):
        sweep_argv("python train.py", {}, endpoints(tmp_path))


def test_ray_start_params_bind_the_dashboard_to_loopback(tmp_path):
    params = {"num-cpus": "0", "dashboard-host": "0.0.0.0"}
    assert ray_start_params(params, endpoints(tmp_path)) == [
        "--num-cpus",
        "0",
        "--dashboard-host",
        "127.0.0.1",
    ]


def test_a_marked_process_tree_is_found_and_killed_whole(tmp_path):
    marker = f"test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, ps.MARKER: f"{marker}/pod-1"}
    # a parent that starts a child in a new session and exits: the child is orphaned
    script = "import subprocess, sys; subprocess.Popen(['sleep', '300'], start_new_session=True)"
    ps.start([sys.executable, "-c", script], env=env, log=tmp_path / "log").wait(timeout=60)
    ps.wait_until("the orphan is found", lambda: ps.marked(f"{marker}/"), 30, every_s=0.2)
    assert ps.kill_marked(f"{marker}/pod-1") == 1
    assert ps.marked(f"{marker}/") == []


def test_log_watch_times_each_line_once(tmp_path):
    log = tmp_path / "log"
    watch = ps.LogWatch(log)
    assert watch.poll() == []
    log.write_text("a\nb")
    assert [ln for _, ln in watch.poll()] == ["a"]  # "b" is not complete yet
    with open(log, "a") as f:
        f.write("\nc trial\n")
    assert [ln for _, ln in watch.poll()] == ["a", "b", "c trial"]
    assert watch.count("trial") == 1 and watch.first("b") is not None and watch.first("zzz") is None


def test_free_ports_are_distinct():
    ports = ps.free_ports(8)
    assert len(set(ports)) == 8


def test_postgres_binaries_or_a_reason(monkeypatch):
    found = ps.postgres_bin_dir()
    if found is not None:
        assert (found / "initdb").is_file() and (found / "postgres").is_file()
    monkeypatch.setattr(ps, "postgres_bin_dir", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        ps.require_postgres()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        ps.require_postgres()
