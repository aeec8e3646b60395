"""The ``synthetic`` data set: generated in code, for tests, demos and quick runs."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SYNTHETIC_SEED = 20230725  # the synthetic task is fixed; `seed` only moves the validation split


def make_synthetic(
    n_train: int,
    n_test: int,
    *,
    num_classes: int = 4,
    shape: tuple[int, ...] = (1, 8, 8),
    noise: float = 0.15,
    seed: int = SYNTHETIC_SEED,
    faint: float | tuple[float, float] = 0.0,
    swapped: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A separable task for tests and smoke runs: one binary {0.2, 0.8} prototype per class plus
    Gaussian noise, clipped to [0, 1].

    Prototypes differ in at least a quarter of the pixels, so the l_inf distance from a sample to
    the best linear boundary is about 0.3 minus the noise: certified radii of 0.05-0.1 are within
    reach of a tiny MLP. Prototypes, training and test samples come from separate seed streams.

    ``faint`` > 0 and ``swapped`` > 0 make an accuracy-robustness tradeoff (after Tsipras et al.
    2019): the last half of the pixels (at least 4) carry no prototype but a faint code of the
    class, 0.5 +- ``faint`` (predictive, but an l_inf perturbation of about ``faint`` breaks it;
    ``faint`` = (low, high) draws each sample's amplitude uniformly from that range, so that a
    model certified at radius r can still read the codes stronger than about r), and a fraction
    ``swapped`` of the samples shows another class's prototype (robust but wrong for them). A
    model that reads the code is accurate and certifies only small radii; one certified at
    larger radii must read the prototypes and loses the swapped samples. With both at 0 the data
    are the plain task above, tensor for tensor.
    """
    if n_train < num_classes or n_test < 1:
        raise ValueError(
            f"synthetic sizes n_train={n_train!r}, n_test={n_test!r}: need n_train >= {num_classes}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be >= 2")
    g = torch.Generator().manual_seed(seed)
    numel = int(np.prod(shape))
    for _ in range(100):
        bits = torch.randint(0, 2, (num_classes, numel), generator=g)
        hamming = (bits[:, None, :] != bits[None, :, :]).sum(-1) + numel * torch.eye(
            num_classes, dtype=torch.long
        )
        if hamming.min() >= numel / 4:
            break
    else:
        raise ValueError(f"shape={shape!r} is too small to separate {num_classes} synthetic classes")
    protos = (0.2 + 0.6 * bits.float()).view(num_classes, *shape)
    low, high = (faint, faint) if isinstance(faint, (int, float)) else faint
    code_pixels = max(4, numel // 2) if high > 0 else 0
    if code_pixels:
        gf = torch.Generator().manual_seed(seed + 3)
        for _ in range(100):
            code = 2.0 * torch.randint(0, 2, (num_classes, code_pixels), generator=gf) - 1.0
            if len({tuple(c.tolist()) for c in code}) == num_classes:
                break

    def sample(n: int, stream: int) -> tuple[Tensor, Tensor]:
        gs = torch.Generator().manual_seed(seed + stream)
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gs)]
        x = protos[y] + noise * torch.randn(n, *shape, generator=gs)
        if code_pixels or swapped > 0:
            gt = torch.Generator().manual_seed(seed + 10 + stream)
            swap = torch.rand(n, generator=gt) < swapped
            other = (y + torch.randint(1, num_classes, (n,), generator=gt)) % num_classes
            shown = torch.where(swap, other, y)  # the prototype a sample shows
            x = x - protos[y] + protos[shown]  # same noise
            if code_pixels:  # the code is always the sample's own class, at the sample's amplitude
                amp = low + (high - low) * torch.rand(n, 1, generator=gt) if high > low else float(low)
                xf = x.view(n, numel)
                xf[:, numel - code_pixels :] += (
                    0.5 + amp * code[y] - protos.view(num_classes, numel)[shown][:, numel - code_pixels :]
                )
        return x.clamp_(0.0, 1.0), y

    return (*sample(n_train, 1), *sample(n_test, 2))


SYNTHETIC_CLASSES, SYNTHETIC_SHAPE = 4, (1, 8, 8)


def load_synthetic(data_dir: object, download: bool, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The registered ``synthetic`` data set: ``size`` training samples, a quarter as many test ones."""
    return make_synthetic(size, max(1, size // 4), num_classes=SYNTHETIC_CLASSES, shape=SYNTHETIC_SHAPE)


# synthetic-tradeoff: the class code's amplitude is uniform in [0, 0.1] per sample (an l_inf
# perturbation of about the amplitude, below the data set's max_eps 0.1, breaks it), 20 % of the
# samples show another class's prototype. Measured on mlp_tiny, 8192 samples, 4 epochs, lr 3e-3
# (ACERT with the exact radius solver):
# standard training 0.95 validation accuracy at ACR 0.011; ACERT with kappa 0.9 / 0.8 / 0.7
# 0.87 / 0.84 / 0.81 at 0.027 / 0.035 / 0.042; IBP and ACERT with kappa <= 0.6 ~0.78 at
# 0.05-0.07 (tests/test_data.py). With 2048 samples no model learns the code in 4 epochs; the
# README's demo uses 16384.
TRADEOFF_FAINT, TRADEOFF_SWAPPED, TRADEOFF_NOISE = (0.0, 0.1), 0.2, 0.02


def load_synthetic_tradeoff(
    data_dir: object, download: bool, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The registered ``synthetic-tradeoff`` data set (the demo's): accuracy or robustness."""
    return make_synthetic(
        size,
        max(1, size // 4),
        num_classes=SYNTHETIC_CLASSES,
        shape=SYNTHETIC_SHAPE,
        noise=TRADEOFF_NOISE,
        faint=TRADEOFF_FAINT,
        swapped=TRADEOFF_SWAPPED,
    )
