"""CROWN-IBP (Zhang et al. 2020): IBP for the intermediate layers, then one backward pass of
CROWN's linear relaxation from the margin specification to the input box.

The backward pass carries a linear function ``A x + bias`` of each layer's input that lower-
bounds the margins ``z_y - z_j``. Through a ReLU with IBP pre-activation bounds [l, u]:
stable neurons are exact; an unstable one uses the upper line u (z - l) / (u - l) where the
coefficient is negative and the lower line alpha * z (alpha = 1 if u > -l else 0, the
adaptive choice of CROWN-IBP) where it is positive. Sound for any alpha in [0, 1]; not always
tighter than IBP (do not assume it is).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.bounds.engine import (
    AFFINE_PER_CHANNEL,
    BoundContext,
    _affine_of,
    _Compiled,
    clean_pass,
    input_box,
    layers_of,
    propagate,
    spec_last_layer,
)


def _sum_rest(t: Tensor) -> Tensor:
    """Sum over all dims after the first two ([B, S, ...] -> [B, S])."""
    return t.flatten(2).sum(-1)


def _back_relu(a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Backward step through a ReLU; returns (new A, bias contribution).

    With h = max(hi, 0) and n = min(lo, 0), the upper line's slope h / (h - n) is that of
    CROWN-IBP on unstable neurons (hi / (hi - lo)), 1 on active and 0 on inactive ones, and its
    intercept -slope * n is 0 on stable ones; the adaptive lower slope [hi > -lo] is 1 on
    active and 0 on inactive ones too. So no masks: a few passes over the pre-activation
    bounds, which cost as much as A's own when A has a single row (loss fusion)."""
    lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
    h, n = hi.clamp(min=0), lo.clamp(max=0)
    # h - n > 0 unless lo = hi = 0, where slope 0 is exact; the floor only avoids 0 / 0
    up_slope = h / (h - n).clamp(min=torch.finfo(a.dtype).tiny)
    low_slope = (hi + lo > 0).to(a.dtype)  # hi + lo > 0 exactly when hi > -lo
    # a_pos * low_slope + a_neg * up_slope (exact: one product is 0), and sum(a_neg * up_icpt)
    # with up_icpt = -up_slope * n as a batched product of (a_neg * up_slope) and n
    neg_part = torch.mul(a.clamp(max=0), up_slope)
    new_a = torch.addcmul(neg_part, a.clamp(min=0), low_slope)
    return new_a, -_contract(neg_part, n)


class _OneRowReLU(torch.autograd.Function):
    """``_back_relu`` for a single row (A of shape [B, 1, ...], loss fusion), with a hand-written
    backward pass. Composed of autograd ops, the step and its gradient take some thirty passes
    over activation-sized tensors (each clamp's backward is a masked copy, ``torch.where`` is
    slow on CPU); with one row these cost more than the convolutions. Here the forward and
    backward passes are one expression each on [B, N] views (``_one_row_forward`` /
    ``_one_row_backward``), compiled into one loop each on large CPU tensors like the engine's
    fused ReLU (from ``ONE_ROW_COMPILE_MIN_NUMEL`` units; eager otherwise, or if compiling fails). Same
    values; the same gradient wherever it is defined: into lo and hi only on unstable neurons
    with a negative coefficient, through the upper line, as for the composed ops."""

    @staticmethod
    def forward(ctx, a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        b = a.shape[0]
        args = (a.reshape(b, -1), lo.reshape(b, -1), hi.reshape(b, -1))
        out = _ONE_ROW_FORWARD(*args) if _one_row_compiled(a) else (None, None)
        if out[0] is None:
            out = _one_row_forward(*args)
        ctx.save_for_backward(*args)
        ctx.shapes = (a.shape, lo.shape)
        return out[0].view(a.shape), out[1]

    @staticmethod
    def backward(ctx, g: Tensor | None, g_extra: Tensor | None):
        a, lo, hi = ctx.saved_tensors
        a_shape, lo_shape = ctx.shapes
        g = torch.zeros_like(a) if g is None else g.reshape(a.shape)
        ge = a.new_zeros(a.shape[0], 1) if g_extra is None else g_extra.reshape(-1, 1)
        out = _ONE_ROW_BACKWARD(a, lo, hi, g, ge) if _one_row_compiled(a) else (None, None, None)
        if out[0] is None:
            out = _one_row_backward(a, lo, hi, g, ge)
        return out[0].view(a_shape), out[1].view(lo_shape), out[2].view(lo_shape)


def _one_row_forward(a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """(new A, bias) of the ReLU step on [B, N] views: A+ [hi + lo > 0] + A- up, and
    -sum(A- up n) with up = h / (h - n), h = max(hi, 0), n = min(lo, 0)."""
    h, n = hi.clamp(min=0), lo.clamp(max=0)
    up = h / (h - n).clamp(min=torch.finfo(a.dtype).tiny)
    t = a.clamp(max=0) * up
    new_a = t + a.clamp(min=0) * (hi + lo > 0).to(a.dtype)
    return new_a, -(t * n).sum(1, keepdim=True)


def _one_row_backward(
    a: Tensor, lo: Tensor, hi: Tensor, g: Tensor, ge: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (a, lo, hi) of ``_one_row_forward`` for upstream (g [B, N], ge [B, 1]). Where
    a < 0: new_a = a up and bias = -a up n, so dL/d(up) = a (g - ge n) and dL/dn gets
    -ge a up directly; d up / dh = -n / (h - n)^2 and d up / dn = h / (h - n)^2."""
    h, n = hi.clamp(min=0), lo.clamp(max=0)
    d = (h - n).clamp(min=torch.finfo(a.dtype).tiny)
    up = h / d
    negf = (a < 0).to(a.dtype)
    low = (hi + lo > 0).to(a.dtype)
    slope = low + negf * (up - low)
    grad_a = g * slope - negf * ge * up * n
    q = negf * a * (g - ge * n) / (d * d)
    grad_hi = -q * n * (hi > 0).to(a.dtype)
    grad_lo = (q * h - negf * ge * a * up) * (lo < 0).to(a.dtype)
    return grad_a, grad_lo, grad_hi


# Single-row ReLU steps of at least this many units use the compiled kernels on CPU (None:
# never): cnn_small's layers at batch 128 (0.1-0.4M units) already spend more in eager
# elementwise passes than in the convolutions of the backward pass.
ONE_ROW_COMPILE_MIN_NUMEL: int | None = 1 << 16


def _one_row_compiled(t: Tensor) -> bool:
    return (
        ONE_ROW_COMPILE_MIN_NUMEL is not None
        and t.device.type == "cpu"
        and t.numel() >= ONE_ROW_COMPILE_MIN_NUMEL
    )


_ONE_ROW_FORWARD = _Compiled(_one_row_forward, (None, None))
_ONE_ROW_BACKWARD = _Compiled(_one_row_backward, (None, None, None))


def _contract(a: Tensor, v: Tensor) -> Tensor:
    """sum over the dims after the first two of a [B, S, ...] * v [B, 1, ...] -> [B, S]."""
    b, s = a.shape[:2]
    return torch.bmm(a.reshape(b, s, -1), v.reshape(b, -1, 1)).squeeze(2)


def _back_conv(a: Tensor, layer: nn.Conv2d, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    b, s = a.shape[:2]
    bias = torch.zeros(b, s, dtype=a.dtype, device=a.device)
    if layer.bias is not None:
        bias = torch.einsum("bschw,c->bs", a, layer.bias)
    flat = a.reshape(b * s, *a.shape[2:])
    out_h, out_w = flat.shape[-2:]
    extra = []
    for dim, size_in, size_out in ((0, in_shape[-2], out_h), (1, in_shape[-1], out_w)):
        k = layer.kernel_size[dim]
        full = (size_out - 1) * layer.stride[dim] - 2 * layer.padding[dim] + layer.dilation[dim] * (k - 1) + 1
        extra.append(size_in - full)
    weight = layer.weight
    strided_cpu = flat.device.type == "cpu" and layer.stride != (1, 1)
    if strided_cpu:
        # a strided transposed convolution in the channels-last layout takes half the time of
        # the contiguous one on CPU (measured, torch 2.14: the latter takes a slower kernel)
        flat = flat.contiguous(memory_format=torch.channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)
    back = F.conv_transpose2d(
        flat, weight, None, layer.stride, layer.padding, tuple(extra), 1, layer.dilation
    )
    if strided_cpu:
        back = back.contiguous()
    return back.view(b, s, *back.shape[1:]), bias


def crown_ibp_margins(
    model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, ctx: BoundContext | None = None
) -> Tensor:
    """CROWN-IBP lower bounds of z_y - z_j (j != y), shape [B, K-1].

    ``ctx`` may hold the clean-batch BatchNorm statistics (train mode) and, if recorded,
    the IBP pre-activation bounds of every ReLU for this very box.
    """
    layers, ctx, box, _ = prepare(model, x, eps, ctx)
    a, bias = spec_last_layer(layers[-1], y)  # [B, S, H], [B, S]
    return backward_lower(layers, ctx, x, box, a, bias)


def prepare(
    model: nn.Sequential, x: Tensor, eps: Tensor, ctx: BoundContext | None
) -> tuple[list[nn.Module], BoundContext, tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
    """(layers, ctx, input box, interval (c, r) at the last layer's input or None) with the IBP
    pre-activation bounds of every ReLU in ``ctx.preact``: the ones recorded there if all are,
    else those of a new IBP pass (whose interval at the last layer's input is returned)."""
    layers = layers_of(model)
    if ctx is None:
        ctx = BoundContext()
        if model.training and any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in layers):
            _, ctx = clean_pass(model, x)
    box = input_box(x, eps)
    relus = [i for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]
    last = None
    if any(i not in ctx.preact for i in relus):
        ctx.preact.clear()
        ctx.relu_stats.clear()
        _, c, r = propagate(layers, ctx, box=box, record_preact=True)
        last = (c, r)
    return layers, ctx, box, last


# One ReLU's backward step: (layer index, A, pre-activation lower and upper bounds) -> (new A,
# bias contribution); the relaxation's lower slopes are the step's choice.
ReluStep = Callable[[int, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def adaptive_relu_step(i: int, a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """CROWN's adaptive lower slopes; a single row takes the hand-written step."""
    step = _OneRowReLU.apply if a.shape[1] == 1 else _back_relu
    return step(a, lo, hi)


def backward_from(
    layers: list[nn.Module],
    ctx: BoundContext,
    preact: dict[int, tuple[Tensor, Tensor]],
    shapes: list[tuple[int, ...]],
    start: int,
    a: Tensor,
    bias: Tensor,
    box: tuple[Tensor, Tensor],
    relu_step: ReluStep = adaptive_relu_step,
) -> Tensor:
    """Lower bounds [B, S] over ``box`` of ``a f_start(x) + bias``, where ``a`` [B, S, ...] acts
    on the output of layer ``start`` (``start = -1``: on the input itself), by CROWN's backward
    pass with the pre-activation bounds ``preact`` (ReLU layer -> (lower, upper))."""
    for i in range(start, -1, -1):
        layer = layers[i]
        extra: Tensor | float = 0.0
        if isinstance(layer, nn.ReLU):
            a, extra = relu_step(i, a, *preact[i])
        elif isinstance(layer, nn.Linear):
            extra = a @ layer.bias if layer.bias is not None else 0.0
            a = a @ layer.weight
        elif isinstance(layer, nn.Conv2d):
            a, extra = _back_conv(a, layer, shapes[i])
        elif isinstance(layer, AFFINE_PER_CHANNEL):
            scale, shift = _affine_of(i, layer, ctx, None, False)
            view = (1, 1, -1) + (1,) * (a.dim() - 3)
            extra = torch.einsum("bsc...,c->bs", a, shift)
            a = a * scale.view(view)
        elif isinstance(layer, nn.Flatten):
            a = a.reshape(a.shape[0], a.shape[1], *shapes[i])
        bias = bias + extra
    lo, hi = box
    return _contract(a.clamp(min=0), lo) + _contract(a.clamp(max=0), hi) + bias


def backward_lower(
    layers: list[nn.Module],
    ctx: BoundContext,
    x: Tensor,
    box: tuple[Tensor, Tensor],
    a: Tensor,
    bias: Tensor,
) -> Tensor:
    """Lower bounds [B, S] over ``box`` of the S linear functions ``a h + bias`` (a: [B, S, H])
    of the last layer's input h, by CROWN's backward pass with the pre-activation bounds in
    ``ctx.preact``. An upper bound of ``a h + bias`` is ``-backward_lower(..., -a, -bias)``."""
    shapes = _input_shapes(layers, x)
    return backward_from(layers, ctx, ctx.preact, shapes, len(layers) - 2, a, bias, box)


def _input_shapes(layers: list[nn.Module], x: Tensor) -> list[tuple[int, ...]]:
    """Per-sample shape of each layer's input, by shape arithmetic (no compute)."""
    shapes, shape = [], tuple(x.shape[1:])
    for layer in layers:
        shapes.append(shape)
        if isinstance(layer, nn.Conv2d):
            shape = (layer.out_channels, *_conv_out(layer, shape))
        elif isinstance(layer, nn.Linear):
            shape = (layer.out_features,)
        elif isinstance(layer, nn.Flatten):
            shape = (math.prod(shape),)
    return shapes


def _conv_out(layer: nn.Conv2d, shape: tuple[int, ...]) -> tuple[int, int]:
    out = []
    for d, size in enumerate(shape[-2:]):
        k, s, p, dl = layer.kernel_size[d], layer.stride[d], layer.padding[d], layer.dilation[d]
        out.append((size + 2 * p - dl * (k - 1) - 1) // s + 1)
    return tuple(out)
