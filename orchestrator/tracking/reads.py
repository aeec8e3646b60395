"""Read-only views of recorded sweeps, for the commands that work from MLflow alone
(``orchestrator.frontier``, ``orchestrator.recheck``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.tracking.names import TAG_METHOD, TAG_ROLE, TAG_SWEEP, experiment_name


def client_for(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client: Any, dataset: str) -> str | None:
    exp = client.get_experiment_by_name(experiment_name(dataset))
    return exp.experiment_id if exp else None


def finished_parents(client: Any, exp_id: str, sweep: str | None) -> list[Any]:
    """Parent runs of finished sweeps (of the one named ``sweep``, if given), newest first."""
    flt = f"tags.`{TAG_ROLE}` = 'parent' and attributes.status = 'FINISHED'"
    if sweep:
        flt += f" and tags.`{TAG_SWEEP}` = '{sweep}'"
    return list(client.search_runs([exp_id], flt, order_by=["attributes.start_time DESC"], max_results=1000))


def parent_named(client: Any, sweep: str) -> Any | None:
    """The newest parent run of a sweep called ``sweep`` in any experiment, or None."""
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_ROLE}` = 'parent'",
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def trial_runs_of(client: Any, exp_id: str, sweep: str, method: str) -> list[Any]:
    """Every trial run of one method in one sweep, whatever its status."""
    from mlflow.entities import ViewType

    flt = (
        f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_ROLE}` = 'trial' and tags.`{TAG_METHOD}` = '{method}'"
    )
    return list(client.search_runs([exp_id], flt, run_view_type=ViewType.ALL, max_results=50000))


def frontier_json(uri: str, run_id: str, into: str | Path | None = None) -> list[dict[str, Any]]:
    """The ``frontier.json`` artifact of a sweep's parent run."""
    import mlflow.artifacts

    path = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="frontier.json",
        dst_path=None if into is None else str(into),
        tracking_uri=uri,
    )
    return json.loads(Path(path).read_text())
