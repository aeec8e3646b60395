"""ASHA ranking a score that respects the trial's accuracy target.

ASHA understands one metric; on raw ACR it promotes infeasible trials and stops feasible
ones (STACK.md). The score is computed here from each result and the trial's own target, on a
copy of the result: the searcher and MLflow keep seeing the true, unpenalised figures.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler

from orchestrator.pareto import penalised_score

SCORE = "penalised_score"


class PenalisedASHA(AsyncHyperBandScheduler):
    """Successive halving on ``penalised_score`` (see :func:`orchestrator.pareto.penalised_score`)."""

    def __init__(
        self,
        *,
        max_epochs: int,
        grace_epochs: int,
        ref_eps: float,
        penalty: float,
        reduction_factor: float = 2.0,
    ) -> None:
        super().__init__(
            time_attr="epoch",
            metric=SCORE,
            mode="max",
            max_t=max_epochs,
            grace_period=grace_epochs,
            reduction_factor=reduction_factor,
        )
        self.ref_eps, self.penalty = ref_eps, penalty

    @property
    def metric(self) -> str:
        """What Tune's strict metric check looks for in results: the score is derived from
        ``val_acr`` (and ``val_acc``) here, so trials never report it themselves."""
        return "val_acr"

    def _scored(self, trial: Any, result: dict | None) -> dict:
        result = dict(result or {})
        if "val_acc" in result and "val_acr" in result:
            try:
                acc, acr = float(result["val_acc"]), float(result["val_acr"])
            except (TypeError, ValueError):
                acc = acr = math.nan
            target = float(trial.config.get("target", 0.0))
            result[SCORE] = penalised_score(
                acr, acc, target=target, ref_eps=self.ref_eps, penalty=self.penalty
            )
        return result

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return super().on_trial_result(tune_controller, trial, self._scored(trial, result))

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, self._scored(trial, result))
