"""CROWN-IBP with loss fusion: a sound upper bound of the cross-entropy loss itself, with one
backward pass of one linear specification per sample instead of the K-1 margins.

Contract of :func:`crown_ibp_ce_upper` (model, x, y, eps[B], ctx, beta, ibp_lb) -> Tensor[B]:
for each sample b, a value >= CE(f(x'), y_b) = log sum_j exp(z_j(x') - z_y(x')) for every x'
in the l_inf box of radius eps[b] around x[b] clipped to [0, 1] (``engine.input_box``), where
f is the model with BatchNorm frozen at the statistics in ``ctx`` (train mode: the clean batch's,
from ``clean_pass``/``joint_ibp``; eval mode: the running ones), up to float rounding. It is a
training loss: differentiable in the parameters (through the intermediate bounds as well).

How (Xu et al. 2020, "Automatic Perturbation Analysis for Scalable Certified Robustness and
Beyond", loss fusion; auto_LiRPA's ``CrossEntropyWrapper`` with ``bound_opts={"loss_fusion":
True}`` and its ``BoundExp`` relaxation):

* m_j = z_j - z_y over all K classes (m_y = 0) has IBP bounds [l_j, u_j] (l_y = u_y = 0),
  computed with the specification folded into the last layer (W_j - W_y) from the interval at
  the last layer's input: the IBP pass of the training step (its pre-activation bounds in
  ``ctx.preact``; ``ibp_lb`` gives u_j = -lb_j) or a new one. auto_LiRPA's ``_IBP_loss_fusion``
  folds the same way.
* S(x') = sum_j exp(m_j - M), M = max_j u_j >= 0 (a constant shift against overflow, detached
  as in auto_LiRPA's ``BoundExp``; CE = log S + M for any M).
* IBP bound: S <= S_ibp = sum_j exp(u_j - M); the resulting CE bound log(1 + sum_{j != y}
  exp(u_j)) is exactly ``robust_ce`` of the IBP margins per sample (its worst-case logits are
  0 for y and -lb_j = u_j for j != y, label 0).
* CROWN-IBP bound: exp is convex, so on [l_j, u_j] it lies below its chord:
  exp(m - M) <= e_j + k_j (m - l_j), e_j = exp(l_j - M), k_j = (exp(u_j - M) - e_j) / (u_j - l_j),
  computed as exp(u_j - M) (1 - exp(l_j - u_j)) / (u_j - l_j) (no overflow), and as exp(u_j - M)
  (a steeper chord, still above) where u_j - l_j < 1e-6. Summed over j this is ONE linear
  function of the logits, sum_j k_j (z_j - z_y) + const, i.e. one row a = k W - (sum_j k_j) W_y
  at the last layer's input; CROWN's backward pass (``crown.backward_lower`` of -a, with
  CROWN-IBP's ReLU slopes) bounds it from above over the box: S <= S_crown. As S >= exp(-M)
  (the true class's term), max(S_crown, exp(-M)) is a bound too; it guards the log.
* beta mixing, as CROWN-IBP training mixes the margins (beta * CROWN-IBP + (1 - beta) * IBP):
  here the two upper bounds of S are mixed, S_mix = beta * S_crown + (1 - beta) * S_ibp, which
  is sound for any beta in [0, 1] (a convex combination of upper bounds of S bounds S), and
  CE <= log S_mix + M. auto_LiRPA's CIFAR training example with loss fusion mixes the same
  quantity (the upper bounds of the wrapper's output, sum_j exp). Mixing the margins and then
  applying robust_ce, as the unfused method does, would need the K-1 CROWN rows again.

Not tighter than the unfused bound: the chord of exp over a wide interval is loose, so with
large intervals (early in training, large radii) robust_ce of the beta-mixed CROWN-IBP margins
can be smaller; both are sound. The cost: one backward row instead of K-1, so the backward pass
costs about one more bound pass of the network (``bench.step``, ``crown_ibp_fused_over_ibp``).

Exact relations (tests/test_fusion.py): beta = 0 gives ``robust_ce(ibp_margins)`` per sample;
eps = 0 gives CE(f(x), y) for every beta; with K = 2 classes the CROWN part equals the chord
evaluated at today's ``crown_ibp_margins`` (one row either way, ReLU slopes chosen by sign).
auto_LiRPA's loss fusion gives the same bounds (tests/test_autolirpa.py, 1e-10 in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.bounds.crown import backward_lower, prepare
from trainers.bounds.engine import BoundContext, other_classes, propagate


def crown_ibp_ce_upper(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    eps: Tensor,
    ctx: BoundContext | None = None,
    *,
    beta: float = 1.0,
    ibp_lb: Tensor | None = None,
) -> Tensor:
    """Per-sample upper bounds [B] of the cross-entropy over the eps-box (module docstring).

    ``ctx``: as for ``crown_ibp_margins`` (clean-batch BatchNorm statistics; the IBP
    pre-activation bounds of this very box if recorded, else an IBP pass runs here).
    ``ibp_lb``: the IBP margin lower bounds [B, K-1] of this box (``ibp_margins`` /
    ``joint_ibp``), if the caller has them; they give u_j = -lb_j. ``beta`` in [0, 1].
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta!r} must lie in [0, 1]")
    if beta == 0.0 and ibp_lb is not None:  # the IBP part alone needs nothing but the margins
        return torch.logsumexp(torch.cat([torch.zeros_like(ibp_lb[:, :1]), -ibp_lb], 1), 1)
    layers, ctx, box, last = prepare(model, x, eps, ctx)
    c, r = last if last is not None else _last_interval(layers, ctx, box)
    # m_j = z_j - z_y over all K classes (m_y = 0 exactly: a zero row), without indexing the
    # weights (the backward pass of an index into W is a scatter, slow on CPU)
    fc = layers[-1]
    onehot = F.one_hot(y, fc.out_features).to(c.dtype)
    w_y = onehot @ fc.weight  # [B, H]
    z_c = F.linear(c, fc.weight, fc.bias)
    centre = z_c - (z_c * onehot).sum(1, keepdim=True)
    radius = torch.bmm((fc.weight[None] - w_y[:, None]).abs(), r.unsqueeze(2)).squeeze(2)
    lo_m = centre - radius
    if ibp_lb is None:
        up_m = centre + radius
    else:  # the caller's IBP bounds: u_j = -lb_j, u_y = 0
        up_m = torch.zeros_like(centre).scatter(1, other_classes(y, fc.out_features), -ibp_lb)
    shift = up_m.detach().amax(1, keepdim=True)  # M >= 0 (u_y = 0)
    s_ibp = torch.exp(up_m - shift).sum(1)
    if beta == 0.0:
        return torch.log(s_ibp) + shift.squeeze(1)
    e_lo = torch.exp(lo_m - shift)
    k = torch.exp(up_m - shift) * _chord_ratio(up_m - lo_m)  # chord slopes
    # -(sum_j k_j m_j + sum_j (e_j - k_j l_j)) as a function of the last layer's input h:
    # sum_j k_j m_j = (k W - (sum_j k_j) W_y) h + k b - (sum_j k_j) b_y
    k_sum = k.sum(1, keepdim=True)
    a = (k_sum * w_y - k @ fc.weight).unsqueeze(1)  # [B, 1, H]
    bias = (e_lo - k * lo_m).sum(1, keepdim=True)
    if fc.bias is not None:
        bias = bias + k @ fc.bias[:, None] - k_sum * (onehot @ fc.bias[:, None])
    s_crown = -backward_lower(layers, ctx, x, box, a, -bias).squeeze(1)
    # S >= exp(0 - M) (the true class's term), so the maximum with it is a bound too (it only
    # guards the log against rounding)
    s_mix = torch.maximum(s_crown, torch.exp(-shift.squeeze(1)))
    if beta < 1.0:
        s_mix = beta * s_mix + (1.0 - beta) * s_ibp
    return torch.log(s_mix) + shift.squeeze(1)


def _last_interval(
    layers: list[nn.Module], ctx: BoundContext, box: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """(centre, radius) at the last layer's input: from the recorded bounds of the ReLU before
    it (through Flatten layers), which is what the IBP pass computed there; else by IBP."""
    i = len(layers) - 2
    while i > 0 and isinstance(layers[i], nn.Flatten):
        i -= 1
    if not isinstance(layers[i], nn.ReLU) or i not in ctx.preact:
        _, c, r = propagate(layers, ctx, box=box)
        return c, r
    lo, hi = ctx.preact[i]
    lo, hi = lo.clamp(min=0.0).flatten(1), hi.clamp(min=0.0).flatten(1)
    return (hi + lo) / 2, (hi - lo) / 2


def _chord_ratio(d: Tensor) -> Tensor:
    """(1 - exp(-d)) / d for d >= 0, in (0, 1]: the chord slope of exp on [l, l + d] is
    exp(l + d) times this, with no overflow for wide intervals and no 0/0 in the value or its
    gradient. Below d = 1e-6 it is 1, which is larger (a steeper chord from (l, e^l) stays
    above exp on [l, u])."""
    small = d < 1e-6
    safe = torch.where(small, torch.ones_like(d), d)
    return torch.where(small, torch.ones_like(d), -torch.expm1(-safe) / safe)
