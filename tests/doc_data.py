"""Small, learnable copies of the downloadable data sets, in the layouts their real loaders read.

The documented commands run on mnist, fashion-mnist, cifar10 and tinyimagenet, which cannot be
downloaded in the tests. ``write_all(root)`` writes each in the torchvision layout that
``trainers.data`` reads with ``--no-download`` (the IDX and pickle writers of
``tests/test_data.py``). Unlike ``test_data.py``'s copies, which carry their indices to check the
splits, these are learnable: class ``k`` is a bright band at rows ``3k``..``3k+2`` over noise, so
one epoch on a few hundred images reaches the documented targets (0.7 to 0.85 clean accuracy)
and a sweep has winners to register and re-check. Fashion-MNIST, which the documented sweeps
with targets re-checked afterwards use (on ``cnn_small``), gets enough images for ~30 steps of one
epoch; the data sets whose default model is CNN7 get few, since only their commands' exit status and
artifacts matter, not their accuracy.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from tests.test_data import write_idx

N_TRAIN = {"MNIST": 160, "FashionMNIST": 4096, "cifar10": 160}
N_TEST = 50
TINY_CLASSES, TINY_PER_CLASS, TINY_VAL_PER_CLASS = 4, 16, 5


def learnable_images(
    n: int, shape: tuple[int, ...], classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images of ``shape`` (channels first or HxW) and their labels (0..classes-1,
    balanced): low noise everywhere, a band of 255 at rows 3k..3k+2 for class k."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    x = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    rows = x.reshape(n, -1, shape[-2], shape[-1])
    for i, k in enumerate(labels):
        band = 3 * int(k) % (shape[-2] - 2)
        rows[i, :, band : band + 3, :] = 255
    return x, labels.astype(np.uint8)


def write_mnist_like(root: Path, folder: str) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    x, y = learnable_images(N_TRAIN[folder], (28, 28), 10, seed=1)
    xt, yt = learnable_images(N_TEST, (28, 28), 10, seed=2)
    for name, array in (
        ("train-images-idx3-ubyte", x),
        ("train-labels-idx1-ubyte", y),
        ("t10k-images-idx3-ubyte", xt),
        ("t10k-labels-idx1-ubyte", yt),
    ):
        write_idx(raw / name, array, gz=False)


def write_cifar10(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per_batch = N_TRAIN["cifar10"] // 5
    for i in range(1, 6):
        x, y = learnable_images(per_batch, (3, 32, 32), 10, seed=10 + i)
        batch = {"data": x.reshape(per_batch, -1), "labels": y.tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    xt, yt = learnable_images(N_TEST, (3, 32, 32), 10, seed=20)
    test = {"data": xt.reshape(N_TEST, -1), "labels": yt.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def write_tinyimagenet(root: Path) -> None:
    """A few of the 200 classes (the loader labels what wnids.txt lists), as PNG files."""
    from PIL import Image

    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    wnids = [f"n{k:08d}" for k in range(TINY_CLASSES)]
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    n = TINY_CLASSES * TINY_PER_CLASS
    x, y = learnable_images(n, (3, 64, 64), TINY_CLASSES, seed=30)
    for i, (img, k) in enumerate(zip(x, y, strict=True)):
        folder = base / "train" / wnids[k] / "images"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{wnids[k]}_{i}.png")
    xv, yv = learnable_images(TINY_CLASSES * TINY_VAL_PER_CLASS, (3, 64, 64), TINY_CLASSES, seed=31)
    lines = []
    for i, (img, k) in enumerate(zip(xv, yv, strict=True)):
        Image.fromarray(img.transpose(1, 2, 0)).save(base / "val" / "images" / f"val_{i}.png")
        lines.append(f"val_{i}.png\t{wnids[k]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def write_all(root: Path) -> Path:
    """Every downloadable data set under ``root`` (a ``--data-dir``); returns ``root``."""
    write_mnist_like(root, "MNIST")
    write_mnist_like(root, "FashionMNIST")
    write_cifar10(root)
    write_tinyimagenet(root)
    return root
