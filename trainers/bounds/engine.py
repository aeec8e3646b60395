"""Native interval bound propagation (IBP) for the sequential models of ``trainers.models``.

Everything here works on a batch with one l_inf radius per sample (``eps`` of shape [B]):
ACERT trains every sample at its own radius. The input box is clipped to the valid domain
[0, 1] *before* the normalisation layer, so radii are in pixel units and the bounds see the
normalisation.

IBP is computed in centre/radius form (Gowal et al. 2018): an affine layer maps the centre
with W and the radius with |W|, which costs two matrix products instead of the four of the
lower/upper form. The margin specification ``z_y - z_j`` is folded into the last linear
layer (W' = C W, b' = C b), which is tighter than bounding the logits first (the elision of
the last layer, Gowal et al. 2018; checked against auto_LiRPA in tests/test_autolirpa.py).

BatchNorm in train mode uses the statistics of the *clean* batch for the bound pass too
(the convention of Shi et al. 2021 and auto_LiRPA): ``clean_pass`` computes them once and
stores the resulting per-channel affine maps in a :class:`BoundContext`, so that repeated
bound evaluations on sub-batches (the radius root solver) see the same normalisation.

Speed (profiled with torch.profiler on CPU, docs/benchmarks.md): the convolutions are the
floor; the rest is elementwise passes, and on CPU mostly the allocation of each new
activation-sized tensor. So a BatchNorm right after a Conv2d (or a narrow Linear) is folded
into that layer's weights for the centre and the radius (W' = W * scale, b' = b * scale +
shift, |W'| for the radius: no per-channel passes over the activations and no reductions for
their gradients); the clean batch goes through its own product (no concatenation copy, and
no backward when the loss does not use the clean logits); the interval ReLU and the batch
statistics are single autograd nodes with hand-written backward passes, and the ReLUs work
in place on tensors nothing else holds. Under ``torch.no_grad`` (the root solver) the folded
weights are cached in the context. When the pass records the pre-activation bounds (for
CROWN-IBP and the Shi et al. regulariser), the ReLU also computes the regulariser's per-layer
statistics in the same node (``RecordingIntervalReLU``). All of it computes the same bounds
up to rounding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.models import Normalize

AFFINE_PER_CHANNEL = (Normalize, nn.BatchNorm1d, nn.BatchNorm2d)
SUPPORTED = (Normalize, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.Flatten)


@dataclass
class BoundContext:
    """Per-layer state shared by the clean pass and the bound passes of one batch."""

    # layer index -> (scale, shift) of each per-channel affine layer (Normalize, BatchNorm)
    affines: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    # layer index of a ReLU -> (lower, upper) pre-activation bounds (filled when recording)
    preact: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    # layer index of a ReLU -> the statistics of its pre-activation box that the Shi et al.
    # regulariser needs (``RecordingIntervalReLU``), filled when recording along with ``preact``
    relu_stats: dict[int, Tensor] = field(default_factory=dict)
    # layer index of a Conv2d/Linear -> (W', b', |W'|) with the next BatchNorm folded in;
    # filled and read only without autograd (a cached weight would carry no gradient)
    folded: dict[int, tuple[Tensor, Tensor | None, Tensor]] = field(default_factory=dict)


def layers_of(model: nn.Module) -> list[nn.Module]:
    """The layers of a supported sequential model; anything else is rejected by name."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"the bound engine needs an nn.Sequential model, got {type(model).__name__}")
    layers = list(model)
    for i, layer in enumerate(layers):
        if not isinstance(layer, SUPPORTED):
            names = ", ".join(t.__name__ for t in SUPPORTED)
            raise TypeError(f"layer {i} ({type(layer).__name__}) is not supported; supported: {names}")
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            raise TypeError(f"layer {i}: only zero-padded, ungrouped Conv2d is supported")
    if not layers or not isinstance(layers[-1], nn.Linear):
        raise TypeError("the last layer must be nn.Linear (the margin specification is folded into it)")
    return layers


def _channel_view(v: Tensor, ndim: int) -> Tensor:
    """Reshape a per-channel vector to broadcast over an activation of ``ndim`` dims."""
    return v.view(1, -1, *([1] * (ndim - 2)))


def _normalize_affine(layer: Normalize) -> tuple[Tensor, Tensor]:
    std = layer.std.reshape(-1)
    return 1.0 / std, -layer.mean.reshape(-1) / std


def _batchnorm_affine(layer: nn.BatchNorm1d | nn.BatchNorm2d, act: Tensor | None, update_stats: bool):
    """Scale/shift of a BatchNorm layer: batch statistics of ``act`` in train mode, else running ones."""
    use_batch = layer.training or layer.running_mean is None
    if use_batch:
        if act is None:
            raise RuntimeError("a BatchNorm layer in train mode needs the clean batch: call clean_pass first")
        var, mean = ChannelStats.apply(act)
        if update_stats and layer.training and layer.running_mean is not None:
            _update_running_stats(layer, mean.detach(), var.detach(), act.numel() // act.shape[1])
    else:
        mean, var = layer.running_mean, layer.running_var
    scale = torch.rsqrt(var + layer.eps)
    if layer.affine:
        scale = scale * layer.weight
        shift = layer.bias - mean * scale
    else:
        shift = -mean * scale
    return scale, shift


@torch.no_grad()
def _update_running_stats(layer: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, n: int) -> None:
    """What ``F.batch_norm(training=True)`` does to the running statistics."""
    layer.num_batches_tracked += 1
    momentum = layer.momentum if layer.momentum is not None else 1.0 / float(layer.num_batches_tracked)
    unbiased = var * n / max(n - 1, 1)
    layer.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
    layer.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)


def _affine_of(i: int, layer: nn.Module, ctx: BoundContext, act: Tensor | None, update: bool):
    if i not in ctx.affines:
        if isinstance(layer, Normalize):
            ctx.affines[i] = _normalize_affine(layer)
        else:
            ctx.affines[i] = _batchnorm_affine(layer, act, update)
    return ctx.affines[i]


def input_box(x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """The l_inf box of per-sample radius ``eps`` around ``x``, clipped to [0, 1]."""
    if eps.dim() != 1 or eps.shape[0] != x.shape[0]:
        raise ValueError(f"eps must have shape [{x.shape[0]}], got {tuple(eps.shape)}")
    e = eps.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return (x - e).clamp(0.0, 1.0), (x + e).clamp(0.0, 1.0)


def propagate(
    layers: list[nn.Module],
    ctx: BoundContext,
    *,
    clean: Tensor | None = None,
    box: tuple[Tensor, Tensor] | None = None,
    update_stats: bool = False,
    record_preact: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Push a clean batch and/or an input box through all layers but the last.

    Returns (clean features, centre, radius) at the input of the last linear layer. The
    clean pass, needed anyway for BatchNorm statistics and the standard loss, runs in the
    same loop, so the centre and radius of each layer see the statistics of the clean batch.
    """
    c = r = None
    if box is not None:
        lo, hi = box
        c, r = (hi + lo) / 2, (hi - lo) / 2
    i, last = 0, len(layers) - 1
    while i < last:
        layer = layers[i]
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nxt = layers[i + 1] if i + 1 < last else None
            bn = nxt if isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)) else None
            if bn is not None and c is not None and _fold_costs_more(layer, c):
                bn = None  # a wide Linear layer: scaling its weights costs more than the activations
            clean, c, r = _weight_layer(i, layer, bn, ctx, clean, c, r, update_stats)
            i += 2 if bn is not None else 1
            continue
        if isinstance(layer, AFFINE_PER_CHANNEL):
            scale, shift = _affine_of(i, layer, ctx, clean, update_stats)
            if clean is not None:
                clean = clean * _channel_view(scale, clean.dim()) + _channel_view(shift, clean.dim())
            if c is not None:
                c = c * _channel_view(scale, c.dim()) + _channel_view(shift, c.dim())
                r = r * _channel_view(scale.abs(), r.dim())
        elif isinstance(layer, nn.ReLU):
            # outputs of these layers are fresh tensors no other autograd node saved: the
            # ReLU may overwrite them (an allocation of an activation-sized tensor on CPU
            # costs more than the pass that fills it)
            fresh = i > 0 and isinstance(layers[i - 1], (nn.Conv2d, nn.Linear, *AFFINE_PER_CHANNEL))
            if clean is not None:
                clean = F.relu_(clean) if fresh else F.relu(clean)
            if c is not None:
                if record_preact:
                    c, r, lo, hi, stats = RecordingIntervalReLU.apply(c, r, fresh)
                    ctx.preact[i], ctx.relu_stats[i] = (lo, hi), stats
                else:
                    c, r = IntervalReLU.apply(c, r, fresh)
        elif isinstance(layer, nn.Flatten):
            clean = None if clean is None else layer(clean)
            if c is not None:
                c, r = layer(c), layer(r)
        i += 1
    return clean, c, r


def _weight_layer(
    i: int,
    layer: nn.Conv2d | nn.Linear,
    bn: nn.BatchNorm1d | nn.BatchNorm2d | None,
    ctx: BoundContext,
    clean: Tensor | None,
    c: Tensor | None,
    r: Tensor | None,
    update_stats: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """A Conv2d/Linear layer, and the BatchNorm right after it (index i + 1) if ``bn`` is given.

    The centre goes through W' = W * scale with bias b * scale + shift and the radius through
    |W'| = |W| * |scale|: the same intervals as applying BatchNorm after the layer (up to
    rounding), without the per-channel passes over the activations.
    """
    if clean is not None:
        clean = layer(clean)
        if bn is not None:
            fresh = i + 1 not in ctx.affines
            scale, shift = _affine_of(i + 1, bn, ctx, clean, update_stats)
            if fresh and (bn.training or bn.running_mean is None):
                # the fused kernel, with the gradient through the statistics of this batch
                clean = F.batch_norm(clean, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
            else:
                clean = torch.addcmul(
                    _channel_view(shift, clean.dim()), clean, _channel_view(scale, clean.dim())
                )
    if c is None:
        return clean, c, r
    cache = None if torch.is_grad_enabled() else ctx.folded
    if cache is not None and i in cache:
        w, b, w_abs = cache[i]
    else:
        w, b = layer.weight, layer.bias
        if bn is not None:
            scale, shift = _affine_of(i + 1, bn, ctx, None, update_stats)
            w = w * scale.view(-1, *([1] * (w.dim() - 1)))
            b = shift if b is None else torch.addcmul(shift, b, scale)
        w_abs = w.abs()
        if cache is not None:
            cache[i] = (w, b, w_abs)
    if isinstance(layer, nn.Conv2d):
        c = F.conv2d(c, w, b, layer.stride, layer.padding, layer.dilation)
        r = F.conv2d(r, w_abs, None, layer.stride, layer.padding, layer.dilation)
    else:
        c, r = F.linear(c, w, b), F.linear(r, w_abs)
    return clean, c, r


def _fold_costs_more(layer: nn.Conv2d | nn.Linear, c: Tensor) -> bool:
    """Folding a per-channel map into the weights touches the weights (and their gradient)
    twice; applying it to the centre and radius touches two output-sized tensors."""
    if isinstance(layer, nn.Linear):
        return layer.weight.numel() > c.shape[0] * layer.out_features
    return False


class IntervalReLU(torch.autograd.Function):
    """ReLU of the box [c - r, c + r] in centre/radius form: (c', r') with c' +- r' = relu(c +- r).

    The same values as composing autograd ops (sub, add, two relus, add, sub, two halvings)
    with one new activation-sized tensor instead of six when ``inplace`` (the results are
    written over c and r, which the caller must not need) and two in the backward. Needs
    r >= 0, which the engine guarantees (radii are images of |W| and |scale|): then relu(c + r)
    > 0 exactly where c' > 0. The derivative of relu at 0 is 0, as in ``F.relu``.
    """

    @staticmethod
    def forward(ctx, c: Tensor, r: Tensor, inplace: bool = False) -> tuple[Tensor, Tensor]:
        lo = torch.sub(c, r).clamp_(min=0)
        if inplace:
            ctx.mark_dirty(c, r)
            hi = c.add_(r).clamp_(min=0)
            r_out = torch.sub(hi, lo, out=r).mul_(0.5)
        else:
            hi = torch.add(c, r).clamp_(min=0)
            r_out = torch.sub(hi, lo).mul_(0.5)
        c_out = hi.sub_(r_out)  # hi - (hi - lo) / 2
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(c_out, lo)
        return c_out, r_out

    @staticmethod
    def backward(ctx, grad_c: Tensor, grad_r: Tensor) -> tuple[Tensor, Tensor, None]:
        c_out, lo = ctx.saved_tensors
        thr = torch.ops.aten.threshold_backward.grad_input
        g_hi = torch.add(grad_c, grad_r)  # 2 * d/d(c + r), before the relu
        thr(g_hi, c_out, 0.0, grad_input=g_hi)
        g_lo = torch.sub(grad_c, grad_r)  # 2 * d/d(c - r), before the relu
        thr(g_lo, lo, 0.0, grad_input=g_lo)
        grad_r_in = torch.sub(g_hi, g_lo, out=g_lo).mul_(0.5)
        return g_hi.sub_(grad_r_in), grad_r_in, None  # (g_hi + g_lo) / 2, (g_hi - g_lo) / 2


class RecordingIntervalReLU(torch.autograd.Function):
    """``IntervalReLU`` that also returns the pre-activation box (lo, hi) = (c - r, c + r) and
    the statistics of it that the regulariser of Shi et al. 2021 needs, in the same pass.

    ``stats`` = [mean(r), sum(c [lo > 0]) / n, -sum(c [hi < 0]) / n, sum((c - m)^2 [lo > 0]),
    sum((c - m)^2 [hi < 0])], m = mean(c) over the n units of the layer: the tightness, the
    mean of the active centres, minus that of the inactive ones, and the (unnormalised)
    variances of both in ``compute_reg`` of their code, before its scalar arithmetic (done in
    ``trainers.methods.regularizers``). About twenty passes over c and r that allocate only lo
    and hi (the scratch space is the output, or c and r themselves when ``inplace``: lo and hi
    hold the box by then) replace some twenty autograd ops on the recorded bounds, each with a
    new activation-sized result forward and backward. The backward pass computes the gradient
    of the statistics and of the ReLU with three new tensors (``IntervalReLU``: two).
    """

    @staticmethod
    def forward(ctx, c: Tensor, r: Tensor, inplace: bool = False):
        ctx.set_materialize_grads(False)
        if inplace and _compiled_size(c) and c.is_contiguous() and r.is_contiguous():
            lo, hi, out = _FUSED_FORWARD(c.view(-1), r.view(-1))  # writes the outputs into c, r
            if out is not None:
                ctx.mark_dirty(c, r)
                ctx.save_for_backward(lo.view_as(c), hi.view_as(c), out[5:])
                return c, r, lo.view_as(c), hi.view_as(c), out[:5]
        n = c.numel()
        lo, hi = torch.sub(c, r), torch.add(c, r)
        m, sum_r = c.mean(), r.sum()
        if inplace:
            ctx.mark_dirty(c, r)
            oc, orr = c, r
        else:
            oc, orr = torch.empty_like(c), torch.empty_like(r)
        _THRESHOLD(c, lo, 0.0, grad_input=orr)  # c on active units (lo > 0), else 0
        sum_act = orr.sum()
        _THRESHOLD(orr.sub_(m), lo, 0.0, grad_input=orr)  # c - m on active units
        dev_act, var_act = orr.sum(), _dot(orr)
        torch.neg(hi, out=orr)  # > 0 exactly on inactive units (hi < 0)
        _THRESHOLD(c, orr, 0.0, grad_input=oc)
        sum_inact = oc.sum()
        _THRESHOLD(oc.sub_(m), orr, 0.0, grad_input=oc)
        dev_inact, var_inact = oc.sum(), _dot(oc)
        # the interval ReLU, with the operations of IntervalReLU
        c_out, r_out = torch.clamp(hi, min=0, out=oc), torch.clamp(lo, min=0, out=orr)
        torch.sub(c_out, r_out, out=r_out).mul_(0.5)
        c_out.sub_(r_out)
        sums = torch.stack([sum_r, sum_act, sum_inact, var_act, var_inact, m, dev_act, dev_inact])
        out = sums * sums.new_tensor([1 / n, 1 / n, -1 / n, 1, 1, 1, 1, 1])
        ctx.save_for_backward(lo, hi, out[5:])
        return c_out, r_out, lo, hi, out[:5]

    @staticmethod
    def backward(ctx, g_c, g_r, g_lo, g_hi, g_stats):
        lo, hi, saved = ctx.saved_tensors
        if g_lo is None and g_hi is None and None not in (g_c, g_r, g_stats) and _compiled_size(lo):
            grads = _FUSED_BACKWARD(
                lo.view(-1), hi.view(-1), g_c.reshape(-1), g_r.reshape(-1), saved, g_stats
            )
            if grads[0] is not None:
                return grads[0].view_as(lo), grads[1].view_as(lo), None
        zero = lo.new_zeros(()).expand_as(lo)
        g_c = zero if g_c is None else g_c
        g_r = zero if g_r is None else g_r
        if g_stats is None:
            grad_c, up, down = None, torch.empty_like(lo), torch.empty_like(lo)
        else:
            grad_c, up, down = _stats_grad(lo, hi, saved, g_stats)
        # the interval ReLU as in IntervalReLU.backward (c_out > 0 exactly where hi > 0)
        _THRESHOLD(torch.add(g_c, g_r, out=up), hi, 0.0, grad_input=up)  # through hi = c + r
        _THRESHOLD(torch.sub(g_c, g_r, out=down), lo, 0.0, grad_input=down)  # through lo = c - r
        grad_r = torch.sub(up, down, out=down).mul_(0.5)
        up.sub_(grad_r)  # (up + down) / 2
        grad_c = up if grad_c is None else grad_c.add_(up)
        if g_stats is not None:
            grad_r.add_(g_stats[0] / lo.numel())
        if g_lo is not None:  # the recorded bounds
            grad_c.add_(g_lo)
            grad_r.sub_(g_lo)
        if g_hi is not None:
            grad_c.add_(g_hi)
            grad_r.add_(g_hi)
        return grad_c, grad_r, None


_THRESHOLD = torch.ops.aten.threshold_backward.grad_input  # out = where(self > threshold, grad, 0)


def _dot(t: Tensor) -> Tensor:
    flat = t.reshape(-1)
    return torch.dot(flat, flat)


def _stats_grad(lo: Tensor, hi: Tensor, saved: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradient with respect to c of ``RecordingIntervalReLU``'s statistics (upstream
    gradient ``g``), and two free buffers of its size. With d = c - m: d/dc = [lo > 0]
    (g1 / n + 2 g3 d) + [hi < 0] (-g2 / n + 2 g4 d) + gamma, gamma = -2 / n (g3 sum_act(d) +
    g4 sum_inact(d)) being the part through m (d/dr = g0 / n is the caller's). The centre is
    (lo + hi) / 2, so a + b d = (a - b m) + (b / 2) (lo + hi)."""
    n = lo.numel()
    m, dev_act, dev_inact = saved.unbind()
    k = g * g.new_tensor([1 / n, 1 / n, -1 / n, 2, 2])
    half_b = k[3:] * 0.5  # b / 2 of the active and the inactive part
    icpt = k[1:3] - k[3:] * m  # a - b m
    gamma = (k[3:] * torch.stack([dev_act, dev_inact])).sum() / -n
    s = torch.add(lo, hi)
    grad = torch.addcmul(icpt[0], s, half_b[0])
    _THRESHOLD(grad, lo, 0.0, grad_input=grad)  # active units
    t = torch.addcmul(icpt[1], s, half_b[1])
    torch.neg(hi, out=s)  # > 0 exactly on inactive units
    grad.add_(_THRESHOLD(t, s, 0.0, grad_input=t)).add_(gamma)
    return grad, s, t


# Layers of at least this many units use the compiled kernels below on CPU; None: never. On
# the benchmark's CPU they make CNN7's mid-ramp IBP step 0.93-1.00x the post-ramp one against
# 1.06x with the eager kernels (4-8M units per layer); the MNIST net's layers (<= 0.4M) stay
# eager (docs/benchmarks.md, "The fused regulariser").
COMPILE_MIN_NUMEL: int | None = 1 << 20


def _compiled_size(t: Tensor) -> bool:
    return COMPILE_MIN_NUMEL is not None and t.device.type == "cpu" and t.numel() >= COMPILE_MIN_NUMEL


class _Compiled:
    """``fn`` compiled by ``torch.compile`` (inductor: one C++ loop nest) at its first call. If
    compiling fails (no C++ compiler, say), it warns once and returns ``fallback`` from then on,
    and the caller runs the eager kernels."""

    def __init__(self, fn: Callable, fallback: tuple) -> None:
        self.fn, self.fallback, self.compiled, self.error = fn, fallback, None, None

    def __call__(self, *args):
        if self.error is not None:
            return self.fallback
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.fn, dynamic=True)
            return self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 -- any failure of the compiler: run eager instead
            self.error = f"{type(exc).__name__}: {exc}"[:500]
            warnings.warn(
                f"torch.compile of {self.fn.__name__} failed, eager kernels used: {self.error}", stacklevel=2
            )
            return self.fallback


def _fused_forward(c: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``RecordingIntervalReLU.forward`` on flat c, r as one expression (c, r overwritten with
    the ReLU's output): (lo, hi, statistics and the saved [m, sum_act(c - m), sum_inact(c - m)])."""
    n = c.numel()
    lo, hi = c - r, c + r
    act, inact = lo > 0, hi < 0
    m = c.mean()
    d = c - m
    sums = [r.sum(), c.where(act, 0).sum(), c.where(inact, 0).sum(), (d * d).where(act, 0).sum()]
    sums += [(d * d).where(inact, 0).sum(), m, d.where(act, 0).sum(), d.where(inact, 0).sum()]
    out = torch.stack(sums) * torch.tensor([1 / n, 1 / n, -1 / n, 1, 1, 1, 1, 1], dtype=c.dtype)
    hi_c, lo_c = hi.clamp(min=0), lo.clamp(min=0)
    r_out = (hi_c - lo_c) * 0.5
    c.copy_(hi_c - r_out)
    r.copy_(r_out)
    return lo, hi, out


def _fused_backward(
    lo: Tensor, hi: Tensor, g_c: Tensor, g_r: Tensor, saved: Tensor, g: Tensor
) -> tuple[Tensor, Tensor]:
    """``RecordingIntervalReLU.backward`` (no gradient of lo, hi) on flat tensors, as one expression."""
    n = lo.numel()
    m, dev_act, dev_inact = saved.unbind()
    up = (g_c + g_r).where(hi > 0, 0)
    down = (g_c - g_r).where(lo > 0, 0)
    d = (lo + hi) * 0.5 - m
    reg = (g[1] / n + 2 * g[3] * d).where(lo > 0, (-g[2] / n + 2 * g[4] * d).where(hi < 0, 0))
    gamma = -2 / n * (g[3] * dev_act + g[4] * dev_inact)
    return (up + down) * 0.5 + reg + gamma, (up - down) * 0.5 + g[0] / n


_FUSED_FORWARD = _Compiled(_fused_forward, (None, None, None))
_FUSED_BACKWARD = _Compiled(_fused_backward, (None, None))


class ChannelStats(torch.autograd.Function):
    """Per-channel (biased variance, mean) of an activation over batch and space.

    ``torch.var_mean``'s backward makes several activation-sized temporaries; the gradient
    is one per-channel affine map of the input, computed here in one pass.
    """

    @staticmethod
    def forward(ctx, act: Tensor) -> tuple[Tensor, Tensor]:
        dims = [0, *range(2, act.dim())]
        var, mean = torch.var_mean(act, dims, correction=0)
        ctx.save_for_backward(act, mean)
        return var, mean

    @staticmethod
    def backward(ctx, grad_var: Tensor, grad_mean: Tensor) -> Tensor:
        act, mean = ctx.saved_tensors
        n = act.numel() // act.shape[1]
        a = grad_var * (2.0 / n)  # d var / d act = 2 (act - mean) / n
        b = grad_mean / n - a * mean
        return torch.addcmul(_channel_view(b, act.dim()), act, _channel_view(a, act.dim()))


def other_classes(y: Tensor, num_classes: int) -> Tensor:
    """Indices j != y_b for each sample, in increasing order: shape [B, K-1]."""
    ar = torch.arange(num_classes - 1, device=y.device).expand(y.shape[0], -1)
    return ar + (ar >= y[:, None]).long()


def spec_last_layer(last: nn.Linear, y: Tensor) -> tuple[Tensor, Tensor]:
    """The last layer with the margin specification folded in: W'[b, j] = W[y_b] - W[j_b]."""
    others = other_classes(y, last.out_features)
    w, n = last.weight, y.shape[0]
    # index_select, not w[others]: the backward of advanced indexing (index_put with
    # accumulation) is several times slower on CPU than index_add
    w_others = torch.index_select(w, 0, others.reshape(-1)).view(n, -1, w.shape[1])
    wspec = torch.index_select(w, 0, y)[:, None, :] - w_others  # [B, K-1, H]
    if last.bias is None:
        bspec = torch.zeros(wspec.shape[:2], dtype=w.dtype, device=w.device)
    else:
        b = last.bias
        bspec = torch.index_select(b, 0, y)[:, None] - torch.index_select(b, 0, others.reshape(-1)).view(
            n, -1
        )
    return wspec, bspec


def margins_from_interval(last: nn.Linear, c: Tensor, r: Tensor, y: Tensor) -> Tensor:
    """Lower bounds of z_y - z_j (j != y) given the interval (c, r) at the last layer's input."""
    wspec, bspec = spec_last_layer(last, y)
    centre = torch.einsum("bkh,bh->bk", wspec, c) + bspec
    radius = torch.einsum("bkh,bh->bk", wspec.abs(), r)
    return centre - radius


def clean_pass(model: nn.Sequential, x: Tensor, *, update_stats: bool = False) -> tuple[Tensor, BoundContext]:
    """Clean logits and the context (per-channel affine maps) that bound passes reuse."""
    layers = layers_of(model)
    ctx = BoundContext()
    feats, _, _ = propagate(layers, ctx, clean=x, update_stats=update_stats)
    return layers[-1](feats), ctx


def ibp_margins(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    eps: Tensor,
    ctx: BoundContext | None = None,
    *,
    record_preact: bool = False,
) -> Tensor:
    """IBP lower bounds of the margins z_y - z_j, j != y: shape [B, K-1].

    ``ctx`` must come from ``clean_pass`` on a batch containing these samples when the model
    has BatchNorm layers in train mode; in eval mode it may be omitted.
    """
    layers = layers_of(model)
    if ctx is None:
        ctx = BoundContext()
        if model.training and any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in layers):
            _, ctx = clean_pass(model, x)
    _, c, r = propagate(layers, ctx, box=input_box(x, eps), record_preact=record_preact)
    return margins_from_interval(layers[-1], c, r, y)


def ibp_margins_fn(
    model: nn.Sequential, x: Tensor, y: Tensor, ctx: BoundContext | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(idx, eps)`` = ``ibp_margins(model, x[idx], y[idx], eps, ctx)``, for root solvers.

    A radius search evaluates the bound of shrinking sub-batches a dozen times; the folded
    specification of the whole batch (and its absolute value) is built once here and each
    evaluation only selects its rows. Meant for use without autograd (``torch.no_grad``).
    """
    layers = layers_of(model)
    if ctx is None:
        ctx = BoundContext()
        if model.training and any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in layers):
            _, ctx = clean_pass(model, x)
    wspec, bspec = spec_last_layer(layers[-1], y)
    wspec_abs = wspec.abs()

    def f(idx: Tensor, eps: Tensor) -> Tensor:
        _, c, r = propagate(layers, ctx, box=input_box(x[idx], eps))
        centre = torch.baddbmm(bspec[idx].unsqueeze(2), wspec[idx], c.unsqueeze(2))
        return (centre - torch.bmm(wspec_abs[idx], r.unsqueeze(2))).squeeze(2)

    return f


def joint_ibp(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    eps: Tensor,
    *,
    update_stats: bool = True,
    record_preact: bool = False,
) -> tuple[Tensor, Tensor, BoundContext]:
    """Clean logits and IBP margin bounds in one pass (training): (logits, margins, ctx)."""
    layers = layers_of(model)
    ctx = BoundContext()
    feats, c, r = propagate(
        layers, ctx, clean=x, box=input_box(x, eps), update_stats=update_stats, record_preact=record_preact
    )
    return layers[-1](feats), margins_from_interval(layers[-1], c, r, y), ctx
