"""The parts bench.search passes to ``orchestrator.searcher.TargetSearcher`` to measure the
searcher's rules against alternatives: a policy with perfect stopping (:class:`OraclePolicy`),
the rules the design rejected (:data:`VARIANTS`) and failures told as FAIL
(:func:`fail_told_parts`). Imported by bench.search after its setup (Optuna, torch)."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from orchestrator.search.outcomes import COMPLETE, FAILED, OUTCOME, PRUNED
from orchestrator.search.sharing import GoodGroupSharing, ShareMeasured
from orchestrator.search.studies import ConstrainedStudies


class OraclePolicy:
    """Gives every trial to a target not solved yet (fewest trials given first): the perfect
    stopping that the independent studies' sum assumes, for the shared search. A benchmark
    device only: a real search does not know when a target is solved."""

    def __init__(self, best: dict[float, float], fraction: float) -> None:
        self.best, self.fraction = best, fraction

    def choose(self, view) -> int:
        done = [(b or 0.0) >= self.fraction * self.best[a] for a, b in zip(view.targets, view.best)]
        return min((done[k], view.given[k], view.in_flight[k], k) for k in range(len(done)))[-1]

    def observe(self, view) -> None:
        pass


class LeastRecentImprovement:
    """Allocation rule measured against the default: after the targets without a feasible
    trial, the one whose best improved least recently, in finished trials."""

    def __init__(self) -> None:
        self.seen: list | None = None
        self.at: list[int] | None = None

    def observe(self, view) -> None:
        seen, at = self.seen or [None] * len(view.best), self.at or [0] * len(view.best)
        self.at = [view.n_finished if b != o else t for b, o, t in zip(view.best, seen, at)]
        self.seen = list(view.best)

    def choose(self, view) -> int:
        at = self.at or [0] * len(view.targets)
        keys = [
            (b is not None, at[k] if b is not None else 0, view.in_flight[k], view.given[k], k)
            for k, b in enumerate(view.best)
        ]
        return min(keys)[-1]


class ShareAllFeasible:
    """Sharing rule: every trial copied where feasible or nearly, good group or not."""

    def __init__(self, margin: float = 0.02) -> None:
        self.margin, self.targets = margin, ()

    def reset(self, targets) -> None:
        self.targets = tuple(targets)

    def entered(self, rec, j) -> None:
        pass

    def shares(self, rec, j) -> bool:
        ok = rec.outcome in (COMPLETE, PRUNED) and rec.acc >= self.targets[j] - self.margin
        return rec.outcome == FAILED or ok


def variant_parts(name: str) -> dict[str, Any]:
    """The TargetSearcher parts of one of VARIANTS: the shared search with one rule changed."""
    return {
        "least_recent_improvement": {"policy": LeastRecentImprovement()},
        "share_all_feasible": {"sharing": ShareAllFeasible()},
        "share_everything": {"sharing": ShareMeasured()},  # the warm start of the previous design
    }[name]


VARIANTS = ("least_recent_improvement", "share_all_feasible", "share_everything")


def fail_told_parts(name: str) -> dict[str, Any]:
    """TargetSearcher parts: ``worst``, the searcher as it is; ``fail``, a failed or diverged
    trial told as FAIL (ignored by TPE: the design before issue #10) and shared nowhere."""
    if name == "worst":
        return {}

    class FailToldStudies(ConstrainedStudies):
        def tell(self, study, trial, rec, target):
            if rec.outcome != FAILED:
                return super().tell(study, trial, rec, target)
            trial.set_user_attr(OUTCOME, rec.outcome)
            study.tell(trial, state=TrialState.FAIL)

        def freeze(self, rec, target, common):
            if rec.outcome != FAILED:
                return super().freeze(rec, target, common)
            return optuna.trial.create_trial(state=TrialState.FAIL, **common)

    class NoFailedSharing(GoodGroupSharing):
        def shares(self, rec, j):
            return rec.outcome != FAILED and super().shares(rec, j)

    return {"search": FailToldStudies(name="fail_told"), "sharing": NoFailedSharing()}
