"""The mathematics of the frontier, as pure functions: dominance, per-target winners, and the
penalised score the early-stopping scheduler ranks.

Both objectives are maximised: clean accuracy and ACR. Non-finite values (a diverged trial
reporting NaN) never enter a front or win a target, and neither does a trial that did not train
its whole epoch budget (one the scheduler stopped early): its figures come from a shorter
training than its rivals', and a winner is retrained in full by whoever acts on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialPoint:
    """One finished trial as the frontier sees it: its validation figures and where it came from."""

    trial_id: str
    val_acc: float
    val_acr: float
    method: str = "acert"
    config: dict[str, Any] = field(default_factory=dict, compare=False)
    failed: bool = False
    epoch: int | None = None  # the epoch its figures (and its checkpoint) are of
    budget: int | None = None  # the epochs its config asked for; None: not known (counts as trained)

    @property
    def usable(self) -> bool:
        """Finite figures of a trial that did not fail: it is drawn on the frontier's plot."""
        return not self.failed and math.isfinite(self.val_acc) and math.isfinite(self.val_acr)

    @property
    def full_budget(self) -> bool:
        """It trained every epoch its config asked for (a point of unknown budget counts so)."""
        return self.budget is None or (self.epoch is not None and self.epoch >= self.budget)

    @property
    def eligible(self) -> bool:
        """It may win a target: usable and trained for its full budget."""
        return self.usable and self.full_budget


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a is at least as good as b in both objectives and strictly better in one."""
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (accuracy, ACR) points, by increasing accuracy.

    Exact duplicates are all kept (neither dominates the other), as in Optuna's
    ``study.best_trials``; non-finite points are ignored. O(n log n): sort by accuracy
    descending, ACR descending, and sweep keeping the running best ACR.
    """
    finite = [i for i, (a, r) in enumerate(points) if math.isfinite(a) and math.isfinite(r)]
    order = sorted(finite, key=lambda i: (-points[i][0], -points[i][1], i))
    front: list[int] = []
    best_acr = -math.inf
    last: tuple[float, float] | None = None
    for i in order:
        p = points[i]
        if p == last or p[1] > best_acr:  # a duplicate of a front point is on the front too
            front.append(i)
            best_acr = max(best_acr, p[1])
            last = p
    return sorted(front, key=lambda i: (points[i][0], i))


def select_winner(trials: Sequence[TrialPoint], target: float) -> TrialPoint | None:
    """The feasible trial (val_acc >= target) of largest validation ACR among those that trained
    their full epoch budget (:attr:`TrialPoint.eligible`), or None if none is.

    Ties in ACR go to the higher accuracy, then to the earlier trial, so the choice is
    deterministic whatever order Ray finished the trials in.
    """
    feasible = [t for t in trials if t.eligible and t.val_acc >= target]
    if not feasible:
        return None
    return min(feasible, key=lambda t: (-t.val_acr, -t.val_acc, t.trial_id))


def satisfied_targets(val_acc: float, targets: Sequence[float]) -> list[float]:
    """Every target a trial with this validation accuracy counts for (trials are shared)."""
    if not math.isfinite(val_acc):
        return []
    return [t for t in targets if val_acc >= t]


def penalised_score(
    val_acr: float, val_acc: float, *, target: float, ref_eps: float, penalty: float
) -> float:
    """What ASHA ranks: ACR in units of the dataset's radius, minus ``penalty`` per unit of
    accuracy below the trial's target.

    ASHA understands one metric only; ranking raw ACR would promote infeasible trials
    (large radius, low accuracy) and stop feasible ones. NaN/inf give -inf so a
    diverging trial is stopped first.
    """
    if not (math.isfinite(val_acr) and math.isfinite(val_acc)):
        return -math.inf
    return val_acr / ref_eps - penalty * max(0.0, target - val_acc)
