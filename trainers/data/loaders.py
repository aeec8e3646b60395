"""Loaders of the real data sets, through torchvision (what users run; tests feed them small
IDX / pickle / JPEG files they write themselves)."""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import shutil
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainers.data.spec import DataMissingError

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


def mnist_like(cls_name: str, dataset: str) -> Callable[[Path, bool, int], tuple[Tensor, ...]]:
    """torchvision's MNIST / FashionMNIST, read through their ``.data`` / ``.targets`` (no PIL)."""

    def load(data_dir: Path, download: bool, size: int = 0) -> tuple[Tensor, ...]:
        import torchvision.datasets as tvd

        raw = data_dir / cls_name / "raw"
        _gunzip_missing(raw, _MNIST_FILES)  # torchvision reads only the uncompressed files
        if download and not all((raw / name).is_file() for name in _MNIST_FILES):
            with fetching(dataset, data_dir, [data_dir / cls_name]):
                getattr(tvd, cls_name)(str(data_dir), train=True, download=True)  # all four files
        try:
            parts = [getattr(tvd, cls_name)(str(data_dir), train=t, download=False) for t in (True, False)]
        except RuntimeError as err:
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


@contextlib.contextmanager
def fetching(dataset: str, data_dir: Path, paths: list[Path]) -> Iterator[None]:
    """Around a download into ``data_dir`` that writes ``paths`` (folders and archives): if it
    fails, what it created is removed (the folders it made up to ``data_dir``'s first missing
    parent, the new files in ``paths``) and the failure is one :class:`DataMissingError` line
    naming the data set, the folder and the cause, which the sweep's preflight turns into exit 2."""
    top = next((p for p in reversed([data_dir, *data_dir.parents]) if not p.exists()), None)
    before = {p: set(p.rglob("*")) if p.is_dir() else set() for p in paths if p.exists()}
    try:
        yield
    except Exception as err:
        if top is not None:
            shutil.rmtree(top, ignore_errors=True)
        for p in paths:
            if p not in before:
                created = {p}
            else:  # it was there: only what is new inside it goes
                created = set(p.rglob("*")) - before[p] if p.is_dir() else set()
            for new in sorted(created, reverse=True):  # deepest first
                if new.is_dir() and not new.is_symlink():
                    shutil.rmtree(new, ignore_errors=True)
                else:
                    new.unlink(missing_ok=True)
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        cause = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
        raise DataMissingError(
            f"dataset {dataset!r}: download into {data_dir.resolve()} failed ({cause}); "
            "check the network, or put the files there yourself"
        ) from err


def _gunzip_missing(folder: Path, names: tuple[str, ...]) -> None:
    """Decompress ``name.gz`` where ``name`` is missing (e.g. files copied by hand from a mirror)."""
    for name in names:
        target, packed = folder / name, folder / f"{name}.gz"
        if not target.exists() and packed.exists():
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)  # atomic: concurrent trials may share the data folder


def load_cifar10(data_dir: Path, download: bool, size: int = 0) -> tuple[Tensor, ...]:
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

        with fetching("cifar10", data_dir, [folder, data_dir / tvd.CIFAR10.filename]):
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


def load_tinyimagenet(data_dir: Path, download: bool, size: int = 0) -> tuple[Tensor, ...]:
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

        with fetching("tinyimagenet", data_dir, [root, data_dir / TINYIMAGENET_URL.rsplit("/", 1)[-1]]):
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
