"""IBP whose every step also sleeps, registered from outside ``trainers/`` (``--plugins
tests.slow_method``): a trial that lasts long enough to be signalled mid-way however fast or
loaded the machine is, since sleeping takes no CPU (tests/test_sweep.py's preemption test)."""

from __future__ import annotations

import time

from search_spaces import SpaceContext, SuggestTrial, register_space
from trainers.methods import register_method
from trainers.methods.certified import CertifiedTraining
from trainers.radius import FixedRadius

NAME = "slow-ibp"
STEP_SLEEP_S = 0.05


class SlowTraining(CertifiedTraining):
    def step(self, *args, **kwargs):
        time.sleep(STEP_SLEEP_S)
        return super().step(*args, **kwargs)


@register_method(NAME)
def build(cfg, steps_per_epoch: int) -> CertifiedTraining:
    return SlowTraining(cfg, steps_per_epoch, radius=FixedRadius())


@register_space(NAME)
def slow_space(trial: SuggestTrial, ctx: SpaceContext) -> dict:
    return {
        "method": NAME,
        "epochs": ctx.max_epochs,
        "std_epochs": 1,
        "ramp_epochs": 2,
        "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True),
    }
