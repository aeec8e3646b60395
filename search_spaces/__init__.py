"""Search spaces: one define-by-run function per training method, found by name.

A space is ``space(trial, ctx) -> dict``: it calls only ``trial.suggest_*`` (so Optuna sees
every tuned value and its distribution) and returns the trial-config entries derived from
them (e.g. epoch counts from fractions of the trial's epochs). Ranges are expressed relative
to the sweep (``ctx``) so one space serves MNIST and CIFAR-10 alike. A new method is a new
function plus one ``@register_space`` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from trainers.registry import Registry


class SuggestTrial(Protocol):
    """The part of ``optuna.Trial`` a space may use (keeps this package free of optuna)."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int) -> int: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class SpaceContext:
    """What a space may depend on: fixed for a whole sweep, never per trial."""

    max_epochs: int  # --epochs: the largest epoch count a trial may use
    ref_eps: float  # the dataset's standard training radius (PAPER.md), pixel units

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"invalid max_epochs={self.max_epochs!r}: must be >= 1")
        if not self.ref_eps > 0:
            raise ValueError(f"invalid ref_eps={self.ref_eps!r}: must be > 0")


SearchSpace = Callable[[SuggestTrial, SpaceContext], dict[str, Any]]
# One space per training method, under the method's name; the contract tests check that every
# space returns only settings its method accepts (tests/test_search_spaces.py).
SPACES: Registry[SearchSpace] = Registry("search space")


def register_space(name: str) -> Callable[[SearchSpace], SearchSpace]:
    return SPACES.register(name)


get_space = SPACES.get


from search_spaces import acert, baselines, mtl_ibp  # noqa: E402,F401  (registers the spaces)
