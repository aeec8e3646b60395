"""SABR (Mueller, Eckert, Fischer, Vechev, "Certified Training: Small Boxes are All You Need",
ICLR 2023): IBP on a small box around an adversarial point instead of on the whole eps-box.

One step: PGD finds a point x_adv in the l_inf box of radius eps around x (clipped to [0, 1]);
a box of radius lambda * eps is placed as close to x_adv as it fits inside that eps-box (centre
clamp(x_adv, x - eps + lambda eps, x + eps - lambda eps), shifted inwards where [0, 1] cuts it,
see :func:`small_box`); IBP bounds the margins over the small box and the robust loss is their
robust cross-entropy, mixed with the standard loss by kappa as every method does. lambda = 1
is IBP training (the small box is then the eps-box itself, bit for bit); smaller lambda trades
the IBP bound's looseness for an under-approximation of the worst case. The small box's margin
bounds certify nothing: certification never depends on the training method.

Composed as fixed radius eps_max(t) x :class:`SABRLoss` (which bounds its own box, so the step
makes no IBP pass at eps) x kappa mixing. BatchNorm: the clean batch's statistics throughout, as
MTL-IBP (``trainers.methods.mtl_ibp``): the attack sees them as constants, the small box's IBP
pass normalises with them as they are, and the running statistics move once, with the clean
batch. The Shi et al. 2021 regulariser, when on, is computed on the small box's pass.

Defaults: lambda = 0.4 (the public CTBench scripts train SABR with 0.4 on TinyImageNet 1/255 and
0.1 on CIFAR-10 2/255); an 8-step PGD with one restart, as CTRAIN's SABR loss defaults to (its
steps are 0.5 eps with step-size decay; here ``trainers.attacks``' 2.5 eps / steps, no decay).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from trainers.bounds.engine import BoundContext, layers_of, margins_from_interval, propagate
from trainers.methods.base import register_method, robust_ce
from trainers.methods.certified import CertifiedTraining
from trainers.methods.losses import KappaMixing, LossBase, LossInput, LossOutput
from trainers.methods.training_attack import attack_point, check_attack_settings
from trainers.radius import FixedRadius
from trainers.settings import bad, setting


@dataclass(frozen=True)
class SABRParams:
    sabr_lambda: float = setting(
        0.4, "SABR: radius of the propagated small box as a fraction of the training radius (1: IBP)"
    )
    attack_steps: int = setting(8, "SABR: PGD steps of the attack that places the small box")
    attack_restarts: int = setting(1, "SABR: random restarts of that attack")
    attack_step_ratio: float | None = setting(
        None, "SABR: PGD step as a fraction of the training radius; default: 2.5 / attack_steps"
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.sabr_lambda <= 1.0:
            raise bad("sabr_lambda", self.sabr_lambda, "must lie in (0, 1]")
        check_attack_settings(self)


def small_box(x: Tensor, x_adv: Tensor, eps: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """The box (lo, hi) of radius lam * eps[b] nearest to ``x_adv`` inside the eps-box of ``x``.

    Written as the eps-box [x - eps, x + eps] with u cut off below and 2 (1 - lam) eps - u above,
    u in [0, 2 (1 - lam) eps]: so the box never leaves the eps-box, and lam = 1 (u = 0) gives the
    eps-box exactly as ``input_box`` does. u puts the box's lower end at x_adv - lam eps, moved
    inwards where the box would cross 0 or 1 (so that the clip to [0, 1], applied last, cuts as
    little of it as the eps-box allows).
    """
    e = eps.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    r = lam * e
    slack = 2 * (e - r)  # how far the small box can move inside the unclipped eps-box
    start = (x_adv - r).clamp(min=0.0).minimum(1.0 - 2 * r)
    u = (start - (x - e)).clamp(min=0.0).minimum(slack)
    lo = (x - e + u).clamp(0.0, 1.0)
    hi = (x + e - (slack - u)).clamp(0.0, 1.0)
    return lo, hi.maximum(lo)


class SABRLoss(LossBase):
    """L_rob = robust CE of the IBP margins over :func:`small_box` around a PGD point."""

    def __init__(self, params: SABRParams) -> None:
        self.params = params

    def wants_ibp(self, regularising: bool) -> bool:
        return False  # the bound pass is the small box's, made here

    def __call__(self, inp: LossInput) -> LossOutput:
        box = self.box(inp.model, inp.x, inp.y, inp.eps, inp.ctx)
        layers = layers_of(inp.model)
        _, c, r = propagate(layers, inp.ctx, box=box, record_preact=inp.record_preact)
        return LossOutput(robust_ce(margins_from_interval(layers[-1], c, r, inp.y)), box=box)

    def box(self, model, x: Tensor, y: Tensor, eps: Tensor, ctx: BoundContext) -> tuple[Tensor, Tensor]:
        """The small box around the PGD point of the eps-box (the attack sees the clean batch's
        BatchNorm maps as constants)."""
        x_adv = attack_point(model, x, y, eps, ctx, self.params)
        return small_box(x, x_adv, eps, self.params.sabr_lambda)


@register_method("sabr", SABRParams)
def build(cfg, steps_per_epoch: int) -> CertifiedTraining:
    return CertifiedTraining(
        cfg, steps_per_epoch, radius=FixedRadius(), loss=KappaMixing(SABRLoss(cfg.params))
    )
