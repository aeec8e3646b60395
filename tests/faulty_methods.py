"""Two IBP variants that fail on purpose, registered from outside ``trainers/`` (``--plugins
tests.faulty_methods``), for tests/test_sweep_trials.py:

* ``nan-ibp`` trains its first epoch as IBP, then its loss is NaN: a trial that diverges after a
  checkpoint of a good epoch exists;
* ``hung-ibp`` blocks in its first step on an event nothing sets: a trial that never reports an
  epoch, however fast or slow the machine is.
"""

from __future__ import annotations

import dataclasses
import threading

from search_spaces import SpaceContext, SuggestTrial, register_space
from trainers.methods import register_method
from trainers.methods.certified import CertifiedTraining
from trainers.radius import FixedRadius

NAN, HUNG = "nan-ibp", "hung-ibp"
_NEVER = threading.Event()  # a file that never comes: nothing sets it


class NanAfterOneEpoch(CertifiedTraining):
    def step(self, model, x, y, step, idx=None):
        out = super().step(model, x, y, step, idx=idx)
        if step >= self.steps_per_epoch:
            return dataclasses.replace(out, loss=out.loss * float("nan"))
        return out


class Hung(CertifiedTraining):
    def step(self, *args, **kwargs):
        _NEVER.wait()
        return super().step(*args, **kwargs)


@register_method(NAN)
def build_nan(cfg, steps_per_epoch: int) -> CertifiedTraining:
    return NanAfterOneEpoch(cfg, steps_per_epoch, radius=FixedRadius())


@register_method(HUNG)
def build_hung(cfg, steps_per_epoch: int) -> CertifiedTraining:
    return Hung(cfg, steps_per_epoch, radius=FixedRadius())


def _settings(name: str, trial: SuggestTrial, ctx: SpaceContext) -> dict:
    return {
        "method": name,
        "epochs": ctx.max_epochs,
        "std_epochs": 0,
        "ramp_epochs": 1,
        "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True),
    }


@register_space(NAN)
def nan_space(trial: SuggestTrial, ctx: SpaceContext) -> dict:
    return _settings(NAN, trial, ctx)


@register_space(HUNG)
def hung_space(trial: SuggestTrial, ctx: SpaceContext) -> dict:
    return _settings(HUNG, trial, ctx)
