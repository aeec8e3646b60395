"""IBP training (Gowal et al. 2018) with the fast initialisation and regularisers of Shi et al.
2021: one fixed radius eps_max(t) for every sample, ramped up after standard epochs."""

from __future__ import annotations

from trainers.methods.base import register_method
from trainers.methods.certified import CertifiedTraining
from trainers.radius import FixedRadius


@register_method("ibp")
def build(cfg, steps_per_epoch: int) -> CertifiedTraining:
    return CertifiedTraining(cfg, steps_per_epoch, radius=FixedRadius())
