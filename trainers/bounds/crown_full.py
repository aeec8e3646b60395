"""CROWN (Zhang et al. 2018): backward linear relaxation through every layer, with CROWN
intermediate bounds.

Each ReLU's pre-activation bounds come from a CROWN backward pass started at that layer (rows
+e_k and -e_k for the lower and the upper bound of neuron k), through the relaxations of the
ReLUs before it, whose bounds were computed the same way; the margins z_y - z_j come from one
last backward pass from the specification. The relaxation of an unstable ReLU is that of
CROWN-IBP (``trainers.bounds.crown._back_relu``): upper line u (z - l) / (u - l), adaptive
lower slope 1 if u > -l else 0. BatchNorm is a per-channel affine map (running statistics in
eval mode, the clean batch's statistics from the ``BoundContext`` in train mode), as in the
rest of the engine.

Two variants (both sound):

- ``intersect=False``: pure CROWN, every neuron's bounds from its own backward pass (but for
  the first ReLU layer, an affine map of the box, whose IBP bounds are CROWN's). This is
  auto_LiRPA's ``compute_bounds(method="CROWN")`` with ``relu="adaptive"`` (cross-checked in
  ``tests/test_crown.py``).
- ``intersect=True`` (the registered ``"crown"``): each neuron's bounds are the intersection
  of CROWN's and IBP's, both sound, so their intersection is. A neuron IBP already proves
  stable needs no backward pass: its relaxation depends only on the sign of its bounds, which
  the intersection keeps. Only IBP-unstable neurons get rows, which on trained networks is a
  small fraction (the cost is proportional to the rows).

Cost: a backward pass from a layer with R rows (2 per unstable neuron) moves a tensor of
B x R x (layer size) through every earlier layer, so CROWN costs about the sum over ReLU
layers of (rows x work of the layers before it): quadratic in depth and in width, where
CROWN-IBP moves only K - 1 rows once. The rows are processed in chunks of at most
``CHUNK_ELEMENTS`` elements per A tensor (256 MiB in float32; a backward step holds about
three such tensors), so memory stays at about 1 GiB for any model and batch, and time grows
instead. CNN7 on 28x28 inputs with 1-2 thousand IBP-unstable neurons per layer takes about a
minute per bound evaluation of two samples on two CPU cores, at under 2 GiB: CROWN certifies
small models or few samples on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainers.bounds.crown import _back_relu, _contract, _input_shapes, backward_from
from trainers.bounds.engine import (
    BoundContext,
    clean_pass,
    input_box,
    layers_of,
    propagate,
    spec_last_layer,
)

# Elements of one backward-pass coefficient tensor A (B x rows x layer size): the row chunk size
CHUNK_ELEMENTS = 1 << 26


def _backward(
    layers: list[nn.Module],
    ctx: BoundContext,
    preact: dict[int, tuple[Tensor, Tensor]],
    shapes: list[tuple[int, ...]],
    start: int,
    a: Tensor,
    bias: Tensor,
    box: tuple[Tensor, Tensor],
    alphas: dict[int, Tensor] | None = None,
) -> Tensor:
    """``crown.backward_from`` with CROWN's adaptive lower slopes (``_back_relu``), or
    ``alphas`` (ReLU layer -> [B, S, ...] in [0, 1]) in place of those of some ReLUs."""

    def relu_step(i: int, a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        if alphas is not None and i in alphas:
            return _back_relu_alpha(a, lo, hi, alphas[i])
        return _back_relu(a, lo, hi)

    return backward_from(layers, ctx, preact, shapes, start, a, bias, box, relu_step)


def _neuron_bounds(
    layers: list[nn.Module],
    ctx: BoundContext,
    preact: dict[int, tuple[Tensor, Tensor]],
    shapes: list[tuple[int, ...]],
    relu: int,
    rows: Tensor,
    box: tuple[Tensor, Tensor],
) -> tuple[Tensor, Tensor]:
    """CROWN lower and upper bounds [B, N] of the input of ReLU layer ``relu`` for the neurons
    ``rows`` [B, N] (a boolean mask; -inf / +inf, no information, where it is False)."""
    b, n = rows.shape
    shape = shapes[relu]
    count = rows.sum(1)
    r_max = int(count.max()) if b else 0
    # per sample, the indices of its selected neurons first (stable sort keeps them in order)
    order = torch.argsort((~rows).to(torch.int8), dim=1, stable=True)[:, :r_max]
    valid = torch.arange(r_max, device=rows.device)[None, :] < count[:, None]
    widest = max([n, *(max(1, _numel(shapes[k])) for k in range(relu))])
    chunk = max(1, CHUNK_ELEMENTS // max(1, b * 2 * widest))
    dtype = box[0].dtype
    lower = torch.full((b, n), float("-inf"), dtype=dtype, device=rows.device)
    upper = torch.full((b, n), float("inf"), dtype=dtype, device=rows.device)
    for s in range(0, r_max, chunk):
        idx = order[:, s : s + chunk]  # [B, c]
        c = idx.shape[1]
        a = torch.zeros(b, 2 * c, n, dtype=dtype, device=rows.device)
        a[:, :c].scatter_(2, idx.unsqueeze(2), 1.0)
        a[:, c:].scatter_(2, idx.unsqueeze(2), -1.0)
        a = a.view(b, 2 * c, *shape)
        bias = torch.zeros(b, 2 * c, dtype=dtype, device=rows.device)
        out = _backward(layers, ctx, preact, shapes, relu - 1, a, bias, box)
        ok = valid[:, s : s + chunk]
        lower.scatter_(1, idx, torch.where(ok, out[:, :c], lower.gather(1, idx)))
        upper.scatter_(1, idx, torch.where(ok, -out[:, c:], upper.gather(1, idx)))
    return lower, upper


def _back_relu_alpha(a: Tensor, lo: Tensor, hi: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """``_back_relu`` with the lower slope ``alpha`` (per row and neuron) of unstable neurons:
    z >= alpha z holds on [l, u] for any alpha in [0, 1], so the bound is sound for all of them."""
    lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
    unstable = (lo < 0) & (hi > 0)
    active = (lo >= 0).to(a.dtype)
    up_slope = torch.where(unstable, hi / torch.where(unstable, hi - lo, torch.ones_like(hi)), active)
    up_icpt = torch.where(unstable, -up_slope * lo, torch.zeros_like(lo))
    low_slope = torch.where(unstable, alpha, active)
    a_neg = a.clamp(max=0)
    return a.clamp(min=0) * low_slope + a_neg * up_slope, _contract(a_neg, up_icpt)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def crown_margins(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    eps: Tensor,
    ctx: BoundContext | None = None,
    *,
    intersect: bool = True,
) -> Tensor:
    """CROWN lower bounds of z_y - z_j (j != y), shape [B, K-1] (see the module doc for
    ``intersect``). ``ctx`` may hold the clean-batch BatchNorm statistics (train mode); its
    recorded pre-activation bounds, if any, are neither read nor changed (CROWN-IBP's are IBP's)."""
    state = CrownState.of(model, x, eps, ctx, intersect=intersect)
    a, bias = spec_last_layer(state.layers[-1], y)
    return state.backward(a, bias)


@dataclass
class CrownState:
    """The layers, BatchNorm maps, input box and CROWN pre-activation bounds of one batch: what
    a backward pass from the specification needs (``trainers.bounds.alpha_crown`` runs many)."""

    layers: list[nn.Module]
    ctx: BoundContext
    preact: dict[int, tuple[Tensor, Tensor]]
    shapes: list[tuple[int, ...]]
    box: tuple[Tensor, Tensor]

    def backward(self, a: Tensor, bias: Tensor, alphas: dict[int, Tensor] | None = None) -> Tensor:
        """Lower bounds of ``A z + bias``, z the input of the last layer (``alphas``: see ``_backward``)."""
        start = len(self.layers) - 2
        return _backward(self.layers, self.ctx, self.preact, self.shapes, start, a, bias, self.box, alphas)

    @classmethod
    def of(
        cls, model: nn.Sequential, x: Tensor, eps: Tensor, ctx: BoundContext | None, *, intersect: bool = True
    ) -> CrownState:
        layers = layers_of(model)
        if ctx is None:
            ctx = BoundContext()
            if model.training and any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in layers):
                _, ctx = clean_pass(model, x)
        box = input_box(x, eps)
        ibp = BoundContext(affines=ctx.affines)
        propagate(layers, ibp, box=box, record_preact=True)
        shapes = _input_shapes(layers, x)
        preact: dict[int, tuple[Tensor, Tensor]] = {}
        for i, layer in enumerate(layers):
            if not isinstance(layer, nn.ReLU):
                continue
            if not preact:
                # no ReLU before it: an affine map of the box, which IBP bounds exactly as CROWN
                # does (auto_LiRPA takes IBP's there too); its rows would be the most expensive
                preact[i] = ibp.preact[i]
                continue
            if intersect:
                lo_ibp, hi_ibp = (t.reshape(x.shape[0], -1) for t in ibp.preact[i])
                rows = (lo_ibp < 0) & (hi_ibp > 0)
            else:
                rows = torch.ones(x.shape[0], _numel(shapes[i]), dtype=torch.bool, device=x.device)
            lo, hi = _neuron_bounds(layers, ctx, preact, shapes, i, rows, box)
            if intersect:
                lo, hi = torch.maximum(lo, lo_ibp), torch.minimum(hi, hi_ibp)
            preact[i] = (lo.view(x.shape[0], *shapes[i]), hi.view(x.shape[0], *shapes[i]))
        return cls(layers, ctx, preact, shapes, box)
