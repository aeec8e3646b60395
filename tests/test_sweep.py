"""End-to-end sweeps on local Ray (2 CPUs), the synthetic dataset and the real trainer.

One Ray instance is shared by the module. The main sweep logs to a real ``mlflow server``
started here on 127.0.0.1 (SQLite backend, local artifacts); the failure-injection sweep logs
to a SQLite file, so both tracking paths are exercised.
"""

import collections
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.cli import SweepConfig
from orchestrator.sweep import run_sweep
from orchestrator.tracking import TAG_REASON, TAG_ROLE, TAG_SWEEP, TAG_TARGETS, experiment_name
from search_spaces import get_space

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TARGETS = (0.5, 0.7)


def small_config(tmp, name, tracking_uri, **kw):
    values = dict(
        dataset="synthetic",
        accs=TARGETS,
        trials=6,
        epochs=3,
        name=name,
        storage=str(tmp / "sweeps"),
        tracking_uri=tracking_uri,
        data_dir=str(tmp / "data"),
        synthetic_size=512,
        val_acr_samples=100,
        max_concurrent=2,
        max_failures=0,
        threads=1,
    )
    values.update(kw)
    return SweepConfig(**values)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'server.db'}",
            "--artifacts-destination",
            str(tmp / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("mlflow server did not start")
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served_sweep(ray_session, mlflow_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = small_config(tmp, "e2e", mlflow_server)
    t0 = time.time()
    rows = run_sweep(cfg)
    print(f"e2e sweep: {time.time() - t0:.1f} s")
    return cfg, rows


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_of(cfg, role):
    from mlflow.entities import ViewType

    c = client(cfg.tracking_uri)
    exp = c.get_experiment_by_name(experiment_name(cfg.dataset))
    flt = f"tags.`{TAG_SWEEP}` = '{cfg.name}' and tags.`{TAG_ROLE}` = '{role}'"
    return c.search_runs([exp.experiment_id], flt, run_view_type=ViewType.ALL, max_results=1000)


def test_parent_and_one_child_per_trial(served_sweep):
    cfg, rows = served_sweep
    (parent,) = runs_of(cfg, "parent")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["accs"] == "[0.5, 0.7]" and parent.data.params["trials"] == "6"
    assert parent.data.tags["git_commit"] and parent.data.tags["version.ray"] == "2.60.0"
    children = runs_of(cfg, "trial")
    assert len(children) == cfg.trials
    assert len({c.data.tags["ray.trial_id"] for c in children}) == cfg.trials
    c = client(cfg.tracking_uri)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status in ("FINISHED", "FAILED")
        assert {"val_acc", "val_acr", "train_loss"} <= set(child.data.metrics)
        assert {"kappa", "max_eps", "lr", "target"} <= set(child.data.params)
        history = c.get_metric_history(child.info.run_id, "val_acr")
        assert [m.step for m in history] == list(range(1, len(history) + 1))  # one value per epoch
        if child.info.status == "FINISHED":
            want = [t for t in TARGETS if child.data.metrics["val_acc"] >= t]
            assert child.data.tags[TAG_TARGETS] == (",".join(f"{t:g}" for t in want) or "none")


def test_frontier_artifacts_and_feasible_winners(served_sweep):
    cfg, rows = served_sweep
    (parent,) = runs_of(cfg, "parent")
    names = {a.path for a in client(cfg.tracking_uri).list_artifacts(parent.info.run_id)}
    assert {"frontier.csv", "frontier.json", "frontier.png", "frontier.html"} <= names
    assert [r["target"] for r in rows] == list(TARGETS)
    trials = {c.data.tags["ray.trial_id"]: c for c in runs_of(cfg, "trial")}
    # only trials that trained their full budget may win (ASHA-stopped ones are tagged)
    full = [
        c
        for c in trials.values()
        if c.info.status == "FINISHED" and c.data.tags.get("stopped_early") != "true"
    ]
    for row in rows:
        if row["status"] == "infeasible":
            assert not [c for c in full if c.data.metrics.get("val_acc", -1) >= row["target"]]
            continue
        assert row["val_acc"] >= row["target"] and row["epoch"] == cfg.epochs
        winner = trials[row["trial_id"]]
        assert row["run_id"] == winner.info.run_id and winner in full
        assert winner.data.metrics["val_acr"] == pytest.approx(row["val_acr"])
        # no full-budget feasible trial has a larger validation ACR
        assert all(
            c.data.metrics["val_acr"] <= row["val_acr"] + 1e-12
            for c in full
            if c.data.metrics["val_acc"] >= row["target"]
        )
        assert 0 <= row["test_acc"] <= 1 and row["test_acr"] >= 0
        assert {"cert_acc@0.05", "cert_acc@0.1"} <= set(row)
    saved = json.loads((SweepDir(cfg) / "frontier.json").read_text())
    assert [r["trial_id"] if r["status"] == "ok" else None for r in saved] == [
        r.get("trial_id") for r in rows
    ]


def test_the_local_optuna_record_is_a_journal_with_every_trial_once(served_sweep):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    cfg, _ = served_sweep
    folder = SweepDir(cfg)
    assert (folder / "optuna.journal").is_file() and not (folder / "optuna.db").exists()
    storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    recorded = []
    for name in optuna.get_all_study_names(storage=storage):
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        recorded += [t.user_attrs["ray_trial_id"] for t in trials if t.state != optuna.trial.TrialState.FAIL]
    assert len(recorded) == len(set(recorded)), "a trial is twice in the Optuna record"
    assert set(recorded) == {c.data.tags["ray.trial_id"] for c in runs_of(cfg, "trial")}


def test_optuna_record_defaults(tmp_path):
    from orchestrator.sweep import optuna_storage

    cfg = small_config(tmp_path, "rec", "sqlite:///x.db")
    assert optuna_storage(cfg) == str(Path(cfg.sweep_dir).resolve() / "optuna.journal")
    (Path(cfg.sweep_dir) / "optuna.db").touch()  # a sweep begun with the former SQLite record keeps it
    assert optuna_storage(cfg) == f"sqlite:///{Path(cfg.sweep_dir).resolve() / 'optuna.db'}"
    assert optuna_storage(
        small_config(tmp_path, "rec", "sqlite:///x.db", optuna_storage="postgresql://h/db")
    ) == ("postgresql://h/db")
    assert (
        optuna_storage(small_config(tmp_path, "rec", "sqlite:///x.db", storage="s3://bucket/sweeps")) is None
    )


def SweepDir(cfg):
    from pathlib import Path

    return Path(cfg.sweep_dir)


def test_registered_model_reproduces_its_test_accuracy(served_sweep):
    import mlflow
    import mlflow.pytorch

    from trainers.certify import evaluate
    from trainers.data import get_dataset, load_splits

    cfg, rows = served_sweep
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok, "the synthetic task is easy: some target must be feasible"
    mlflow.set_tracking_uri(cfg.tracking_uri)
    splits = load_splits("synthetic", synthetic_size=cfg.synthetic_size, seed=cfg.seed)
    d = get_dataset("synthetic")
    for row in ok:
        assert row["registered_model"] == f"acert-synthetic-acc{row['target']:g}"
        model = mlflow.pytorch.load_model(f"models:/{row['registered_model']}/latest")
        res = evaluate(
            model,
            splits.x_test,
            splits.y_test,
            eps_cap=d.eps_cap,
            cert_eps=d.cert_eps,
            max_eps=d.max_eps,
        )
        assert res["clean_acc"] == pytest.approx(row["test_acc"], abs=1e-9)
        assert res["acr"] == pytest.approx(row["test_acr"], rel=1e-6)


def test_recheck_recertifies_and_attacks_every_winner_in_fresh_processes(served_sweep, tmp_path):
    """python -m orchestrator.recheck: the frontier read from MLflow, each winner's checkpoint
    re-certified by trainers.verify in a new process, the same figures, no broken certificate."""
    cfg, rows = served_sweep
    out = tmp_path / "recheck"
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.recheck",
        "--sweep",
        cfg.name,
        "--tracking-uri",
        cfg.tracking_uri,
    ]
    proc = subprocess.run(
        [*cmd, "--output-dir", str(out), "--steps", "20", "--restarts", "1"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "recheck.json").read_text())
    winners = [r for r in rows if r["status"] == "ok"]
    assert report["ok"] and len(report["winners"]) == len(winners) >= 1
    for entry, row in zip(report["winners"], winners):
        assert entry["trial_id"] == row["trial_id"] and entry["matches"] and entry["sound"]
        assert entry["recomputed"]["test_acc"] == pytest.approx(row["test_acc"], abs=1e-6)
        assert entry["recomputed"]["test_acr"] == pytest.approx(row["test_acr"], abs=1e-6)
    # a trial that won several targets is checked once, under its lowest target
    checked = {e["trial_id"]: e["winner"] for e in reversed(report["winners"])}
    assert all((out / name / "summary.json").is_file() for name in checked.values())
    proc = subprocess.run(
        [*cmd[:4], "nope", *cmd[5:], "--output-dir", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "invalid --sweep 'nope'" in proc.stderr
    proc = subprocess.run(
        [*cmd, "--output-dir", str(out), "--methods", "acert,ibp"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "invalid --methods 'acert,ibp': ibp is not a method of" in proc.stderr


def test_recheck_compares_every_recorded_figure():
    from orchestrator.recheck import compare

    row = {"test_acc": 0.9, "test_acr": 0.05, "cert_acc@0.05": 0.6, "val_acc": 0.91}
    summary = {"clean_acc": 0.9, "acr": 0.0501, "cert_acc": {"0.05": 0.6}}
    assert compare(row, summary) == pytest.approx({"test_acc": 0.0, "test_acr": 1e-4, "cert_acc@0.05": 0.0})


def test_frontier_command_reads_mlflow_alone(served_sweep, tmp_path, capsys):
    from orchestrator import frontier

    cfg, rows = served_sweep
    assert (
        frontier.main(
            ["--datasets", "synthetic", "--tracking-uri", cfg.tracking_uri, "--out", str(tmp_path / "fr")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "synthetic" in out and "acert" in out
    assert (tmp_path / "fr.png").stat().st_size > 1000
    page = (tmp_path / "fr.html").read_text()
    assert "Plotly.newPlot(" in page and '"name":"acert"' in page


def trial_results(cfg, method):
    """Every result Tune recorded, per trial folder (the rows of its result.json)."""
    out = {}
    for f in sorted(Path(cfg.sweep_dir, method).glob("*/result.json")):
        out[f.parent.name] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def test_trials_run_in_reused_processes(served_sweep):
    """reuse_actors: a finished trial's process runs the next one (no new process importing
    torch and loading the data per trial)."""
    cfg, _ = served_sweep
    pids = {r["pid"] for rows in trial_results(cfg, "acert").values() for r in rows}
    assert len(trial_results(cfg, "acert")) == cfg.trials
    assert len(pids) <= cfg.max_concurrent, pids


def test_a_preempted_trial_keeps_its_last_finished_epoch(ray_session, tmp_path):
    """SIGTERM to a trial's process between two checkpoints (--checkpoint-every beyond the
    trial's length): the trial saves its last finished epoch, its process ends, and Tune's retry
    trains on from that epoch in a fresh process; no reported epoch is trained twice. The trial
    is IBP with a sleep in every step (tests/slow_method.py: >= 0.2 s per epoch on any machine),
    so that it is still training when the signal comes."""
    import torch

    from tests.slow_method import NAME

    cfg = small_config(
        tmp_path,
        "preempt",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        trials=1,
        epochs=20,
        accs=(0.5,),
        methods=(NAME,),
        plugins=("tests.slow_method",),
        scheduler="none",
        checkpoint_every=100,
        max_failures=1,
        max_concurrent=1,
        val_acr_samples=20,
        register_models=False,
    )
    signalled: dict = {}
    stop = threading.Event()

    def preempt():
        while not stop.is_set():
            for rows in trial_results(cfg, NAME).values():
                if rows and rows[-1]["epoch"] >= 2:
                    signalled.update(pid=rows[-1]["pid"], epoch=rows[-1]["epoch"])
                    os.kill(signalled["pid"], signal.SIGTERM)
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=preempt, daemon=True)
    watcher.start()
    try:
        rows = run_sweep(cfg)
    finally:
        stop.set()
    assert signalled, "the trial ended before it could be signalled"
    # Tune's result.json may lose the rows reported after its last sync to storage when a trial
    # is restored (Tune copies the stored file back first): the checkpoints, written by the
    # trial itself, and the MLflow record are what this test reads for epochs.
    (trial_dir,) = [d for d in Path(cfg.sweep_dir, NAME).iterdir() if d.is_dir()]
    saved = sorted(
        int(torch.load(f, weights_only=True)["epoch"]) for f in trial_dir.glob("checkpoint_*/state.pt")
    )
    assert len(saved) == 2 and saved[0] >= signalled["epoch"] and saved[1] == 20, saved
    (trial,) = trial_results(cfg, NAME).values()
    by_pid = collections.defaultdict(list)
    for r in trial:
        by_pid[r["pid"]].append(r)
    assert len(by_pid) == 2  # the retry ran in a fresh process
    retry = by_pid[next(pid for pid in by_pid if pid != signalled["pid"])]
    # the retry trains on from the preemption's checkpoint: no epoch trained twice
    assert [r["epoch"] for r in retry] == list(range(saved[0] + 1, 21))
    (child,) = runs_of(cfg, "trial")
    assert child.info.status == "FINISHED"
    history = client(cfg.tracking_uri).get_metric_history(child.info.run_id, "epoch_time_s")
    assert [m.step for m in history] == list(range(1, 21))  # every epoch recorded once
    assert rows[0]["status"] in ("ok", "infeasible")


def failing_space(trial, ctx):
    """Every third trial diverges (lr 1e20 -> inf loss), every third raises (batch_size 0)."""
    out = get_space("acert")(trial, ctx)
    if trial.number % 3 == 1:
        out["lr"] = 1e20
    elif trial.number % 3 == 2:
        out["batch_size"] = 0
    return out


def test_failing_trials_are_recorded_and_the_sweep_goes_on(ray_session, tmp_path):
    cfg = small_config(
        tmp_path,
        "faults",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        trials=6,
        accs=(0.5,),
        scheduler="none",
        register_models=False,
    )
    rows = run_sweep(cfg, spaces={"acert": failing_space})
    children = runs_of(cfg, "trial")
    assert len(children) == 6
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 2 and all("batch_size" in c.data.tags[TAG_REASON] for c in failed)
    # a diverged trial is finished, marked, with the worst figures (tests/test_sweep_trials.py)
    diverged = [c for c in children if c.data.metrics.get("diverged") == 1]
    assert len(diverged) == 2 and all(c.info.status == "FINISHED" for c in diverged)
    assert all(c.data.metrics["val_acc"] == 0 == c.data.metrics["val_acr"] for c in diverged)
    assert all(c.data.tags["ended"] == "diverged" and c.data.tags[TAG_TARGETS] == "none" for c in diverged)
    assert all("stopped_early" not in c.data.tags and "nan" in c.data.tags[TAG_REASON] for c in diverged)
    assert rows[0]["status"] in ("ok", "infeasible")
    if rows[0]["status"] == "ok":
        assert rows[0]["trial_id"] not in {c.data.tags["ray.trial_id"] for c in failed + diverged}
    for c in failed:
        assert not math.isnan(c.data.metrics.get("val_acc", 0.0))


def test_a_plugin_method_is_swept_with_no_other_change(ray_session, tmp_path):
    """A new training method is one file plus one register line (tests/toy_method.py): the
    sweep imports it as a plugin in the driver and in every trial, searches its space and
    publishes its frontier."""
    from orchestrator.cli import parse_sweep_args
    from tests.toy_method import NAME
    from trainers.methods import TRAINING_METHODS

    cfg = parse_sweep_args(
        [
            "--dataset",
            "synthetic",
            "--accs",
            "0.5",
            "--methods",
            NAME,
            "--plugins",
            "tests.toy_method",
            "--trials",
            "2",
            "--epochs",
            "2",
            "--name",
            "toy",
            "--storage",
            str(tmp_path / "sweeps"),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--synthetic-size",
            "256",
            "--val-acr-samples",
            "50",
            "--threads",
            "1",
            "--max-failures",
            "0",
            "--scheduler",
            "none",
            "--no-register",
            "--data-dir",
            str(tmp_path / "data"),
        ]
    )
    assert NAME in TRAINING_METHODS and cfg.plugins == ("tests.toy_method",)
    rows = run_sweep(cfg)
    children = runs_of(cfg, "trial")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children), [
        c.data.tags.get(TAG_REASON) for c in children
    ]
    assert all(c.data.params["method"] == NAME and "fraction" in c.data.params for c in children)
    assert rows[0]["method"] == NAME and rows[0]["status"] in ("ok", "infeasible")
