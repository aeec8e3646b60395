"""ACERT's search space: the trade-off knobs every method shares (training radius cap and loss
mixing, ``search_spaces.common.suggest_tradeoff``), radius growth, regulariser and optimiser.

kappa and the cap move a model along the accuracy-robustness trade-off, so they are what the
per-target search is about; under ``--protocol paper`` the cap is the data set's radius, as
published (the certified radii of the evaluation are capped there too), and under the default
``--protocol tuned`` it is searched like every baseline's, so ACERT can reach the accurate end
of the frontier as they do. The regulariser weight of Shi et al. 2021 is tuned too because it
interacts with the ramp. The radius floor ``min_eps`` keeps its default (1e-6).
"""

from __future__ import annotations

from typing import Any

from search_spaces import SpaceContext, SuggestTrial, register_space
from search_spaces.common import suggest_optimiser, suggest_schedule, suggest_tradeoff


@register_space("acert")
def acert_space(trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
    return {
        "method": "acert",
        **suggest_schedule(trial, ctx),
        **suggest_tradeoff(trial, ctx),
        "reg_weight": trial.suggest_float("reg_weight", 0.01, 1.0, log=True),
        **suggest_optimiser(trial),
    }
