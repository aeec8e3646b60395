"""Names the MLflow record of a sweep is found by: tags, the experiment, metric keys."""

from __future__ import annotations

import re
from typing import Any

from orchestrator.config import SEARCH_PHASE, TARGET
from trainers import metrics as M

TAG_SWEEP = "sweep.name"
TAG_SWEEP_ID = "sweep.id"  # the id in sweep.json: a new sweep of an old name is another sweep
TAG_ROLE = "sweep.role"  # parent | trial | confirm (a retrain of the confirm stage)
TAG_TRIAL = "ray.trial_id"
TAG_METHOD = "sweep.method"
TAG_REASON = "failure_reason"
TAG_TARGETS = "satisfied_targets"
TAG_STOPPED_EARLY = "stopped_early"
TAG_ENDED = "ended"  # diverged | timed_out: finished by the trainable with the worst figures
PARENT_TAG = "mlflow.parentRunId"
# The experiment's kind for MLflow: a model-training experiment. MLflow 3.17's UI (3.18.0's too)
# still opens a fresh browser on its GenAI view, a toggle kept in the browser's local storage;
# README "Watching a sweep converge" says how to switch, tests/test_browser.py checks it.
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


def experiment_name(dataset: str) -> str:
    return f"acert-sweep-{dataset}"


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


def param_value(v: Any) -> str:
    return str(v)[:6000]  # MLflow's limit on a param value
