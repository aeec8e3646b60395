"""IBP with a stand-in for luck, registered from outside ``trainers/`` (``--plugins
tests.lucky_method``): a configuration with ``lucky=True`` trains normally under the sweep's
own seed (``train_seed`` unset, as in the search) but learns a wrong labelling under any fresh
seed (``train_seed`` set, as in the confirm stage), so its validation accuracy collapses when
it is retrained. The confirm stage's tests use it to make a search winner fail confirmation
deterministically, whatever the machine. Imported at run time (``--plugins``, a fixture), not at
collection: the registry-wide test suites are parametrised over the methods known then."""

from __future__ import annotations

import os
from dataclasses import dataclass

from search_spaces import SpaceContext, SuggestTrial, register_space
from search_spaces.common import LR_RANGE
from trainers.methods import register_method
from trainers.methods.certified import CertifiedTraining
from trainers.radius import FixedRadius
from trainers.settings import setting

NAME = "lucky-ibp"


@dataclass(frozen=True)
class LuckyParams:
    lucky: bool = setting(False, "lucky-ibp: learn a wrong labelling when retrained with a fresh seed")


class UnluckyTraining(CertifiedTraining):
    def step(self, model, x, y, step, idx=None):
        return super().step(model, x, (y + 1) % self.cfg.spec.num_classes, step, idx)


@register_method(NAME, LuckyParams)
def build(cfg, steps_per_epoch: int) -> CertifiedTraining:
    log = os.environ.get("LUCKY_BUILD_LOG")  # one line per training run: tests count the runs
    if log:
        with open(log, "a") as f:
            f.write(f"{cfg.params.lucky} {cfg.train_seed}\n")
    unlucky = cfg.params.lucky and cfg.train_seed is not None
    return (UnluckyTraining if unlucky else CertifiedTraining)(cfg, steps_per_epoch, radius=FixedRadius())


@register_space(NAME)
def lucky_space(trial: SuggestTrial, ctx: SpaceContext) -> dict:
    return {
        "method": NAME,
        "epochs": ctx.max_epochs,
        "std_epochs": 0,
        "ramp_epochs": 1,
        "lr": trial.suggest_float("lr", *LR_RANGE, log=True),  # the space contract's range
        "lucky": trial.suggest_categorical("lucky", [False, True]),
    }
