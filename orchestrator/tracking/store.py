"""The MLflow side of the record: journal entries applied to a tracking server, and the reads.

Runs are named in the journal by role, not by MLflow run id (``parent``, ``trial:<ray trial
id>``), since an entry may be written while the server is down and no id can be had. Each is
resolved here by its tags (``sweep.id`` or, for sweeps begun before sweep ids, ``sweep.name``;
``sweep.role``; ``ray.trial_id``), looked up before a run is created, so applying an entry twice
never makes a second run. Every other operation is idempotent too: params already set are
skipped, tags and statuses are set, an artifact overwrites its own path, and a metric point
carries the time its entry was written, so logging it again is the same point (key, step,
value, timestamp), which MLflow's SQL store keeps once. The entry a killed driver may have
applied without moving the cursor (the first a process applies) is also checked against the
metric history, for stores that would keep a second copy.
"""

from __future__ import annotations

import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from orchestrator.tracking.names import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PARENT_TAG,
    TAG_METHOD,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_SWEEP_ID,
    TAG_TRIAL,
    experiment_name,
    param_value,
)

_PACKAGES = ("torch", "ray", "optuna", "mlflow", "numpy", "acert-sweep")


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


class MlflowStore:
    """One sweep's runs in one tracking store. Keeps only strings between pickles."""

    def __init__(self, tracking_uri: str, dataset: str, sweep_name: str, sweep_id: str = "") -> None:
        self.tracking_uri, self.dataset = tracking_uri, dataset
        self.sweep_name, self.sweep_id = sweep_name, sweep_id
        self._client = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}  # journal run name -> MLflow run id
        self._checked_first = False

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

    def _identity(self) -> dict[str, str]:
        return {TAG_SWEEP_ID: self.sweep_id} if self.sweep_id else {TAG_SWEEP: self.sweep_name}

    def _find(self, **tags: str) -> str | None:
        from mlflow.entities import ViewType

        clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        runs = self.client.search_runs(
            [self.experiment_id],
            " and ".join(clauses),
            run_view_type=ViewType.ALL,
            max_results=2,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def parents_named(self, name: str) -> list[tuple[str, str]]:
        """(run id, sweep id or '') of every parent run of sweeps called ``name``."""
        from mlflow.entities import ViewType

        exp = self.client.get_experiment_by_name(experiment_name(self.dataset))
        if exp is None:
            return []
        runs = self.client.search_runs(
            [exp.experiment_id],
            f"tags.`{TAG_SWEEP}` = '{name}' and tags.`{TAG_ROLE}` = 'parent'",
            run_view_type=ViewType.ALL,
            max_results=100,
        )
        return [(r.info.run_id, r.data.tags.get(TAG_SWEEP_ID, "")) for r in runs]

    def run_id(self, run: str) -> str:
        """The MLflow id of journal run ``run`` (``parent`` or ``trial:<id>``), which exists once
        its creating entry was applied."""
        if run not in self._runs:
            if run == "parent":
                found = self._find(**self._identity(), **{TAG_ROLE: "parent"})
            else:
                found = self._find(**self._identity(), **{TAG_TRIAL: run.removeprefix("trial:")})
            if found is None:
                raise LookupError(f"no MLflow run for {run} of sweep {self.sweep_name}")
            self._runs[run] = found
        return self._runs[run]

    # --- applying journal entries -----------------------------------------------------
    def apply(self, entry: dict[str, Any]) -> None:
        first, self._checked_first = not self._checked_first, True
        getattr(self, f"_apply_{entry['op']}")(entry, first)

    def _get_or_create(self, run: str, lookup: dict[str, str], tags: dict[str, str]) -> str:
        run_id = self._runs.get(run) or self._find(**lookup)
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        self._runs[run] = run_id
        return run_id

    def _apply_parent(self, entry: dict[str, Any], first: bool) -> None:
        tags = {
            TAG_SWEEP: self.sweep_name,
            TAG_ROLE: "parent",
            "mlflow.runName": self.sweep_name,
            **({TAG_SWEEP_ID: self.sweep_id} if self.sweep_id else {}),
            **entry.get("tags", {}),
        }
        run_id = self._get_or_create("parent", {**self._identity(), TAG_ROLE: "parent"}, tags)
        self._log_params(run_id, entry.get("params", {}))

    def _apply_trial(self, entry: dict[str, Any], first: bool) -> None:
        trial_id, method = entry["trial_id"], entry["method"]
        tags = {
            TAG_SWEEP: self.sweep_name,
            TAG_ROLE: "trial",
            TAG_TRIAL: trial_id,
            TAG_METHOD: method,
            PARENT_TAG: self.run_id("parent"),
            "mlflow.runName": f"{method}-{trial_id}",
            **({TAG_SWEEP_ID: self.sweep_id} if self.sweep_id else {}),
        }
        run_id = self._get_or_create(f"trial:{trial_id}", {**self._identity(), TAG_TRIAL: trial_id}, tags)
        self._log_params(run_id, entry.get("params", {}))

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        new = [Param(k, param_value(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[i : i + 100])

    def _apply_metrics(self, entry: dict[str, Any], first: bool) -> None:
        from mlflow.entities import Metric

        run_id, step = self.run_id(entry["run"]), int(entry.get("step", 0))
        metrics = entry["metrics"]
        if not metrics:
            return
        if first:  # possibly applied already by a driver killed before it moved the cursor
            key = next(iter(metrics))
            if any(m.step >= step for m in self.client.get_metric_history(run_id, key)):
                return
        stamp = int(entry.get("time_ms") or time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i : i + 500])

    def _apply_tags(self, entry: dict[str, Any], first: bool) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(k, str(v)[:5000]) for k, v in entry["tags"].items()]
        self.client.log_batch(self.run_id(entry["run"]), tags=tags)

    def _apply_status(self, entry: dict[str, Any], first: bool) -> None:
        run_id, status = self.run_id(entry["run"]), entry["status"]
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status=status, end_time=entry.get("time_ms"))

    def _apply_artifact(self, entry: dict[str, Any], first: bool) -> None:
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # the kept copy has a sequence number in its name
            path = Path(tmp) / entry["name"]
            shutil.copyfile(entry["file"], path)
            self.client.log_artifact(self.run_id(entry["run"]), str(path))

    # --- reads ------------------------------------------------------------------------
    def last_step(self, run: str, key: str) -> int:
        """The last step of metric ``key`` in a run, -1 without any."""
        return max((m.step for m in self.client.get_metric_history(self.run_id(run), key)), default=-1)

    def trial_runs(self) -> list[Any]:
        """All trial runs of this sweep (every status), oldest first."""
        from mlflow.entities import ViewType

        clauses = [f"tags.`{k}` = '{v}'" for k, v in self._identity().items()]
        flt = " and ".join([*clauses, f"tags.`{TAG_ROLE}` = 'trial'"])
        return list(
            self.client.search_runs(
                [self.experiment_id],
                flt,
                run_view_type=ViewType.ALL,
                max_results=50000,
                order_by=["attributes.start_time ASC"],
            )
        )
