"""Asynchronous successive halving (ASHA) that is fair to every target accuracy.

Ray's ASHA ranks all trials on one metric in one set of rungs. With several targets that is
unfair: a trial searching for a high target is feasible with a lower ACR by nature (the
accuracy-robustness tradeoff), so rung cut-offs set by lower-target trials stop it early
(issue #10). Here each target has its own rungs, and a trial is judged by every target it can
still win:

* at each milestone (``grace_epochs * reduction_factor**i`` epochs), a trial competes for its
  own target and for every other target its validation accuracy meets or nearly meets
  (``val_acc >= a - share_margin``, as the searcher shares trials);
* for each of those targets its penalised score (:func:`orchestrator.pareto.penalised_score`
  against that target) is compared with the cut-off of that target's rung (the top
  ``1 / reduction_factor`` quantile of the scores recorded there, as in ASHA) and recorded;
* it is stopped only if it falls below the cut-off of *every* target it competes for, i.e. it
  is dominated for every target it can still reach. A target whose rung is empty stops nobody.

The score is computed here on a copy of the result: the searcher and MLflow keep seeing the
true, unpenalised figures. A stopped trial's last result reaches the searcher, which tells
Optuna it was PRUNED (its epoch is below its config's ``epochs``); Ray marks that result
``done`` as well, so ``done`` does not tell stopped from finished trials.

Rungs live in memory: like Ray's ``ASHAScheduler`` (whose rungs are not part of the saved
experiment state) they start empty after ``Tuner.restore``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from orchestrator.pareto import penalised_score
from trainers.metrics import ENDED, EPOCH, VAL_ACC, VAL_ACR

SHARE_MARGIN = 0.02  # as orchestrator.searcher.SHARE_MARGIN (not imported: no Optuna here)


REDUCTION_FACTOR = 2.0  # ASHA's: the rungs are grace_epochs * 2**i epochs


def milestones(grace_epochs: int, max_epochs: int, reduction_factor: float) -> list[int]:
    """The epochs at which trials are judged: grace, grace * rf, ... below ``max_epochs``."""
    out, t = [], float(grace_epochs)
    while t < max_epochs:
        if not out or int(t) > out[-1]:
            out.append(int(t))
        t *= reduction_factor
    return out


class PenalisedASHA(FIFOScheduler):
    """ASHA with rungs per target; see the module docstring."""

    def __init__(
        self,
        *,
        max_epochs: int,
        grace_epochs: int,
        ref_eps: float,
        penalty: float,
        reduction_factor: float = REDUCTION_FACTOR,
        targets: tuple[float, ...] = (),
        share_margin: float = SHARE_MARGIN,
    ) -> None:
        if grace_epochs < 1 or max_epochs < grace_epochs:
            raise ValueError(f"need 1 <= grace_epochs <= max_epochs, got {grace_epochs=}, {max_epochs=}")
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor={reduction_factor!r} must be > 1")
        super().__init__()
        self.ref_eps, self.penalty, self.rf, self.margin = ref_eps, penalty, reduction_factor, share_margin
        self._milestones = milestones(grace_epochs, max_epochs, reduction_factor)
        self._rungs: dict[float, dict[int, dict[str, float]]] = {}  # target -> milestone -> scores
        self._passed: dict[str, int] = {}  # trial id -> last milestone it was judged at
        self.num_stopped = 0
        for a in targets:
            self._target_rungs(float(a))

    @property
    def metric(self) -> str:
        """What Tune's strict metric check looks for in results: the score is derived from
        ``val_acr`` (and ``val_acc``) here, so trials never report it themselves."""
        return VAL_ACR

    def _target_rungs(self, target: float) -> dict[int, dict[str, float]]:
        if target not in self._rungs:
            self._rungs[target] = {m: {} for m in self._milestones}
        return self._rungs[target]

    def cutoff(self, target: float, milestone: int) -> float | None:
        """The score a trial must reach at this rung of this target (None: rung empty)."""
        scores = list(self._rungs.get(target, {}).get(milestone, {}).values())
        if not scores:
            return None
        # -inf (diverged) clipped: interpolating between two -inf would give NaN
        return float(np.nanpercentile(np.maximum(scores, -1e12), (1 - 1 / self.rf) * 100))

    def judge(self, trial_id: str, own_target: float, val_acc: float, val_acr: float, epoch: int) -> str:
        """CONTINUE or STOP for a result at ``epoch``; records the trial in the rungs."""
        passed = [m for m in self._milestones if m <= epoch and m > self._passed.get(trial_id, 0)]
        if not passed:
            return TrialScheduler.CONTINUE
        milestone = passed[-1]  # as ASHA: one judgement at the highest milestone reached
        self._passed[trial_id] = milestone
        self._target_rungs(own_target)
        competes = [own_target] + [
            a
            for a in self._rungs
            if a != own_target and math.isfinite(val_acc) and val_acc >= a - self.margin
        ]
        below = []
        for a in competes:
            score = penalised_score(val_acr, val_acc, target=a, ref_eps=self.ref_eps, penalty=self.penalty)
            cut = self.cutoff(a, milestone)
            below.append(cut is not None and score < cut)
            self._rungs[a][milestone][trial_id] = score
        if all(below):
            self.num_stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    @staticmethod
    def _figures(trial: Any, result: dict) -> tuple[float, float, float, int] | None:
        if EPOCH not in result or VAL_ACC not in result or VAL_ACR not in result:
            return None
        if any(result.get(k) for k in ENDED):  # its worst figures measure no model: not ranked
            return None
        try:
            acc, acr, epoch = float(result[VAL_ACC]), float(result[VAL_ACR]), int(result[EPOCH])
        except (TypeError, ValueError):
            return None
        return float(trial.config.get("target", 0.0)), acc, acr, epoch

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        figures = self._figures(trial, result)
        if figures is None:
            return TrialScheduler.CONTINUE
        target, acc, acr, epoch = figures
        return self.judge(trial.trial_id, target, acc, acr, epoch)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        figures = self._figures(trial, result or {})
        if figures is not None:  # record the last result, as ASHA does; the decision is moot
            self.judge(trial.trial_id, *figures)
        self._passed.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._passed.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        rungs = "; ".join(
            f"{a:g}: " + " ".join(f"{m}ep {len(r[m])}" for m in self._milestones)
            for a, r in sorted(self._rungs.items())
        )
        return f"PenalisedASHA per target: stopped {self.num_stopped} | {rungs}"
