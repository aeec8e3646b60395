"""SABR's search space (Mueller et al., ICLR 2023): the small box's relative size lambda, plus
the knobs of the other fixed-radius methods (training radius cap and kappa as every method
searches them, regulariser, schedule and optimiser, ``search_spaces.baselines.fixed_radius``),
so the frontiers stay comparable.

lambda is searched log-uniformly over [0.01, 1]: around the settings in use (the public CTBench
scripts train SABR with 0.1 on CIFAR-10 2/255 and 0.4 on TinyImageNet 1/255) and down to boxes
100x smaller than the eps-box; smaller boxes trade certifiability for accuracy, and lambda = 1
is IBP training. The training attack
keeps its defaults (8 PGD steps, one restart): it only places the box.
"""

from __future__ import annotations

from typing import Any

from search_spaces import SpaceContext, SuggestTrial, register_space
from search_spaces.baselines import fixed_radius

LAMBDA_RANGE = (0.01, 1.0)


@register_space("sabr")
def sabr_space(trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
    out = fixed_radius(trial, ctx, "sabr")
    out["sabr_lambda"] = trial.suggest_float("sabr_lambda", *LAMBDA_RANGE, log=True)
    return out
