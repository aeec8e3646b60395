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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A separable task for tests and smoke runs: one binary {0.2, 0.8} prototype per class plus
    Gaussian noise, clipped to [0, 1].

    Prototypes differ in at least a quarter of the pixels, so the l_inf distance from a sample to
    the best linear boundary is about 0.3 minus the noise: certified radii of 0.05-0.1 are within
    reach of a tiny MLP. Prototypes, training and test samples come from separate seed streams.
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

    def sample(n: int, stream: int) -> tuple[Tensor, Tensor]:
        gs = torch.Generator().manual_seed(seed + stream)
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gs)]
        x = protos[y] + noise * torch.randn(n, *shape, generator=gs)
        return x.clamp_(0.0, 1.0), y

    return (*sample(n_train, 1), *sample(n_test, 2))


SYNTHETIC_CLASSES, SYNTHETIC_SHAPE = 4, (1, 8, 8)


def load_synthetic(data_dir: object, download: bool, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The registered ``synthetic`` data set: ``size`` training samples, a quarter as many test ones."""
    return make_synthetic(size, max(1, size // 4), num_classes=SYNTHETIC_CLASSES, shape=SYNTHETIC_SHAPE)
