"""l_inf PGD with random restarts and a margin loss: batched, one radius per sample.

Two kinds of user: the training attack of MTL-IBP's adversarial loss term and of SABR's small
box (``trainers.methods.training_attack``), and the checks that no adversarial example lies
within a certified radius: a sound bound's margin lower bound can never exceed the margin at any
point PGD finds in the same box, so ``adversarial_margins >= margin_lower`` is an independent
cross-check of the bound engine.

The attack maximises the margin loss max_{j != y} z_j - z_y (Carlini & Wagner 2017) by signed
gradient ascent with projection (Madry et al. 2018) in the box the bound engine certifies:
[x - eps, x + eps] clipped to [0, 1] (``trainers.bounds.engine.input_box``). Each restart starts
at a uniform point of the box; per sample, the best iterate over all steps and restarts is kept.
A margin loss rather than cross-entropy: the checks ask whether some margin can be pushed below
zero, and cross-entropy's gradient fades on samples it already misclassifies.

The model is attacked in eval mode (running BatchNorm statistics), its modes restored after:
an attack must neither move BatchNorm's running statistics nor make one sample's attack depend
on the rest of the batch. A caller that wants another function attacked (MTL-IBP: the clean
batch's BatchNorm statistics) passes it as ``forward``. Only the input is differentiated
(``torch.autograd.grad``), so no gradient reaches the parameters' ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from trainers.bounds.engine import input_box, other_classes

Logits = Callable[[Tensor], Tensor]  # a batch of inputs -> logits [B, K]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, every submodule's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def margins_of(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - z_j for the classes j != y in increasing order: [B, K-1], the bound methods' layout."""
    others = other_classes(y, logits.shape[1])
    return logits.gather(1, y[:, None]) - logits.gather(1, others)


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: Tensor,
    *,
    steps: int,
    restarts: int = 1,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    forward: Logits | None = None,
) -> Tensor:
    """The point of the clipped box of radius ``eps[b]`` around ``x[b]`` where PGD found the
    largest max_{j != y} z_j - z_y (detached, same shape as ``x``).

    ``step_size``: the step per coordinate as a fraction of each sample's eps (radii differ per
    sample; De Palma et al. 2024 also give it relative to the radius); None: 2.5 / steps, so that
    the steps can cross the box (Madry et al. 2018); a single step then jumps to a vertex. ``generator`` draws the random starts (on
    ``x``'s device). ``forward``: the logits function to attack instead of the model in eval mode.
    eps = 0 returns the clean point (clipped to [0, 1]).
    """
    _check(x, y, eps, steps, restarts, step_size)
    if forward is not None:
        return _pgd(forward, x, y, eps, steps, restarts, step_size, generator)
    with eval_mode(model):
        return _pgd(model, x, y, eps, steps, restarts, step_size, generator)


def adversarial_margins(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: Tensor,
    *,
    steps: int,
    restarts: int = 1,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    forward: Logits | None = None,
) -> Tensor:
    """The margins z_y - z_j (j != y, increasing) at PGD's point: [B, K-1].

    All margins at the one point where the smallest was lowest (not each margin minimised on its
    own): upper bounds of the true worst-case margins, so every sound lower bound lies below
    each of them. Differentiable with respect to the parameters when autograd is on (MTL-IBP's
    loss); the attack point itself is a constant.
    """
    x_adv = pgd_attack(
        model,
        x,
        y,
        eps,
        steps=steps,
        restarts=restarts,
        step_size=step_size,
        generator=generator,
        forward=forward,
    )
    if forward is not None:
        return margins_of(forward(x_adv), y)
    with eval_mode(model):
        return margins_of(model(x_adv), y)


def _check(x: Tensor, y: Tensor, eps: Tensor, steps: int, restarts: int, step_size: float | None) -> None:
    if steps < 1:
        raise ValueError(f"invalid steps={steps!r}: must be >= 1")
    if restarts < 1:
        raise ValueError(f"invalid restarts={restarts!r}: must be >= 1")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"invalid step_size={step_size!r}: must be > 0 (a fraction of eps)")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape [{x.shape[0]}], got {tuple(y.shape)}")
    if eps.shape != (x.shape[0],):
        raise ValueError(f"eps must have shape [{x.shape[0]}], got {tuple(eps.shape)}")
    if not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
        raise ValueError(
            f"eps must be finite and >= 0, got min {eps.min().item()!r}, max {eps.max().item()!r}"
        )


def _pgd(
    forward: Logits,
    x: Tensor,
    y: Tensor,
    eps: Tensor,
    steps: int,
    restarts: int,
    step_size: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    lo, hi = input_box(x.detach(), eps.detach())
    ratio = 2.5 / steps if step_size is None else step_size
    alpha = (ratio * eps.detach()).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    best = x.detach().clamp(0.0, 1.0)  # kept only if every objective is NaN
    best_obj = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        for _ in range(restarts):
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            z = torch.addcmul(lo, hi - lo, u)
            for t in range(steps + 1):
                last = t == steps  # the final iterate is only evaluated
                z.requires_grad_(not last)
                with torch.set_grad_enabled(not last):
                    obj = -margins_of(forward(z), y).min(dim=1).values
                better = obj.detach() > best_obj
                best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), z.detach(), best)
                best_obj = torch.where(better, obj.detach(), best_obj)
                if last:
                    break
                (grad,) = torch.autograd.grad(obj.sum(), z)
                z = torch.minimum(torch.maximum(z.detach() + alpha * grad.sign(), lo), hi)
    return best
