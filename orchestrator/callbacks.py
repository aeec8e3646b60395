"""Ray Tune callbacks run in the driver: the MLflow record of each trial, and the progress line.

Both are driven by Tune's events, so they see exactly what Tune saw, including trials that
ASHA stopped (complete, with their last result) and trials that raised (error).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator.config import SweepConfig
from orchestrator.mlflow_log import SweepTracker, result_metrics
from orchestrator.pareto import TrialPoint, satisfied_targets, select_winner
from orchestrator.searcher import measured
from trainers import metrics as M
from trainers.settings import ConfigError


def failure_reason(trial: Any) -> str:
    """The last line of the trial's traceback (``DivergedError: loss is nan at epoch 2``)."""
    text = None
    try:  # the driver's local copy is written first; the storage copy may not be synced yet
        local = trial.error_file
        text = Path(local).read_text() if local and Path(local).is_file() else trial.get_error()
    except Exception:  # an unreadable error file must not stop the sweep; the status says FAILED
        pass
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "trial errored (no error text)"


def trial_point(trial: Any, method: str) -> TrialPoint:
    m = measured(trial.last_result, M.VAL_ACR)
    acc, acr = m if m else (math.nan, math.nan)
    return TrialPoint(trial.trial_id, acc, acr, method, dict(trial.config), failed=trial.status == "ERROR")


class MlflowTrialCallback(Callback):
    """A nested child run per trial: its whole training config (``SweepConfig.trial``) and the
    searcher's keys (target) as params, per-epoch metrics, status and satisfied targets."""

    def __init__(self, tracker: SweepTracker, method: str, sweep: SweepConfig) -> None:
        self.tracker, self.method, self.sweep = tracker, method, sweep
        self.targets = tuple(sweep.accs)
        self._last_step: dict[str, int] = {}

    def _run(self, trial: Any) -> str:
        config = dict(trial.config)
        try:
            params = self.sweep.trial(config).to_dict()
        except ConfigError:  # the trial itself fails with this error; its run records why
            params = {}
        return self.tracker.trial_run(trial.trial_id, self.method, {**params, **config})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info) -> None:
        step = int(result.get(M.EPOCH, result.get("training_iteration", 0)))
        run_id = self._run(trial)
        last = self._last_step.get(trial.trial_id)
        if last is None:  # first result this driver sees: after a restore the run may hold more epochs
            last = self.tracker.last_step(run_id, M.VAL_ACR)
        if step <= last:
            return  # an epoch trained again after Tuner.restore: it was logged before the kill
        self._last_step[trial.trial_id] = step
        self.tracker.log_metrics(run_id, result_metrics(result), step=step)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        m = measured(trial.last_result, M.VAL_ACR)
        run_id = self._run(trial)
        if m is None:  # finished without a usable measurement (e.g. NaN validation ACR)
            self.tracker.end_trial(
                run_id, status="FAILED", reason="no finite val_acc/val_acr reported", targets=[]
            )
            return
        stopped = self._stopped_early(trial)
        self.tracker.client.set_tag(run_id, "stopped_early", str(stopped).lower())
        self.tracker.end_trial(run_id, status="FINISHED", targets=satisfied_targets(m[0], self.targets))

    def _stopped_early(self, trial: Any) -> bool:
        """Ray marks a stopped trial's last result ``done`` too: compare epochs instead."""
        try:
            planned = self.sweep.trial(dict(trial.config)).epochs
        except ConfigError:
            return False
        return int(trial.last_result.get(M.EPOCH, planned)) < planned

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self.tracker.end_trial(self._run(trial), status="FAILED", reason=failure_reason(trial), targets=[])


class ProgressCallback(Callback):
    """One line per finished trial: its (val_acc, ACR) and the best feasible ACR per target."""

    def __init__(self, method: str, targets: tuple[float, ...], stream: Any = None) -> None:
        self.method, self.targets, self.stream = method, tuple(targets), stream

    def _line(self, trials: list, trial: Any, what: str) -> None:
        points = [trial_point(t, self.method) for t in trials if t.status in ("TERMINATED", "ERROR")]
        if trial.trial_id not in {p.trial_id for p in points}:
            points.append(trial_point(trial, self.method))
        best = []
        for a in self.targets:
            w = select_winner(points, a)
            best.append(f"{a:g}: {w.val_acr:.4f} ({w.trial_id})" if w else f"{a:g}: -")
        done = sum(1 for p in points)
        print(
            f"[{self.method}] trial {trial.trial_id} {what} | finished {done} | "
            f"best feasible ACR per target  {'  '.join(best)}",
            file=self.stream or sys.stdout,
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        p = trial_point(trial, self.method)
        self._line(trials, trial, f"val_acc={p.val_acc:.4f} val_acr={p.val_acr:.4f}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._line(trials, trial, f"FAILED: {failure_reason(trial)}")
