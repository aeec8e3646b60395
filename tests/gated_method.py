"""ACERT behind a gate (tests/gate.py), registered from outside ``trainers/`` (``--plugins
tests.gated_method --methods gated-acert``): the cluster rehearsal's trials.

Each training run of a trial trains exactly as ``acert`` does (the same settings, search space
and builder), except that before its first step it calls ``tests.gate.pass_or_wait``: the first
run goes through, every other one waits until the test opens the gate. The test can so kill a
pod while a trial is provably mid-epoch, on any machine speed and load.

Import this module only where it is used (the sweep's ``--plugins``): it registers a method and
a search space.
"""

from __future__ import annotations

import os

from search_spaces import SpaceContext, SuggestTrial, register_space
from search_spaces.acert import acert_space
from tests.gate import GATED_METHOD, pass_or_wait
from trainers.methods import acert, register_method
from trainers.methods.acert import ACERTParams

NAME = GATED_METHOD


def trial_name() -> str:
    """The Tune trial this process trains (for the waiting marker), or its pid outside Tune."""
    try:
        from ray import tune

        return tune.get_context().get_trial_id() or f"pid{os.getpid()}"
    except Exception:  # not inside a Tune trial (a direct trainers.train run)
        return f"pid{os.getpid()}"


class GatedTraining:
    """A training method whose first step of a run waits at the gate; the rest is ``inner``'s
    (state_dict, steps_per_epoch...)."""

    def __init__(self, inner) -> None:
        self._inner, self._through = inner, False

    def step(self, model, x, y, step, idx=None):
        if not self._through:
            pass_or_wait(trial_name())
            self._through = True
        return self._inner.step(model, x, y, step, idx=idx)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


@register_method(NAME, ACERTParams)
def build(cfg, steps_per_epoch: int, **seams) -> GatedTraining:
    return GatedTraining(acert.build(cfg, steps_per_epoch, **seams))


@register_space(NAME)
def gated_space(trial: SuggestTrial, ctx: SpaceContext) -> dict:
    return {**acert_space(trial, ctx), "method": NAME}
