"""Data sets as whole tensors, a validation split carved from the training set, fast batching.

Why whole tensors: the data sets of the paper fit in memory (TinyImageNet is 1.2 GB as uint8), and
slicing a tensor is far cheaper than a ``DataLoader`` with per-item PIL transforms, which matters
when a sweep runs hundreds of short trials. Inputs stay in [0, 1] (uint8 / 255); per-channel
normalisation is the first layer of the model (:class:`trainers.models.Normalize`), so every
perturbation radius in this project is in pixel units, as in the paper's tables.

Model selection uses a validation split carved from the *training* set (PAPER.md: "ours uses a
validation split"), never from the test set.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class DatasetSpec:
    """What a model and a certifier need to know about a data set (mean/std are in [0, 1] units)."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,)),
        DatasetSpec("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,)),
        DatasetSpec("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        DatasetSpec("tinyimagenet", 200, (3, 64, 64), (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
        DatasetSpec("synthetic", 4, (1, 8, 8), (0.5,), (0.5,)),
    )
}

SYNTHETIC_SEED = 20230725  # the synthetic task is fixed; `seed` only moves the validation split
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


class DataMissingError(ValueError):
    """The data set is not on disk and downloading was switched off (``--no-download``)."""


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
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(sorted(DATASETS))}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r} must lie in [0, 1)")
    if train_subset is not None and train_subset < 1:
        raise ValueError(f"train_subset={train_subset!r} must be >= 1 (or None for all samples)")
    spec = DATASETS[dataset]
    if dataset == "synthetic":
        x_tr, y_tr, x_te, y_te = make_synthetic(
            synthetic_size, max(1, synthetic_size // 4), num_classes=spec.num_classes, shape=spec.input_shape
        )
    else:
        x_tr, y_tr, x_te, y_te = _LOADERS[dataset](Path(data_dir).expanduser(), download)
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
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield float32 [0, 1] batches on ``device``, each sample exactly once (the last batch may be short).

    Shuffling and augmentation draw from ``generator`` (a CPU generator), so an epoch is reproducible
    from its seed on CPU and CUDA alike.
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
        yield xb, y[idx].to(device, non_blocking=True)


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


# --- synthetic ----------------------------------------------------------------------------------
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


# --- real data sets -----------------------------------------------------------------------------
def _load_mnist_like(cls_name: str, dataset: str) -> Callable[[Path, bool], tuple[Tensor, ...]]:
    """torchvision's MNIST / FashionMNIST, read through their ``.data`` / ``.targets`` (no PIL)."""

    def load(data_dir: Path, download: bool) -> tuple[Tensor, ...]:
        import torchvision.datasets as tvd

        raw = data_dir / cls_name / "raw"
        _gunzip_missing(raw, _MNIST_FILES)  # torchvision reads only the uncompressed files
        try:
            parts = [getattr(tvd, cls_name)(str(data_dir), train=t, download=download) for t in (True, False)]
        except RuntimeError as err:
            if download:
                raise
            raise DataMissingError(
                f"dataset {dataset!r} not found: expected {', '.join(_MNIST_FILES)} (or the same with .gz) "
                f"in {raw.resolve()}; drop --no-download to fetch them"
            ) from err
        (tr, te) = parts
        return (
            tr.data[:, None].contiguous(),
            tr.targets.long(),
            te.data[:, None].contiguous(),
            te.targets.long(),
        )

    return load


def _gunzip_missing(folder: Path, names: tuple[str, ...]) -> None:
    """Decompress ``name.gz`` where ``name`` is missing (e.g. files copied by hand from a mirror)."""
    for name in names:
        target, packed = folder / name, folder / f"{name}.gz"
        if not target.exists() and packed.exists():
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)  # atomic: concurrent trials may share the data folder


def _load_cifar10(data_dir: Path, download: bool) -> tuple[Tensor, ...]:
    """CIFAR-10 python pickles in ``<data_dir>/cifar-10-batches-py``.

    torchvision downloads and md5-checks the archive; the pickles are then read here, because
    torchvision md5-hashes all 180 MB on every construction, which every sweep trial would pay.
    """
    folder = data_dir / "cifar-10-batches-py"
    missing = [f for f in _CIFAR_FILES if not (folder / f).is_file()]
    if missing and not download:
        raise DataMissingError(
            f"dataset 'cifar10' not found: expected {', '.join(_CIFAR_FILES)} in {folder.resolve()} "
            f"(missing {', '.join(missing)}); drop --no-download to fetch them"
        )
    if missing:
        import torchvision.datasets as tvd

        tvd.CIFAR10(str(data_dir), train=True, download=True)

    def read(names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.extend(entry["labels"])
        return torch.from_numpy(np.concatenate(xs)), torch.tensor(ys, dtype=torch.long)

    return (*read(_CIFAR_FILES[:5]), *read(("test_batch",)))


def _load_tinyimagenet(data_dir: Path, download: bool) -> tuple[Tensor, ...]:
    """TinyImageNet from the standard ``tiny-imagenet-200`` folder, downloaded from
    http://cs231n.stanford.edu/tiny-imagenet-200.zip when ``download`` is set.

    Layout: ``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` with labels in
    ``val/val_annotations.txt``. The official val split is our test set (the official test set has
    no labels). Labels are positions in the sorted wnids (the ``ImageFolder`` convention). Decoding
    110k JPEGs takes a minute, so the uint8 tensors are cached next to the images.
    """
    root = data_dir / "tiny-imagenet-200"
    needed = [
        root / "wnids.txt",
        root / "train",
        root / "val" / "images",
        root / "val" / "val_annotations.txt",
    ]
    if not all(p.exists() for p in needed):
        if not download:
            raise DataMissingError(
                f"dataset 'tinyimagenet' not found: expected wnids.txt, train/<wnid>/images/, val/images/ and "
                f"val/val_annotations.txt in {root.resolve()}; drop --no-download to fetch {TINYIMAGENET_URL}"
            )
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(TINYIMAGENET_URL, download_root=str(data_dir))
    wnids = sorted((root / "wnids.txt").read_text().split())
    label = {w: i for i, w in enumerate(wnids)}
    train = sorted(
        p for p in (root / "train").glob("*/images/*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")
    )
    lines = (root / "val" / "val_annotations.txt").read_text().splitlines()
    annotations = [line.split("\t")[:2] for line in lines if line.strip()]
    val = [(root / "val" / "images" / name, wnid) for name, wnid in sorted(annotations)]
    try:
        y_tr = torch.tensor([label[p.parent.parent.name] for p in train], dtype=torch.long)
        y_te = torch.tensor([label[wnid] for _, wnid in val], dtype=torch.long)
    except KeyError as err:
        raise ValueError(
            f"tinyimagenet: class {err.args[0]!r} is not listed in {root / 'wnids.txt'}"
        ) from err

    cache = root / "acert-uint8.pt"
    if cache.is_file():
        cached = torch.load(cache, weights_only=True)
        if len(cached["y_train"]) == len(train) and len(cached["y_test"]) == len(val):
            return cached["x_train"], cached["y_train"], cached["x_test"], cached["y_test"]
    x_tr, x_te = (
        _read_images(train, root / "train"),
        _read_images([p for p, _ in val], root / "val" / "images"),
    )
    tmp = root / f".acert-uint8.{os.getpid()}.tmp"
    try:
        torch.save({"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}, tmp)
        os.replace(tmp, cache)
    except OSError as err:  # a read-only data volume: still usable, only slower to load
        tmp.unlink(missing_ok=True)
        warnings.warn(f"tinyimagenet: could not write the cache {cache}: {err}", stacklevel=2)
    return x_tr, y_tr, x_te, y_te


def _read_images(paths: list[Path], where: Path) -> Tensor:
    """Decode RGB images into a uint8 [N, 3, H, W] tensor; PIL releases the GIL, so threads help."""
    from PIL import Image

    def read(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(read, paths))
    if not arrays:
        raise ValueError(f"no images found in {where}")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images in {where} differ in size: {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


_LOADERS: dict[str, Callable[[Path, bool], tuple[Tensor, ...]]] = {
    "mnist": _load_mnist_like("MNIST", "mnist"),
    "fashion-mnist": _load_mnist_like("FashionMNIST", "fashion-mnist"),
    "cifar10": _load_cifar10,
    "tinyimagenet": _load_tinyimagenet,
}
