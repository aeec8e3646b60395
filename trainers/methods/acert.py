"""ACERT: adaptive certified training (Nurlanov, Schmidt, Bernard 2023).

Every sample is trained at its own radius eps_i: its current certified radius under the
model, i.e. the root of R(x_i, eps) = 0 with R the smallest IBP margin lower bound, capped
at eps_max(t) (the radius-growth schedule) and 0 for misclassified samples. The paper finds
the roots per batch, without gradients, with Brent's method (~10 iterations): here
``radius_solver=exact`` (the default), the vectorised bracketing solver of ``trainers.rootfind``.
``warm`` (``trainers.radius.WarmRadius``) carries each sample's radius across epochs and updates
it from the loss's own pass, at ~1.1x an IBP epoch instead of ~2x after the ramp; it is not the
default: it trains a few % less ACR than exact (docs/benchmarks.md §2b, docs/method.md). The loss is
(1 - kappa) * L_rob(x, eps_i) + kappa * L_std(x), plus the Shi et al. regularisers during the
ramp, when eps_i may be floored at ``min_eps``. The method is composed from its parts: the radius
policies of ``trainers.radius.adaptive``, the IBP margins and the standard loss mixing.

BatchNorm (train mode): the clean-batch statistics are computed once per batch and used by
every bound evaluation of the root solver and by the loss pass (the Shi et al. convention).
With the exact solver one clean pass (with autograd) serves the loss, the statistics and the
solver's clean margins, so a step costs one clean pass, the solver's bound passes and one bound
pass with gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainers.bounds.engine import ibp_margins_fn
from trainers.methods.base import register_method
from trainers.methods.certified import CertifiedTraining
from trainers.radius import AdaptiveRadius, WarmRadius
from trainers.settings import bad, setting

RADIUS_SOLVERS = ("exact", "warm")
# the settings that take one of a few names, and those names
_CHOICES = {
    "radius_solver": RADIUS_SOLVERS,
    "warm_new_radius": ("solve", "slope"),
    "warm_flipped": ("clean", "bound"),
}


@dataclass(frozen=True)
class ACERTParams:
    root_iters: int = setting(10, "ACERT: bound evaluations per batch for the adaptive radii")
    root_rel_tol: float = setting(1e-4, "ACERT: relative tolerance of the adaptive radii")
    min_eps: float = setting(1e-6, "ACERT: floor of the adaptive radii while regularising")
    radius_solver: str = setting(
        "exact",
        "ACERT: exact (root-solve every sample's radius every batch, as the paper) or warm (carry "
        "each sample's radius across epochs and update it from the pass the loss makes: about half "
        "the epoch time after the ramp, but a few %% less robust than exact, docs/benchmarks.md §2b)",
    )
    warm_overshoot: float = setting(
        0.0,
        "ACERT warm solver: train each sample at (1 + this) x its carried radius estimate (capped at "
        "eps_max(t)), so that the estimate, which trails a model that grows more robust, is probed above",
    )
    warm_new_radius: str = setting(
        "slope",
        "ACERT warm solver: the radius of a sample that became correctly classified: solve "
        "(exactly, on that sub-batch) or slope (its clean margin over the batch's median bound "
        "slope: no extra bound pass; the next visit's secant corrects it)",
    )
    warm_flipped: str = setting(
        "clean",
        "ACERT warm solver: the loss of a sample misclassified now but not when its radius was "
        "estimated: clean (its clean margins, radius 0 as the paper and the exact solver; the loss "
        "then needs the clean pass's backward) or bound (its bound at the estimated radius)",
    )
    warm_at_cap: bool = setting(
        True,
        "ACERT warm solver: a sample certified at the cap eps_max(t) is solved exactly at its next "
        "visit if the cap has grown since (its radius is only known to exceed the old cap), instead "
        "of trained at the secant's estimate from the smaller cap",
    )

    warm_drift: float = setting(
        0.1,
        "ACERT warm solver: gain of the scale applied to the carried radius estimates, moved after "
        "every batch towards the median ratio of the radius measured by the loss's pass to the radius "
        "trained at (0: off); it follows the model's radii as they grow between two visits",
    )

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise bad(name, getattr(self, name), f"choose one of {', '.join(choices)}")
        if self.root_iters < 1:
            raise bad("root_iters", self.root_iters, "must be >= 1")
        if not 0 < self.root_rel_tol < 1:
            raise bad("root_rel_tol", self.root_rel_tol, "must lie in (0, 1)")
        if self.min_eps < 0:
            raise bad("min_eps", self.min_eps, "must be >= 0")
        if not 0 <= self.warm_overshoot <= 1:
            raise bad("warm_overshoot", self.warm_overshoot, "must lie in [0, 1]")
        if not 0 <= self.warm_drift <= 1:
            raise bad("warm_drift", self.warm_drift, "must lie in [0, 1]")


@register_method("acert", ACERTParams)
def build(cfg, steps_per_epoch: int, *, bound_factory=ibp_margins_fn) -> CertifiedTraining:
    if cfg.params.radius_solver == "warm":
        radius = WarmRadius(cfg.params, cfg.train_max_eps, bound_factory)
    else:
        radius = AdaptiveRadius(cfg.params, bound_factory)
    return CertifiedTraining(cfg, steps_per_epoch, radius=radius)
