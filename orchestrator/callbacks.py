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
from orchestrator.convergence import convergence_metrics
from orchestrator.pareto import TrialPoint, satisfied_targets, select_winner
from orchestrator.searcher import measured
from orchestrator.tracking import SweepTracker, result_metrics
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


def ended_as(result: dict[str, Any] | None) -> str | None:
    """``diverged`` or ``timed_out`` for a trial the trainable ended that way, else None."""
    return next((k for k in M.ENDED if (result or {}).get(k)), None)


def trial_point(trial: Any, method: str, epochs: int | None = None) -> TrialPoint:
    """The trial's last result as a point, with its epoch and its budget (its config's
    ``epochs``, else ``epochs``): a trial stopped early is not a live winner either."""
    m = measured(trial.last_result, M.VAL_ACR)
    acc, acr = m if m else (math.nan, math.nan)
    failed = trial.status == "ERROR" or ended_as(trial.last_result) is not None
    config = dict(trial.config)
    epoch, budget = (trial.last_result or {}).get(M.EPOCH), config.get("epochs", epochs)
    return TrialPoint(
        trial.trial_id,
        acc,
        acr,
        method,
        config,
        failed=failed,
        epoch=None if epoch is None else int(epoch),
        budget=None if budget is None else int(budget),
    )


class MlflowTrialCallback(Callback):
    """A nested child run per trial: its whole training config (``SweepConfig.trial``) and the
    searcher's keys (target) as params, per-epoch metrics, status and satisfied targets; and after
    each trial ends, the search's convergence on the parent run (``orchestrator.convergence``).
    Writes go through the tracker's journal, so an MLflow outage never raises here (an exception
    in a Tune callback would end the experiment)."""

    def __init__(self, tracker: SweepTracker, method: str, sweep: SweepConfig) -> None:
        self.tracker, self.method, self.sweep = tracker, method, sweep
        self.targets = tuple(sweep.accs)
        self._last_step: dict[str, int] = {}

    def _run(self, trial: Any) -> str:
        if not self.tracker.has_trial(trial.trial_id):
            config = dict(trial.config)
            try:
                params = self.sweep.trial(config).to_dict()
            except ConfigError:  # the trial itself fails with this error; its run records why
                params = {}
            self.tracker.trial(trial.trial_id, self.method, {**params, **config})
        return trial.trial_id

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info) -> None:
        step = int(result.get(M.EPOCH, result.get("training_iteration", 0)))
        trial_id = self._run(trial)
        last = self._last_step.get(trial_id)
        if last is None:  # first result this driver sees: after a restore the run may hold more epochs
            last = self.tracker.last_step(trial_id, M.VAL_ACR)
        if step <= last:
            return  # an epoch trained again after Tuner.restore: it was logged before the kill
        self._last_step[trial_id] = step
        self.tracker.log_trial_metrics(trial_id, result_metrics(result), step=step)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        m = measured(trial.last_result, M.VAL_ACR)
        trial_id = self._run(trial)
        ended = ended_as(trial.last_result)
        if ended is not None:  # diverged or hung: finished (not retried) with the worst figures
            self.tracker.end_trial(
                trial_id,
                status="FINISHED",
                reason=str(trial.last_result.get(M.END_REASON, ended)),
                targets=[],
                ended=ended,
            )
        elif m is None:  # finished without a usable measurement (e.g. NaN validation ACR)
            self.tracker.end_trial(
                trial_id, status="FAILED", reason="no finite val_acc/val_acr reported", targets=[]
            )
        else:
            self.tracker.end_trial(
                trial_id,
                status="FINISHED",
                targets=satisfied_targets(m[0], self.targets),
                stopped_early=self._stopped_early(trial),
            )
        self._log_convergence(trials, trial)

    def _log_convergence(self, trials: list, trial: Any) -> None:
        """The parent run's convergence metrics at step = this method's trials ended so far
        (Tune's list holds the trials a restored experiment finished before, too)."""
        ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        if trial.trial_id not in {t.trial_id for t in ended}:  # Tune may not have set its status yet
            ended.append(trial)
        points = [trial_point(t, self.method, self.sweep.epochs) for t in ended]
        metrics = convergence_metrics(self.method, points, self.targets)
        self.tracker.log_parent_metrics(metrics, step=len(points))

    def _stopped_early(self, trial: Any) -> bool:
        """Ray marks a stopped trial's last result ``done`` too: compare epochs instead."""
        try:
            planned = self.sweep.trial(dict(trial.config)).epochs
        except ConfigError:
            return False
        return int(trial.last_result.get(M.EPOCH, planned)) < planned

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self.tracker.end_trial(self._run(trial), status="FAILED", reason=failure_reason(trial), targets=[])
        self._log_convergence(trials, trial)


class ProgressCallback(Callback):
    """One line per finished trial: its (val_acc, ACR) and the best feasible ACR per target
    among the trials that trained their full budget (``epochs``, unless a trial's config says)."""

    def __init__(
        self, method: str, targets: tuple[float, ...], stream: Any = None, epochs: int | None = None
    ) -> None:
        self.method, self.targets, self.stream, self.epochs = method, tuple(targets), stream, epochs

    def _line(self, trials: list, trial: Any, what: str) -> None:
        ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        points = [trial_point(t, self.method, self.epochs) for t in ended]
        if trial.trial_id not in {p.trial_id for p in points}:
            points.append(trial_point(trial, self.method, self.epochs))
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
        ended = ended_as(trial.last_result)
        if ended is not None:
            reason = trial.last_result.get(M.END_REASON, "")
            self._line(trials, trial, f"{ended.upper().replace('_', ' ')}: {reason}")
            return
        p = trial_point(trial, self.method, self.epochs)
        stopped = "" if p.full_budget else f" (stopped at epoch {p.epoch}: cannot win)"
        self._line(trials, trial, f"val_acc={p.val_acc:.4f} val_acr={p.val_acr:.4f}{stopped}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._line(trials, trial, f"FAILED: {failure_reason(trial)}")
