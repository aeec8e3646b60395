"""ACERT's search space (PAPER.md): radius growth, loss mixing, maximum radius, optimiser.

kappa and the radius schedule move a model along the accuracy-robustness tradeoff, so they
are what the per-target search is about; the regulariser of Shi et al. 2021 and the radius
floor ``min_eps`` are tuned too because they interact with the ramp.
"""

from __future__ import annotations

from typing import Any

from search_spaces import SpaceContext, SuggestTrial, register_space
from search_spaces.common import suggest_optimiser, suggest_schedule


@register_space("acert")
def acert_space(trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
    max_eps = trial.suggest_float("max_eps", ctx.ref_eps / 2, ctx.ref_eps * 2, log=True)
    return {
        "method": "acert",
        **suggest_schedule(trial, ctx),
        "max_eps": max_eps,
        # (1 - kappa) L_rob + kappa L_std; kappa moves linearly to kappa_final.
        "kappa": trial.suggest_float("kappa", 0.0, 0.9),
        "kappa_final": trial.suggest_float("kappa_final", 0.0, 0.9),
        "reg_weight": trial.suggest_float("reg_weight", 0.01, 1.0, log=True),
        "min_eps": max_eps * trial.suggest_float("min_eps_frac", 0.0, 0.1),
        **suggest_optimiser(trial),
    }
