"""Search spaces: one define-by-run function per training method, found by name.

A space is ``space(trial, ctx) -> dict``: it calls only ``trial.suggest_*`` (so Optuna sees
every tuned value and its distribution) and returns the trial-config entries derived from
them (e.g. epoch counts from fractions of the trial's epochs). Ranges are expressed relative
to the sweep (``ctx``) so one space serves MNIST and CIFAR-10 alike. A new method is a new
function plus one ``@register_space`` line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from trainers.registry import Registry


class SuggestTrial(Protocol):
    """The part of ``optuna.Trial`` a space may use (keeps this package free of optuna)."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int) -> int: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


# A knob searched through its complement 1 - knob (on a log scale, dense near knob = 1) is
# suggested under this prefix: ``one_minus_kappa``.
COMPLEMENT = "one_minus_"
# How the spaces trace the accuracy-robustness trade-off (--protocol). tuned: every method
# searches its training radius cap (1/8 to 2x the data set's radius) and kappa; paper: the cap
# is the data set's radius for every method and kappa is searched, as the ACERT authors trace
# accuracy-robustness curves (kappa varied at a fixed radius).
PROTOCOLS = ("tuned", "paper")


@dataclass(frozen=True)
class SpaceContext:
    """What a space may depend on: fixed for a whole sweep, never per trial."""

    max_epochs: int  # --epochs: the largest epoch count a trial may use
    ref_eps: float  # the dataset's standard training radius, pixel units
    protocol: str = "tuned"  # --protocol, one of PROTOCOLS

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"invalid max_epochs={self.max_epochs!r}: must be >= 1")
        if not self.ref_eps > 0:
            raise ValueError(f"invalid ref_eps={self.ref_eps!r}: must be > 0")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"invalid protocol={self.protocol!r}: choose one of {', '.join(PROTOCOLS)}")


SearchSpace = Callable[[SuggestTrial, SpaceContext], dict[str, Any]]
# One space per training method, under the method's name; the contract tests check that every
# space returns only settings its method accepts (tests/test_search_spaces.py).
SPACES: Registry[SearchSpace] = Registry("search space")


def register_space(name: str) -> Callable[[SearchSpace], SearchSpace]:
    return SPACES.register(name)


get_space = SPACES.get


class _Fixing:
    """A trial whose suggestions for the fixed names return the fixed value (Optuna never sees
    those names, so TPE models only what is searched). A knob searched through its complement
    (``one_minus_kappa``, see ``search_spaces.common``) is fixed by fixing the knob (``kappa``)."""

    def __init__(self, trial: SuggestTrial, fixed: Mapping[str, Any]) -> None:
        self._trial, self._fixed = trial, fixed

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        if name in self._fixed:
            return self._fixed[name]
        knob = name.removeprefix(COMPLEMENT)
        if knob != name and knob in self._fixed:
            return 1.0 - self._fixed[knob]
        return self._trial.suggest_float(name, low, high, log=log)

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return self._fixed[name] if name in self._fixed else self._trial.suggest_int(name, low, high)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._fixed[name] if name in self._fixed else self._trial.suggest_categorical(name, choices)


class FixedSpace:
    """``space`` with some settings fixed (see :func:`with_fixed`). A class, not a closure: Tune
    pickles its searcher, and the space with it, every time it saves the experiment."""

    def __init__(self, space: SearchSpace, fixed: Mapping[str, Any]) -> None:
        self.space, self.fixed = space, dict(fixed)
        self.__name__ = f"{getattr(space, '__name__', 'space')}_fixed"

    def __call__(self, trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
        return {**self.space(_Fixing(trial, self.fixed), ctx), **self.fixed}


def with_fixed(space: SearchSpace, fixed: Mapping[str, Any]) -> SearchSpace:
    """``space`` with some settings fixed (``--fixed``): a suggestion of a fixed name returns
    its value, and a fixed setting the space derives (``std_epochs`` from ``std_frac``, say) is
    replaced in its output. Derived values that depend on a fixed one follow it (``min_eps``
    is a fraction of a fixed ``max_eps``)."""
    return FixedSpace(space, fixed) if fixed else space


from search_spaces import acert, baselines, mtl_ibp, sabr  # noqa: E402,F401  (registers the spaces)
