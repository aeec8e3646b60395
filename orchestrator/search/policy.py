"""Which target the next trial is for: a :class:`TargetPolicy` picks it from a
:class:`TargetView` of the search so far. The default is :class:`NeediestTarget`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TargetView:
    """What a policy may look at, per target (index k of ``targets``)."""

    targets: tuple[float, ...]
    best: Sequence[float | None]  # best feasible objective value so far (None: none yet)
    given: Sequence[int]  # trials suggested for it
    in_flight: Sequence[int]  # of those, not finished
    budget: int  # trials of the whole search
    n_finished: int  # finished trials of the whole search


class TargetPolicy(Protocol):
    def choose(self, view: TargetView) -> int:
        """The index of the target the next trial is for."""
        ...

    def observe(self, view: TargetView) -> None:
        """Called after each finished trial (a policy with a memory keeps it here)."""
        ...


def choose_target(
    feasible: Sequence[bool], in_flight: Sequence[int], given: Sequence[int], share: float
) -> int:
    """The index of the target the next trial is for: the one that needs it most.

    1. A target with no feasible trial yet, while it has been given fewer than ``share``
       trials (its even share of the budget, so an unreachable target cannot take it all);
       among several, the fewest in flight, then the fewest given, then the lowest.
    2. Otherwise the target given the fewest trials so far (round robin), then the fewest in
       flight, then the lowest.
    """
    keys = [
        (0, in_flight[k], given[k], k) if not f and given[k] < share else (1, given[k], in_flight[k], k)
        for k, f in enumerate(feasible)
    ]
    return min(keys)[-1]


class NeediestTarget:
    """:func:`choose_target` with an even share of the budget per target.

    Measured against alternatives in docs/benchmarks.md (section 5): giving the trial to the
    target whose best was improved least recently starves the others (a target that keeps
    improving never gets a trial of its own); a rising-bandit rule (most recent relative gain)
    did no better than round robin."""

    def choose(self, view: TargetView) -> int:
        feasible = [b is not None for b in view.best]
        return choose_target(feasible, view.in_flight, view.given, view.budget / len(view.targets))

    def observe(self, view: TargetView) -> None:
        pass
