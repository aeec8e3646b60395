"""Data sets as whole tensors, a validation split carved from the training set, fast batching.

Why whole tensors: the data sets of the paper fit in memory (TinyImageNet is 1.2 GB as uint8), and
slicing a tensor is far cheaper than a ``DataLoader`` with per-item PIL transforms, which matters
when a sweep runs hundreds of short trials. Inputs stay in [0, 1] (uint8 / 255); per-channel
normalisation is the first layer of the model (:class:`trainers.models.Normalize`), so every
perturbation radius in this project is in pixel units, as in the paper's tables.

Model selection uses a validation split carved from the *training* set, never from the test set
(the published models were selected on the test split; docs/method.md, "Evaluation").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from trainers.data import datasets as _datasets  # noqa: F401  (registers the data sets)
from trainers.data.spec import DATASETS, DataMissingError, DatasetSpec, get_dataset, register_dataset
from trainers.data.synthetic import SYNTHETIC_SEED, make_synthetic

__all__ = [
    "DATASETS",
    "SYNTHETIC_SEED",
    "DataMissingError",
    "DatasetSpec",
    "Splits",
    "augment_batch",
    "get_dataset",
    "iterate_batches",
    "load_splits",
    "make_synthetic",
    "register_dataset",
]


@dataclass
class Splits:
    """Train / validation / test tensors: x uint8 [N, C, H, W] (float32 in [0, 1] for synthetic), y int64."""

    spec: DatasetSpec
    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_val: Tensor = field(repr=False)
    y_val: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)

    def __repr__(self) -> str:
        n = (len(self.y_train), len(self.y_val), len(self.y_test))
        return f"Splits({self.spec.name}, train={n[0]}, val={n[1]}, test={n[2]})"


def load_splits(
    dataset: str,
    *,
    data_dir: str = "./data",
    download: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_subset: int | None = None,
    synthetic_size: int = 2048,
) -> Splits:
    """Load a data set and carve a seeded validation split from its training set.

    ``val_fraction`` of the training set (a seeded permutation, so the split is the same for every
    trial with the same seed) becomes the validation set; ``train_subset`` caps the remaining
    training samples at the first N of that permutation, for quick runs.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} must lie in [0, 1)")
    if train_subset is not None and train_subset < 1:
        raise ValueError(f"train_subset={train_subset!r} must be >= 1 (or None for all samples)")
    spec = get_dataset(dataset)
    x_tr, y_tr, x_te, y_te = spec.loader(Path(data_dir).expanduser(), download, synthetic_size)
    for y in (y_tr, y_te):
        if len(y) and not (0 <= int(y.min()) and int(y.max()) < spec.num_classes):
            raise ValueError(
                f"{dataset}: labels {int(y.min())}..{int(y.max())} outside 0..{spec.num_classes - 1}"
            )
    for x in (x_tr, x_te):
        if tuple(x.shape[1:]) != spec.input_shape:
            raise ValueError(
                f"{dataset}: loaded images of shape {tuple(x.shape[1:])}, expected {spec.input_shape}"
            )

    n = len(y_tr)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n - n_val < 1:
        raise ValueError(
            f"{dataset}: {n} training samples leave none for training at val_fraction={val_fraction}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    return Splits(spec, x_tr[train_idx], y_tr[train_idx], x_tr[val_idx], y_tr[val_idx], x_te, y_te)


def iterate_batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    device: torch.device | str,
    augment: bool = False,
    with_index: bool = False,
) -> Iterator[tuple[Tensor, ...]]:
    """Yield float32 [0, 1] batches on ``device``, each sample exactly once (the last batch may be short).

    Shuffling and augmentation draw from ``generator`` (a CPU generator), so an epoch is reproducible
    from its seed on CPU and CUDA alike. ``with_index``: also yield each sample's position in ``x``
    (on ``device``), for methods that keep per-sample state across epochs (ACERT's warm radii).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
    order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        xb = x[idx].to(device, non_blocking=True)
        xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()
        if augment:
            xb = augment_batch(xb, generator)
        yb = y[idx].to(device, non_blocking=True)
        yield (xb, yb, idx.to(device, non_blocking=True)) if with_index else (xb, yb)


def augment_batch(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Random crop after zero padding of H // 8 pixels (4 for CIFAR-10, 8 for TinyImageNet) and
    horizontal flip with probability 1/2, the augmentation of Shi et al. 2021, batched on tensors."""
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [B, 1, 1, W]
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]
