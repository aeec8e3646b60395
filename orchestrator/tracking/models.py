"""Registered models: a winner logged with ``mlflow.pytorch`` on the sweep's parent run and
registered under ``<method>-<dataset>-acc<target>``, exactly once per sweep.

Trust boundary: the model is a pickle. ``mlflow.pytorch.load_model`` runs the code it names (the
``trainers`` package logged beside it), so whoever can write to the tracking server's artifact
store can run code in the process of whoever loads a model from it (k8s/README.md, "Trust
boundaries").
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any


# --- registered models ----------------------------------------------------------------
def input_example(train_config: dict[str, Any], n: int = 1) -> Any:
    """The first ``n`` validation samples (training samples if there is no validation split) of
    the data a trial was trained on, as the model takes them: float32 [n, C, H, W] in [0, 1].

    ``train_config`` is the ``config`` a checkpoint carries (``TrainConfig.to_dict()``); the
    split is the trial's seeded one, so the example is a real input of that model's data.
    Raises ``trainers.data.DataMissingError`` when the data is not here and may not be
    downloaded.
    """
    from trainers.config import TrainConfig

    cfg = TrainConfig.from_dict(train_config)
    return _first_samples(
        cfg.dataset, cfg.data_dir, cfg.download, cfg.val_fraction, cfg.seed, cfg.synthetic_size, n
    ).copy()


@functools.lru_cache(maxsize=8)
def _first_samples(
    dataset: str, data_dir: str, download: bool, val_fraction: float, seed: int, synthetic_size: int, n: int
) -> Any:
    """Cached: a sweep's winners share their data, which is loaded once."""
    from trainers.data import load_splits

    splits = load_splits(
        dataset,
        data_dir=data_dir,
        download=download,
        val_fraction=val_fraction,
        seed=seed,
        synthetic_size=synthetic_size,
    )
    return model_input((splits.x_val if len(splits.x_val) else splits.x_train)[:n])


def model_input(x: Any) -> Any:
    """Stored images (uint8, or float32 in [0, 1] for ``synthetic``) as the model takes them:
    a float32 numpy array in [0, 1], as the training loop feeds it."""
    import torch

    return (x.float().div(255.0) if x.dtype == torch.uint8 else x.float()).numpy()


def trainers_code_path() -> str:
    """The folder of the installed ``trainers`` package, logged next to each model."""
    import trainers

    return str(Path(trainers.__file__).parent)


def log_winner_model(
    model: Any,
    *,
    tracking_uri: str,
    run_id: str,
    name: str,
    example: Any | None,
    registered_model_name: str | None = None,
    experiment_id: str | None = None,
) -> Any:
    """Log a ``trainers.models`` network on run ``run_id`` (and register it, if a name is given)
    so that ``mlflow.pytorch.load_model(uri)`` returns it where this project is not installed.

    The model is pickled, not exported (pt2): certification needs the ``nn.Sequential`` layers,
    which an exported graph no longer has. The pickle refers to ``trainers.models.Normalize``,
    so the ``trainers`` package goes with it as ``code_paths``: MLflow puts that copy on
    ``sys.path`` when it loads the model, and it is the code the weights were trained with.
    ``example`` is a real input (see :func:`input_example`); MLflow stores it and infers the
    signature from it (None: neither). Returns MLflow's ``ModelInfo``. Sets the process's
    tracking URI (MLflow's model logging reads only that one) and, given ``experiment_id`` (the
    run's experiment), the active experiment, where the logged model is recorded.
    """
    import mlflow
    import mlflow.pytorch
    import numpy as np

    if example is not None and not (
        isinstance(example, np.ndarray)
        and example.dtype == np.float32
        and example.ndim == 4
        and 0.0 <= example.min()
        and example.max() <= 1.0
    ):
        what = f"{example.dtype} {example.shape}" if isinstance(example, np.ndarray) else type(example)
        raise ValueError(f"example must be float32 [N, C, H, W] in [0, 1], got {what}")
    mlflow.set_tracking_uri(tracking_uri)
    if experiment_id is not None:  # else the logged model lands in the Default experiment
        mlflow.set_experiment(experiment_id=experiment_id)
    path = list(sys.path)
    try:
        return mlflow.pytorch.log_model(
            model.cpu().eval(),
            name=name,
            run_id=run_id,  # no start_run: that would end the sweep's parent run on exit
            registered_model_name=registered_model_name,
            serialization_format="pickle",
            code_paths=[trainers_code_path()],
            input_example=example,
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            metadata={"input": "float32 [N, C, H, W] in [0, 1]; normalisation is the model's first layer"},
        )
    finally:  # checking the example loads the model here, which puts its temporary code folder on sys.path
        sys.path[:] = path


def uploaded_model(client: Any, experiment_id: str, run_id: str, name: str) -> str | None:
    """The model id of a model named ``name`` already logged on ``run_id`` (a driver killed
    between upload and registration left it), or None."""
    found = client.search_logged_models(
        [experiment_id], filter_string=f"name = '{name}' AND source_run_id = '{run_id}'", max_results=1
    )
    return found[0].model_id if found else None


def register_winner(tracker: Any, *, name: str, artifact: str, load: Any, kill_point: Any = None) -> str:
    """Log and register one winner on the sweep's parent run, once: a version of ``name`` made
    from the parent run already, or a model ``artifact`` uploaded to it by a driver killed before
    it registered, is reused. ``load()`` gives (model, example) and is called only when an upload
    is needed. Returns ``models:/<name>/<version>``. Needs the server (the caller waited for it)."""
    import mlflow

    mlflow.set_tracking_uri(tracker.tracking_uri)
    client, parent = tracker.client, tracker.parent_run_id()
    done = client.search_model_versions(f"name='{name}' and run_id='{parent}'")
    if done:
        return f"models:/{name}/{done[0].version}"
    model_id = uploaded_model(client, tracker.experiment_id, parent, artifact)
    if model_id is None:  # upload, then register: a kill in between leaves it for the resume
        model, example = load()
        info = log_winner_model(
            model,
            tracking_uri=tracker.tracking_uri,
            run_id=parent,
            name=artifact,
            example=example,
            experiment_id=tracker.experiment_id,
        )
        model_id = info.model_id
        if kill_point is not None:
            kill_point("after-model-upload")
    version = mlflow.register_model(f"models:/{model_id}", name)
    return f"models:/{name}/{version.version}"
