"""The MLflow record of a sweep, written only by the driver.

One experiment per dataset, one parent run per sweep, one nested child run per Ray trial.
Runs are found again by tags (``sweep.name``, ``ray.trial_id``) before any is created, so a
resumed sweep (or a trial Ray restarts) writes into the run it already has: MLflow holds each
trial once. Ray's own ``MLflowLoggerCallback`` is not used: it makes flat runs and a second
run per trial after ``Tuner.restore`` (STACK.md).

The object keeps only strings between calls (the client is rebuilt lazily) because Ray
pickles callbacks into the experiment folder.
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from orchestrator.config import SEARCH_PHASE, TARGET
from trainers import metrics as M

TAG_SWEEP = "sweep.name"
TAG_ROLE = "sweep.role"  # parent | trial
TAG_TRIAL = "ray.trial_id"
TAG_METHOD = "sweep.method"
TAG_REASON = "failure_reason"
TAG_TARGETS = "satisfied_targets"
PARENT_TAG = "mlflow.parentRunId"
# MLflow 3.17's UI opens an experiment without this tag on the GenAI "Overview" (traces) page;
# with it, on "Training runs", where a sweep's parent and trial runs are (STACK.md).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Ray bookkeeping and trial-config echoes: not measurements of the model.
_NOT_METRICS = {
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "timestamp",
    "pid",
    "iterations_since_restore",
    "time_since_restore",
    M.DONE,
    TARGET,
    SEARCH_PHASE,
    M.EPOCH,
    "should_checkpoint",
    "checkpoint_dir_name",
}
_PACKAGES = ("torch", "ray", "optuna", "mlflow", "numpy", "acert-sweep")


def experiment_name(dataset: str) -> str:
    return f"acert-sweep-{dataset}"


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created if missing, tagged as a model-training experiment.

    An existing experiment gets the tag only when it has none (or an empty one): a kind that
    someone chose in the UI is kept.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if not exp.tags.get(EXPERIMENT_KIND_TAG):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def metric_key(key: str) -> str:
    """MLflow accepts [/\\w.- ] only: ``test_cert_acc@0.1`` -> ``test_cert_acc_at_0.1``."""
    return re.sub(r"[^/\w.\- ]", "_", key.replace("@", "_at_"))


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric measurements of a Tune result, under MLflow-safe names."""
    out = {}
    for k, v in result.items():
        if k in _NOT_METRICS or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        out[metric_key(k)] = float(v)
    return out


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _param_value(v: Any) -> str:
    return str(v)[:6000]  # MLflow's limit on a param value


_CURRENT_URI: dict[str, str] = {}  # sweep name -> the tracking URI this driver process uses


def use_tracking_uri(sweep_name: str, uri: str) -> None:
    """Make every SweepTracker of ``sweep_name`` unpickled in this process (Tuner.restore's
    callbacks) write to ``uri``, whatever URI it was pickled with."""
    _CURRENT_URI[sweep_name] = uri


class SweepTracker:
    """Get-or-create access to a sweep's parent and child runs in one tracking store."""

    def __init__(self, tracking_uri: str, dataset: str, sweep_name: str) -> None:
        self.tracking_uri, self.dataset, self.sweep_name = tracking_uri, dataset, sweep_name
        self._client = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}  # ray trial id -> run id (a cache of the tag lookup)
        self._parent: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "dataset": self.dataset, "sweep_name": self.sweep_name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Tuner.restore unpickles the callbacks (and this tracker) with the URI of the sweep's
        # first run; the URI this process was started with (--tracking-uri may change on
        # resume) wins: see use_tracking_uri.
        uri = _CURRENT_URI.get(state["sweep_name"], state["tracking_uri"])
        self.__init__(uri, state["dataset"], state["sweep_name"])

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = ensure_experiment(self.client, experiment_name(self.dataset))
        return self._experiment_id

    def _find(self, **tags: str) -> str | None:
        clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        runs = self.client.search_runs(
            [self.experiment_id], " and ".join(clauses), max_results=2, order_by=["attributes.start_time ASC"]
        )
        return runs[0].info.run_id if runs else None

    # --- the parent run -------------------------------------------------------------
    def parent_run(self, params: dict[str, Any] | None = None) -> str:
        """The sweep's parent run; created (with params, commit, versions) on first use."""
        if self._parent is None:
            self._parent = self._find(**{TAG_SWEEP: self.sweep_name, TAG_ROLE: "parent"})
        if self._parent is None:
            tags = {
                TAG_SWEEP: self.sweep_name,
                TAG_ROLE: "parent",
                "git_commit": git_commit(),
                "mlflow.runName": self.sweep_name,
                **{f"version.{k}": v for k, v in package_versions().items()},
            }
            run = self.client.create_run(self.experiment_id, tags=tags)
            self._parent = run.info.run_id
            if params:
                self.log_params(self._parent, params)
        else:
            self.client.update_run(self._parent, status="RUNNING")
        return self._parent

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        new = [Param(k, _param_value(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[i : i + 100])

    def finish_parent(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_run(), status=status)

    # --- child runs -----------------------------------------------------------------
    def trial_run(self, trial_id: str, method: str, config: dict[str, Any]) -> str:
        """The child run of a Ray trial, created on first use; its params are the trial config."""
        run_id = self._runs.get(trial_id) or self._find(**{TAG_SWEEP: self.sweep_name, TAG_TRIAL: trial_id})
        if run_id is None:
            tags = {
                TAG_SWEEP: self.sweep_name,
                TAG_ROLE: "trial",
                TAG_TRIAL: trial_id,
                TAG_METHOD: method,
                PARENT_TAG: self.parent_run(),
                "mlflow.runName": f"{method}-{trial_id}",
            }
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            self.log_params(run_id, config)
        self._runs[trial_id] = run_id
        return run_id

    def last_step(self, run_id: str, key: str) -> int:
        """The last step of metric ``key`` in a run, -1 without any."""
        return max((m.step for m in self.client.get_metric_history(run_id, key)), default=-1)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step or 0) for k, v in metrics.items() if not math.isinf(v)]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i : i + 500])

    def end_trial(
        self, run_id: str, *, status: str, reason: str | None = None, targets: list[float] | None = None
    ) -> None:
        if reason:
            self.client.set_tag(run_id, TAG_REASON, reason[:5000])
        if targets is not None:
            self.client.set_tag(run_id, TAG_TARGETS, ",".join(f"{t:g}" for t in targets) or "none")
        self.client.set_terminated(run_id, status=status)

    def trial_runs(self) -> list[Any]:
        """All child runs of this sweep (every status), oldest first."""
        flt = f"tags.`{TAG_SWEEP}` = '{self.sweep_name}' and tags.`{TAG_ROLE}` = 'trial'"
        from mlflow.entities import ViewType

        return list(
            self.client.search_runs(
                [self.experiment_id],
                flt,
                run_view_type=ViewType.ALL,
                max_results=50000,
                order_by=["attributes.start_time ASC"],
            )
        )

    def close_unrecorded(self, method: str, known_trial_ids: set[str]) -> int:
        """Mark KILLED the child runs of trials Ray does not know: started, then lost with a
        killed driver before its state was saved. Such a trial may even have finished (a short
        trial fits in Tune's 2-s save period): Ray ran a replacement, so its run is not part of
        the sweep's record whatever its status. Returns how many."""
        n = 0
        for run in self.trial_runs():
            tags = run.data.tags
            if (
                tags.get(TAG_METHOD) == method
                and run.info.status != "KILLED"
                and tags.get(TAG_TRIAL) not in known_trial_ids
            ):
                self.end_trial(
                    run.info.run_id,
                    status="KILLED",
                    reason=f"driver killed before Ray recorded this trial (it was {run.info.status})",
                )
                n += 1
        return n


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
