"""The MLflow record against a real tracking store (SQLite in a temporary folder).

The registered-model test logs a real ``trainers.models`` network and loads it back in a fresh
Python that cannot import this project, as a user of the model registry would.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from orchestrator.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TAG_REASON,
    SweepTracker,
    experiment_name,
)
from orchestrator.tracking.models import input_example, log_winner_model, model_input

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def client_of(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_new_experiment_is_a_training_experiment(tracking_uri):
    tracker = SweepTracker(tracking_uri, "synthetic", "s1")
    tracker.start({})
    exp = client_of(tracking_uri).get_experiment_by_name(experiment_name("synthetic"))
    assert exp.experiment_id == tracker.experiment_id
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_existing_experiment_without_the_kind_gets_it(tracking_uri):
    c = client_of(tracking_uri)
    exp_id = c.create_experiment(experiment_name("mnist"))  # made by an older version: no kind
    assert EXPERIMENT_KIND_TAG not in c.get_experiment(exp_id).tags
    assert SweepTracker(tracking_uri, "mnist", "s2").experiment_id == exp_id
    assert c.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_a_kind_chosen_by_the_user_is_kept(tracking_uri):
    c = client_of(tracking_uri)
    exp_id = c.create_experiment(experiment_name("mnist"), tags={EXPERIMENT_KIND_TAG: "finetuning"})
    assert SweepTracker(tracking_uri, "mnist", "s3").experiment_id == exp_id
    assert c.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == "finetuning"


# --- registered models ----------------------------------------------------------------
def test_model_input_is_float32_in_unit_range():
    import torch

    x = torch.tensor([[[[0, 51], [255, 128]]]], dtype=torch.uint8)
    out = model_input(x)
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(out, [[[[0.0, 0.2], [1.0, 128 / 255]]]], rtol=1e-7)
    f = torch.rand(2, 3, 4, 4)
    np.testing.assert_array_equal(model_input(f), f.numpy())


@pytest.mark.parametrize(
    "example", [np.zeros((1, 1, 6, 6), np.uint8), np.full((1, 1, 6, 6), 2.0, np.float32)]
)
def test_an_example_that_is_not_a_model_input_is_refused(example, tracking_uri):
    with pytest.raises(ValueError, match=r"float32 \[N, C, H, W\] in \[0, 1\]"):
        log_winner_model(None, tracking_uri=tracking_uri, run_id="r", name="m", example=example)


def test_input_example_is_the_first_validation_sample_of_the_trials_data(tmp_path):
    from trainers.config import TrainConfig
    from trainers.data import load_splits

    config = TrainConfig(dataset="synthetic", synthetic_size=64, seed=3, data_dir=str(tmp_path)).to_dict()
    example = input_example(config)
    splits = load_splits("synthetic", synthetic_size=64, seed=3, data_dir=str(tmp_path))
    assert example.dtype == np.float32 and example.shape == (1, *splits.spec.input_shape)
    np.testing.assert_array_equal(example, splits.x_val[:1].numpy())
    assert 0.0 <= example.min() and example.max() <= 1.0 and example.std() > 0  # not all zeros


# Run by a Python that cannot import this project: the editable install's finder and path
# hook are removed and the repository is not on sys.path (-I: no cwd, no PYTHONPATH).
LOADER = textwrap.dedent(
    """
    import json, os, sys
    repo, uri, model_uri, x_path, out_path = sys.argv[1:]
    sys.meta_path[:] = [f for f in sys.meta_path if not f.__module__.startswith("__editable__")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not h.__module__.startswith("__editable__")]
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != repo]
    sys.path_importer_cache.clear()
    try:
        import trainers
    except ImportError:
        pass
    else:
        raise SystemExit(f"the project is importable here: {trainers.__file__}")

    import mlflow, mlflow.pytorch, numpy as np, torch

    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(model_uri)
    with torch.no_grad():
        np.save(out_path, model(torch.from_numpy(np.load(x_path))).numpy())
    print(json.dumps({"trainers": sys.modules["trainers"].__file__, "first": type(model[0]).__module__}))
    """
)


def test_registered_model_loads_where_the_project_is_not_installed(tracking_uri, tmp_path):
    import mlflow
    import torch
    from mlflow.models import Model

    from trainers.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp_tiny", input_shape=(1, 6, 6), num_classes=3, mean=[0.5], std=[0.25]).eval()
    x = torch.rand(5, 1, 6, 6)
    with torch.no_grad():
        want = model(x).numpy()
    tracker = SweepTracker(tracking_uri, "synthetic", "models")
    tracker.start({})
    parent = tracker.parent_run_id()
    path = list(sys.path)
    info = log_winner_model(
        model,
        tracking_uri=tracking_uri,
        run_id=parent,
        name="model-acert-acc0_5",
        example=x[:1].numpy(),
        registered_model_name="acert-synthetic-acc0.5",
    )
    assert info.registered_model_version == 1
    assert sys.path == path  # the temporary code folder MLflow adds while checking is gone
    assert tracker.client.get_run(parent).info.status == "RUNNING"  # logging did not end the sweep's run
    (version,) = tracker.client.search_model_versions(f"name='acert-synthetic-acc0.5' and run_id='{parent}'")

    # the stored example is the real input, with the model's input shape
    local = mlflow.artifacts.download_artifacts(artifact_uri="models:/acert-synthetic-acc0.5/1")
    np.testing.assert_array_equal(Model.load(local).load_input_example(local), x[:1].numpy())
    assert (Path(local) / "code" / "trainers" / "models.py").is_file()

    np.save(tmp_path / "x.npy", x.numpy())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, str(REPO), tracking_uri,
         f"models:/acert-synthetic-acc0.5/{version.version}", str(tmp_path / "x.npy"), str(tmp_path / "out.npy")],
        cwd=elsewhere, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not loaded["trainers"].startswith(str(REPO / "trainers")), loaded  # the copy logged with the model
    assert loaded["first"] == "trainers.models"
    # the same weights in another process: equal up to float32 rounding (the CPU kernels' reduction
    # order may differ between processes, by ~1e-8 here)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, rtol=1e-5, atol=1e-7)


def test_register_winners_logs_each_winner_once_with_a_real_example(tracking_uri, tmp_path):
    import mlflow
    from mlflow.models import Model
    from ray.tune import Checkpoint

    from orchestrator.cli import SweepConfig
    from orchestrator.evaluation import MethodResults, register_winners
    from trainers.config import TrainConfig
    from trainers.data import get_dataset, load_splits
    from trainers.models import build_model, save_checkpoint

    spec = get_dataset("synthetic")
    train = TrainConfig(
        dataset="synthetic", synthetic_size=64, seed=5, model="mlp_tiny", data_dir=str(tmp_path)
    )
    shape = dict(input_shape=spec.input_shape, num_classes=spec.num_classes, mean=spec.mean, std=spec.std)
    save_checkpoint(
        tmp_path / "ck" / "model.pt", build_model("mlp_tiny", **shape), arch="mlp_tiny", width=None,
        config=train.to_dict(), **shape,
    )  # fmt: skip
    cfg = SweepConfig(
        dataset="synthetic", accs=(0.5, 0.7, 0.9), name="reg", tracking_uri=tracking_uri,
        storage=str(tmp_path / "sweeps"), data_dir=str(tmp_path), synthetic_size=64, seed=5,
    )  # fmt: skip
    tracker = SweepTracker(tracking_uri, "synthetic", "reg")
    tracker.start({})
    results = {
        "acert": MethodResults("acert", checkpoints={"t1": Checkpoint.from_directory(tmp_path / "ck")})
    }

    def rows():  # one trial wins two targets; the third is infeasible
        won = [{"method": "acert", "target": t, "status": "ok", "trial_id": "t1"} for t in (0.5, 0.7)]
        for r in won:
            r["registered_model"] = f"acert-synthetic-acc{r['target']:g}"
        return [*won, {"method": "acert", "target": 0.9, "status": "infeasible"}]

    first, again = rows(), rows()
    register_winners(cfg, first, results, tracker)
    register_winners(cfg, again, results, tracker)  # a resumed sweep registers nothing twice
    for row in (*first[:2], *again[:2]):
        assert row["model_uri"] == f"models:/{row['registered_model']}/1"
    assert "model_uri" not in first[2]
    assert len(tracker.client.search_model_versions("name='acert-synthetic-acc0.5'")) == 1

    local = mlflow.artifacts.download_artifacts(artifact_uri=first[0]["model_uri"])
    example = Model.load(local).load_input_example(local)
    splits = load_splits("synthetic", synthetic_size=64, seed=5, data_dir=str(tmp_path))
    np.testing.assert_array_equal(example, splits.x_val[:1].numpy())


def test_runs_of_trials_ray_lost_are_closed_whatever_their_status(tracking_uri):
    """A driver killed within Tune's 2-s save period may lose a trial that had started, or even
    finished (short trials): Ray runs a replacement, so the lost run leaves the record (KILLED)."""
    tracker = SweepTracker(tracking_uri, "synthetic", "lost")
    tracker.start({})
    for t in ("kept", "finished", "running"):
        tracker.trial(t, "ibp", {"method": "ibp"})
    tracker.trial("other", "acert", {"method": "acert"})  # another method's
    for t in ("kept", "finished"):
        tracker.end_trial(t, status="FINISHED")
    assert tracker.close_unrecorded("ibp", {"kept"}) == 2
    runs = {t: tracker.trial_run_id(t) for t in ("kept", "finished", "running", "other")}
    c = client_of(tracking_uri)
    status = {t: c.get_run(r).info.status for t, r in runs.items()}
    assert status == {"kept": "FINISHED", "finished": "KILLED", "running": "KILLED", "other": "RUNNING"}
    assert "it was FINISHED" in c.get_run(runs["finished"]).data.tags[TAG_REASON]
    assert tracker.close_unrecorded("ibp", {"kept"}) == 0  # once
