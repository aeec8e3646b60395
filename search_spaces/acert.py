"""ACERT's search space (PAPER.md): radius growth, loss mixing, regulariser, optimiser.

kappa and the radius schedule move a model along the accuracy-robustness tradeoff, so they
are what the per-target search is about; the regulariser weight of Shi et al. 2021 is tuned
too because it interacts with the ramp. As published, the largest radius ``max_eps`` is the
data set's (the certified radii of the evaluation are capped there too, so training above it
buys nothing the frontier counts; ``--fixed max_eps=...`` sets another), and the radius floor
``min_eps`` keeps its default (1e-6).
"""

from __future__ import annotations

from typing import Any

from search_spaces import SpaceContext, SuggestTrial, register_space
from search_spaces.common import suggest_kappa, suggest_optimiser, suggest_schedule


@register_space("acert")
def acert_space(trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
    return {
        "method": "acert",
        **suggest_schedule(trial, ctx),
        "max_eps": ctx.ref_eps,
        **suggest_kappa(trial, 0.9),
        "reg_weight": trial.suggest_float("reg_weight", 0.01, 1.0, log=True),
        **suggest_optimiser(trial),
    }
