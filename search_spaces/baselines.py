"""The fixed-radius baselines: IBP (Gowal et al. 2018, with Shi et al. 2021 warm-up) and
CROWN-IBP (Zhang et al. 2020). Their trade-off knobs are those every method shares (the
training radius cap and the mixing of the standard loss, kappa:
``search_spaces.common.suggest_tradeoff``), plus CROWN-IBP's beta schedule; the same schedule
and optimiser ranges as ACERT keep the frontiers comparable.
"""

from __future__ import annotations

from typing import Any

from search_spaces import SpaceContext, SuggestTrial, register_space
from search_spaces.common import suggest_optimiser, suggest_schedule, suggest_tradeoff


def fixed_radius(trial: SuggestTrial, ctx: SpaceContext, method: str) -> dict[str, Any]:
    """The knobs every fixed-radius method shares (SABR's space adds its own to them)."""
    return {
        "method": method,
        **suggest_schedule(trial, ctx),
        **suggest_tradeoff(trial, ctx),
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
