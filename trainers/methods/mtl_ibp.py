"""MTL-IBP (De Palma et al., "Expressive Losses for Verified Robustness via Convex Combinations",
ICLR 2024): a convex combination of the IBP loss and the adversarial loss,

    L_MTL(x, y) = alpha * L(lb_IBP(x, y, eps)) + (1 - alpha) * L(m(x_adv, y)),
    L(m) = log(1 + sum_{j != y} exp(-m_j))   (cross-entropy written on margins m_j = z_y - z_j),

where lb_IBP are the IBP lower bounds of the margins over the l_inf box of radius eps (clipped
to [0, 1]) and m(x_adv, y) the margins at a PGD point x_adv of the box of radius
attack_eps_factor * eps. L(m(x_adv, y)) is exactly the cross-entropy of the adversarial logits,
so the second term is adversarial training's loss and alpha = 1 is IBP training. This is the
paper's MTL-IBP (the authors' ``train.py``: ``mtlibp_coeff * robust_loss + (1 - mtlibp_coeff)
* adv_loss``). Its sibling CC-IBP combines the margins before the loss, L(alpha lb_IBP + (1 -
alpha) m(x_adv)); L is convex in the margins, so CC-IBP's loss is never above MTL-IBP's. As the
losses, not the margins, are combined, this method is a loss (:class:`MTLIBPLoss`) rather than a
margin bound: fixed radius eps_max(t) x the step's joint clean and IBP pass x L_MTL, with the
Shi et al. 2021 regulariser of the step and the standard loss mixed in as every method does:
(1 - kappa) L_MTL + kappa L_std (the paper has no such term: kappa defaults to 0).

BatchNorm: the clean batch's statistics throughout. The IBP pass already normalises the box
with them (``trainers.bounds.engine``); the attack and the adversarial logits use the same
per-channel maps, so both terms score one and the same network and alpha moves between a lower
and an upper bound of its robust loss (the paper's expressivity argument). The running
statistics are updated once per step, by the clean batch, so evaluation normalises as on clean
data. (The authors' code attacks in eval mode, then evaluates the adversarial batch in train
mode, whose statistics the IBP pass then reuses.) The attack point is a constant; gradients
reach the parameters through the adversarial logits, as in adversarial training.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from trainers.attacks import margins_of
from trainers.bounds.engine import BoundContext
from trainers.methods.base import register_method, robust_ce
from trainers.methods.certified import CertifiedTraining
from trainers.methods.losses import KappaMixing, LossBase, LossInput, LossOutput
from trainers.methods.training_attack import attack_point, check_attack_settings, with_batch_stats
from trainers.radius import FixedRadius
from trainers.settings import bad, setting


@dataclass(frozen=True)
class MTLIBPParams:
    alpha: float = setting(0.5, "MTL-IBP: weight of the IBP loss in alpha L_IBP + (1 - alpha) L_adv")
    # the attack's settings share their names (and so their flags) with SABR's
    attack_steps: int = setting(1, "MTL-IBP, SABR: PGD steps of the training attack (defaults 1, 8)")
    attack_restarts: int = setting(1, "MTL-IBP, SABR: random restarts of the training attack")
    attack_step_ratio: float | None = setting(
        None, "MTL-IBP, SABR: PGD step as a fraction of the attack radius; default: 2.5 / attack_steps"
    )
    attack_eps_factor: float = setting(1.0, "MTL-IBP: attack radius as a multiple of the training radius")

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise bad("alpha", self.alpha, "must lie in [0, 1]")
        check_attack_settings(self)
        if not self.attack_eps_factor > 0:
            raise bad("attack_eps_factor", self.attack_eps_factor, "must be > 0")


def mtl_ibp_loss(ibp_margins: Tensor | None, adv_margins: Tensor | None, alpha: float) -> Tensor:
    """alpha * L(ibp_margins) + (1 - alpha) * L(adv_margins); a term of weight 0 may be None."""
    terms = [(alpha, ibp_margins), (1.0 - alpha, adv_margins)]
    return sum(w * robust_ce(m) for w, m in terms if w > 0)


class MTLIBPLoss(LossBase):
    """L_MTL = alpha L(lb_IBP) + (1 - alpha) L(m(x_adv)): the step's IBP margins and the margins
    at a PGD point of the box (the IBP pass is skipped when alpha = 0 and nothing regularises)."""

    def __init__(self, params: MTLIBPParams) -> None:
        self.params = params

    def wants_ibp(self, regularising: bool) -> bool:
        return self.params.alpha > 0 or regularising

    def __call__(self, inp: LossInput) -> LossOutput:
        alpha = self.params.alpha
        adv = self.adversarial_margins(inp.model, inp.x, inp.y, inp.eps, inp.ctx) if alpha < 1 else None
        return LossOutput(mtl_ibp_loss(inp.lb, adv, alpha))

    def adversarial_margins(
        self, model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, ctx: BoundContext
    ) -> Tensor:
        """Margins [B, K-1] at the PGD point of radius attack_eps_factor * eps; the attack sees
        the clean batch's BatchNorm maps as constants, the loss's margins see them as they are
        (gradients flow through them as through the IBP pass)."""
        x_adv = attack_point(model, x, y, eps * self.params.attack_eps_factor, ctx, self.params)
        return margins_of(with_batch_stats(model, ctx, detach=False)(x_adv), y)


@register_method("mtl-ibp", MTLIBPParams)
def build(cfg, steps_per_epoch: int) -> CertifiedTraining:
    return CertifiedTraining(
        cfg, steps_per_epoch, radius=FixedRadius(), loss=KappaMixing(MTLIBPLoss(cfg.params))
    )
