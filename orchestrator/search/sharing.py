"""Which other targets' studies a finished trial is added to: a :class:`SharingRule`. The
default, :class:`GoodGroupSharing`, adds it only where it would rank in TPE's good group."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Protocol

from orchestrator.search.outcomes import COMPLETE, FAILED, PRUNED, Record

SHARE_MARGIN = 0.02  # accuracy below a target within which a trial is still shared with it
GOOD_GROUP_MAX = 25


def good_group_size(n: int) -> int:
    """The size of TPE's good group in a study of n finished trials: Optuna's
    ``default_gamma`` (single objective), ``min(ceil(0.1 n), 25)``."""
    return min(math.ceil(0.1 * n), GOOD_GROUP_MAX)


class SharingRule(Protocol):
    def reset(self, targets: Sequence[float]) -> None:
        """Forget every study's content; ``targets[j]`` is the target of study j."""
        ...

    def entered(self, rec: Record, j: int) -> None:
        """A finished (or replayed) trial entered study j."""
        ...

    def shares(self, rec: Record, j: int) -> bool:
        """Whether study j (not the trial's own) gets a copy of the finished trial ``rec``."""
        ...


class GoodGroupSharing:
    """A copy only where it enters the study's good group.

    A diverged or failed trial always (its region diverges whatever the target; TPE puts it
    in the bad group). A measured one only if it is feasible for a_j or nearly
    (``val_acc >= a_j - margin``) *and* TPE would rank it in j's good group: j has fewer
    feasible trials than the good group holds, or it beats j's ``good_group_size``-th best.
    A copy that would only join the bad group is left out: it would grow the study, and with
    it the good group (``ceil(0.1 n)``), pulling j's model towards trials that are feasible
    but far from j's constraint, where its best ACR is not.
    """

    def __init__(self, margin: float = SHARE_MARGIN) -> None:
        if not margin >= 0:
            raise ValueError(f"share_margin={margin!r} must be >= 0")
        self.margin = margin
        self.reset(())

    def reset(self, targets: Sequence[float]) -> None:
        self._targets = tuple(targets)
        self._n_told = [0] * len(self._targets)  # finished trials per study (TPE's n)
        self._top: list[list[float]] = [[] for _ in self._targets]  # negated best feasible values

    def entered(self, rec: Record, j: int) -> None:
        if rec.outcome not in (COMPLETE, PRUNED, FAILED):
            return
        self._n_told[j] += 1
        if rec.outcome == COMPLETE and rec.acc >= self._targets[j]:
            bisect.insort(self._top[j], -rec.value)
            del self._top[j][GOOD_GROUP_MAX:]

    def shares(self, rec: Record, j: int) -> bool:
        if rec.outcome == FAILED:
            return True
        a = self._targets[j]
        if rec.outcome not in (COMPLETE, PRUNED) or rec.acc < a - self.margin:
            return False
        best = self._top[j]
        gamma = good_group_size(self._n_told[j] + 1)
        if len(best) < gamma:
            return True
        return rec.outcome == COMPLETE and rec.acc >= a and -rec.value < best[gamma - 1]

    def __getstate__(self) -> dict:
        return {"margin": self.margin}  # the rest is rebuilt from the replayed studies

    def __setstate__(self, state: dict) -> None:
        self.margin = state["margin"]
        self.reset(())


class ShareMeasured:
    """Every finished trial (measured, stopped or failed) to every study: for a sampler that
    models the whole objective and constraint surfaces (a Gaussian process), where more points
    make a better model and there is no good group to dilute. The studies then differ only in
    their constraint, recomputed per target."""

    def reset(self, targets: Sequence[float]) -> None:
        pass

    def entered(self, rec: Record, j: int) -> None:
        pass

    def shares(self, rec: Record, j: int) -> bool:
        return rec.outcome in (COMPLETE, PRUNED, FAILED)
