"""A toy training method registered from outside ``trainers/``: one file, one register line.

It trains every sample at a fixed fraction of eps_max(t) (a new radius policy, a
``trainers.radius.RadiusBase``) with the IBP margins and the usual loss mixing. Used as the
sweep's ``--plugins tests.toy_method`` to show that a new method reaches the trainer, the search
and the frontier with no other change, and imported by tests/test_contracts.py, whose suites then
run it as every registered method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from search_spaces import SpaceContext, SuggestTrial, register_space
from search_spaces.common import LR_RANGE
from trainers.methods import register_method
from trainers.methods.certified import CertifiedTraining
from trainers.radius import RadiusBase
from trainers.settings import bad, setting

NAME = "toy-fraction"


@dataclass(frozen=True)
class ToyParams:
    fraction: float = setting(0.5, "toy: train every sample at this fraction of eps_max(t)")

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise bad("fraction", self.fraction, "must lie in (0, 1]")


class FractionRadius(RadiusBase):
    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def __call__(self, model, x, y, eps_t, *, clean=None, regularising=False, idx=None):
        return torch.full((x.shape[0],), self.fraction * eps_t, dtype=x.dtype, device=x.device)


@register_method(NAME, ToyParams)
def build(cfg, steps_per_epoch: int) -> CertifiedTraining:
    return CertifiedTraining(cfg, steps_per_epoch, radius=FractionRadius(cfg.params.fraction))


@register_space(NAME)
def toy_space(trial: SuggestTrial, ctx: SpaceContext) -> dict:
    return {
        "method": NAME,
        "epochs": ctx.max_epochs,
        "std_epochs": 0,
        "ramp_epochs": 1,
        "fraction": trial.suggest_float("fraction", 0.1, 1.0),
        "kappa": trial.suggest_float("kappa", 0.0, 0.9),
        "lr": trial.suggest_float("lr", *LR_RANGE, log=True),  # the space contract's range
    }
