"""MTL-IBP's search space (De Palma et al. 2024): the IBP weight alpha and the training attack,
with the trade-off knobs (training radius cap and kappa), schedule and optimiser ranges every
method shares (``search_spaces.common``).

alpha is the method's own accuracy-robustness knob and is searched on a log scale: the paper's
settings span 4e-3 (CIFAR-10 2/255) to 0.5 (CIFAR-10 8/255), with 1e-2 to 8e-2 on MNIST,
TinyImageNet and ImageNet64. Its training radius ranges like every method's cap (the paper
trains MNIST at up to 2x the target radius). The attack: one step (a jump to a vertex of the
box, the paper's choice for most settings) to eight (its CIFAR-10 2/255 setting); the step
length follows from the step count (``trainers.attacks``). kappa is searched as for every
method, so that the protocols compare like with like; the paper has no standard-loss term
(kappa = 0 is the upper end of the 1 - kappa range).
"""

from __future__ import annotations

from typing import Any

from search_spaces import SpaceContext, SuggestTrial, register_space
from search_spaces.common import suggest_optimiser, suggest_schedule, suggest_tradeoff


@register_space("mtl-ibp")
def mtl_ibp_space(trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
    return {
        "method": "mtl-ibp",
        **suggest_schedule(trial, ctx),
        **suggest_tradeoff(trial, ctx),
        "alpha": trial.suggest_float("alpha", 1e-3, 0.5, log=True),
        "attack_steps": trial.suggest_categorical("attack_steps", [1, 2, 4, 8]),
        "reg_weight": trial.suggest_float("reg_weight", 0.01, 1.0, log=True),
        **suggest_optimiser(trial),
    }
