"""The fixed-radius baselines: IBP (Gowal et al. 2018, with Shi et al. 2021 warm-up) and
CROWN-IBP (Zhang et al. 2020). Their tradeoff knobs are the training eps (searched from 1/8 to
2x the data set's radius: a smaller one buys clean accuracy, a larger one is the usual way to
certify up to the data set's radius) and the mixing of the standard loss (kappa), plus
CROWN-IBP's beta schedule; the same schedule and optimiser ranges
as ACERT keep the frontiers comparable.
"""

from __future__ import annotations

from typing import Any

from search_spaces import SpaceContext, SuggestTrial, register_space
from search_spaces.common import suggest_kappa, suggest_optimiser, suggest_schedule


def fixed_radius(trial: SuggestTrial, ctx: SpaceContext, method: str) -> dict[str, Any]:
    """The knobs every fixed-radius method shares (SABR's space adds its own to them)."""
    return {
        "method": method,
        **suggest_schedule(trial, ctx),
        # Smaller training radii are how fixed-eps methods buy clean accuracy.
        "max_eps": trial.suggest_float("max_eps", ctx.ref_eps / 8, ctx.ref_eps * 2, log=True),
        **suggest_kappa(trial, 1.0),
        "reg_weight": trial.suggest_float("reg_weight", 0.01, 1.0, log=True),
        **suggest_optimiser(trial),
    }


@register_space("ibp")
def ibp_space(trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
    return fixed_radius(trial, ctx, "ibp")


@register_space("crown-ibp")
def crown_ibp_space(trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
    out = fixed_radius(trial, ctx, "crown-ibp")
    out["beta_start"] = trial.suggest_float("beta_start", 0.5, 1.0)
    out["beta_end"] = trial.suggest_float("beta_end", 0.0, 0.5)
    return out
