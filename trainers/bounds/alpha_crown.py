"""alpha-CROWN (Xu et al. 2021), restricted to the last backward pass: CROWN's intermediate
bounds (``trainers.bounds.crown_full``), then the lower slopes of the unstable ReLUs in the
pass from the margin specification optimised by projected gradient ascent on the bounds.

The lower relaxation z >= alpha z of an unstable ReLU holds for every alpha in [0, 1], so every
iterate gives sound bounds; the result is each margin's best over the iterates, starting from
CROWN's adaptive slopes, so it is never below CROWN's bound with the same intermediate bounds.
The full method also optimises the slopes of the passes that give the intermediate bounds
(one set per neuron of every layer); that is not done here: those passes dominate the cost
of CROWN, and optimising them would multiply it by the iterations.

Cost: CROWN's, plus ``ITERATIONS`` forward and backward evaluations of the last pass (K - 1
rows, the cost of a CROWN-IBP bound each, about three with the gradient). The bounds carry no
gradient with respect to the model: this is a certification bound.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainers.bounds.crown_full import CrownState
from trainers.bounds.engine import BoundContext, spec_last_layer

ITERATIONS = 20
LEARNING_RATE = 0.1  # Adam on the slopes, which live in [0, 1]


def alpha_crown_margins(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    eps: Tensor,
    ctx: BoundContext | None = None,
    *,
    iterations: int = ITERATIONS,
) -> Tensor:
    """alpha-CROWN lower bounds of z_y - z_j (j != y), shape [B, K-1] (see the module doc)."""
    with torch.no_grad():
        state = CrownState.of(model, x, eps, ctx)
        a, bias = spec_last_layer(state.layers[-1], y)
        best = state.backward(a, bias)
    if not state.preact or iterations < 1:
        return best
    rows = a.shape[1]
    alphas = {}
    for i, (lo, hi) in state.preact.items():  # start at CROWN's adaptive slopes
        adaptive = (hi > -lo).to(a.dtype).unsqueeze(1)
        alphas[i] = adaptive.expand(-1, rows, *lo.shape[1:]).clone().requires_grad_(True)
    opt = torch.optim.Adam(list(alphas.values()), lr=LEARNING_RATE)
    with torch.enable_grad():
        for _ in range(iterations):
            bound = state.backward(a, bias, alphas)
            best = torch.maximum(best, bound.detach())
            grads = torch.autograd.grad(-bound.sum(), list(alphas.values()))
            for alpha, g in zip(alphas.values(), grads):
                alpha.grad = g
            opt.step()
            with torch.no_grad():
                for alpha in alphas.values():
                    alpha.clamp_(0.0, 1.0)
    with torch.no_grad():
        return torch.maximum(best, state.backward(a, bias, alphas))
