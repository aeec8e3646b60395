"""Everything the orchestrator reads from and writes to MLflow, in one place.

- :mod:`~orchestrator.tracking.names`: the tags, the experiment and metric names;
- :mod:`~orchestrator.tracking.journal`: the write-ahead journal that carries the record through
  a server outage and a driver restart, applied exactly once;
- :mod:`~orchestrator.tracking.store`: journal entries applied to MLflow, and the reads;
- :mod:`~orchestrator.tracking.tracker`: :class:`SweepTracker`, what the sweep writes through;
- :mod:`~orchestrator.tracking.server`: the startup wait, the client's retry window, which
  errors mean "away";
- :mod:`~orchestrator.tracking.models`: winners logged and registered once;
- :mod:`~orchestrator.tracking.reads`: the read-only views of recorded sweeps (the frontier
  report, the re-check).

Only the driver writes; Ray workers never talk to MLflow.
"""

from orchestrator.tracking.names import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PARENT_TAG,
    TAG_METHOD,
    TAG_REASON,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_SWEEP_ID,
    TAG_TARGETS,
    TAG_TRIAL,
    experiment_name,
    metric_key,
    result_metrics,
)
from orchestrator.tracking.server import TrackingUnavailable, configure_client_retries, wait_for_server
from orchestrator.tracking.tracker import SweepTracker

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "PARENT_TAG",
    "TAG_METHOD",
    "TAG_REASON",
    "TAG_ROLE",
    "TAG_SWEEP",
    "TAG_SWEEP_ID",
    "TAG_TARGETS",
    "TAG_TRIAL",
    "SweepTracker",
    "TrackingUnavailable",
    "configure_client_retries",
    "experiment_name",
    "metric_key",
    "result_metrics",
    "wait_for_server",
]
