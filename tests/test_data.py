"""Data loading on tiny on-disk copies of each format, the validation split and batching."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from trainers.data import (
    DATASETS,
    DataMissingError,
    augment_batch,
    iterate_batches,
    load_splits,
    make_synthetic,
)
from trainers.models import build_model

N_TRAIN, N_TEST = 40, 12


def fake_images(n: int, shape: tuple[int, ...], split_code: int) -> np.ndarray:
    """Images that carry their identity: pixel 0 = index, pixel 1 = split code (1 train, 2 test)."""
    rng = np.random.default_rng(split_code)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = x.reshape(n, -1)
    flat[:, 0], flat[:, 1] = np.arange(n), split_code
    return x


def identity(x: torch.Tensor) -> tuple[list[int], list[int]]:
    flat = x.reshape(len(x), -1)
    return flat[:, 0].tolist(), flat[:, 1].tolist()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist(root: Path, folder: str, gz: bool) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": fake_images(N_TRAIN, (28, 28), 1),
        "train-labels-idx1-ubyte": np.arange(N_TRAIN) % 10,
        "t10k-images-idx3-ubyte": fake_images(N_TEST, (28, 28), 2),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST) * 3) % 10,
    }
    for name, array in arrays.items():
        write_idx(raw / name, array, gz)
    return arrays


@pytest.mark.parametrize(
    ("dataset", "folder", "gz"), [("mnist", "MNIST", False), ("fashion-mnist", "FashionMNIST", True)]
)
def test_mnist_formats_load_with_a_disjoint_seeded_validation_split(tmp_path, dataset, folder, gz):
    arrays = write_mnist(tmp_path, folder, gz)
    s = load_splits(dataset, data_dir=str(tmp_path), download=False, val_fraction=0.25, seed=3)
    assert s.spec is DATASETS[dataset]
    assert s.x_train.shape == (30, 1, 28, 28) and s.x_val.shape == (10, 1, 28, 28)
    assert s.x_test.shape == (N_TEST, 1, 28, 28) and s.x_train.dtype == torch.uint8
    assert s.y_train.dtype == torch.int64
    torch.testing.assert_close(s.x_test[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert s.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()

    train_ids, train_codes = identity(s.x_train)
    val_ids, val_codes = identity(s.x_val)
    assert set(train_codes) == set(val_codes) == {1}  # validation comes from the training set only
    assert sorted(train_ids + val_ids) == list(range(N_TRAIN))  # disjoint and complete
    assert s.y_train.tolist() == [i % 10 for i in train_ids]  # labels follow their images

    again = load_splits(dataset, data_dir=str(tmp_path), download=False, val_fraction=0.25, seed=3)
    other = load_splits(dataset, data_dir=str(tmp_path), download=False, val_fraction=0.25, seed=4)
    assert identity(again.x_val)[0] == val_ids
    assert identity(other.x_val)[0] != val_ids

    small = load_splits(
        dataset, data_dir=str(tmp_path), download=False, val_fraction=0.25, seed=3, train_subset=7
    )
    assert identity(small.x_train)[0] == train_ids[:7] and identity(small.x_val)[0] == val_ids


def write_cifar(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        x = fake_images(8, (3, 32, 32), 1)
        x.reshape(8, -1)[:, 0] += 8 * (i - 1)  # unique ids across batches
        batch = {"data": x.reshape(8, -1), "labels": [(j + i) % 10 for j in range(8)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {
        "data": fake_images(N_TEST, (3, 32, 32), 2).reshape(N_TEST, -1),
        "labels": [i % 10 for i in range(N_TEST)],
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def test_cifar10_pickles_load_in_chw_order(tmp_path):
    write_cifar(tmp_path)
    s = load_splits("cifar10", data_dir=str(tmp_path), download=False, val_fraction=0.1, seed=0)
    assert s.x_train.shape == (36, 3, 32, 32) and s.x_val.shape == (4, 3, 32, 32)
    ids, codes = identity(torch.cat([s.x_train, s.x_val]))
    assert sorted(ids) == list(range(40)) and set(codes) == {1}
    # Sample with id k came from batch k // 8 + 1 at row k % 8, labelled (row + batch) % 10.
    assert s.y_train.tolist() == [(k % 8 + k // 8 + 1) % 10 for k in identity(s.x_train)[0]]
    expected = torch.from_numpy(fake_images(N_TEST, (3, 32, 32), 2))
    assert torch.equal(s.x_test, expected) and s.y_test.tolist() == [i % 10 for i in range(N_TEST)]


def write_tinyimagenet(root: Path) -> dict[str, int]:
    from PIL import Image

    base = root / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]  # deliberately unsorted: labels follow the sorted order
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colour = {w: 40 * (i + 1) for i, w in enumerate(sorted(wnids))}
    for w in wnids:
        (base / "train" / w / "images").mkdir(parents=True)
        for k in range(2):
            img = np.full((64, 64, 3), colour[w], dtype=np.uint8)
            Image.fromarray(img).save(base / "train" / w / "images" / f"{w}_{k}.png")
    lines = []
    for k, w in enumerate(wnids * 2):
        Image.fromarray(np.full((64, 64), colour[w], dtype=np.uint8)).save(
            base / "val" / "images" / f"val_{k}.png"
        )
        lines.append(f"val_{k}.png\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return colour


def test_tinyimagenet_folder_loads_labels_by_sorted_wnid_and_caches(tmp_path):
    colour = write_tinyimagenet(tmp_path)
    s = load_splits("tinyimagenet", data_dir=str(tmp_path), download=False, val_fraction=0.0)
    assert s.x_train.shape == (6, 3, 64, 64) and s.x_test.shape == (6, 3, 64, 64) and len(s.x_val) == 0
    label_colour = {i: colour[w] for i, w in enumerate(sorted(colour))}
    for x, y in [(s.x_train, s.y_train), (s.x_test, s.y_test)]:
        # greyscale val images become RGB; each image's colour identifies its class
        assert torch.equal(x, x[:, :1, :1, :1].expand_as(x))
        assert x[:, 0, 0, 0].tolist() == [label_colour[int(c)] for c in y]
    assert (tmp_path / "tiny-imagenet-200" / "acert-uint8.pt").is_file()
    cached = load_splits("tinyimagenet", data_dir=str(tmp_path), download=False, val_fraction=0.0)
    assert torch.equal(cached.x_test, s.x_test) and torch.equal(cached.y_train, s.y_train)


@pytest.mark.parametrize(
    ("dataset", "folder"),
    [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py"),
     ("tinyimagenet", "tiny-imagenet-200")],
)  # fmt: skip
def test_missing_data_without_download_names_the_folder(tmp_path, dataset, folder):
    with pytest.raises(DataMissingError, match="no-download") as err:
        load_splits(dataset, data_dir=str(tmp_path), download=False)
    assert str(tmp_path / folder) in str(err.value) and "\n" not in str(err.value)


def unreachable_sources(monkeypatch, where: Path) -> None:
    """Every download source a ``file://`` URL of a missing folder: the fetch fails at once and
    the same way everywhere, with or without a network."""
    import torchvision.datasets as tvd

    from trainers.data import loaders

    url = (where / "no-mirror").as_uri()
    for cls in (tvd.MNIST, tvd.FashionMNIST):
        monkeypatch.setattr(cls, "mirrors", [url + "/"])
    monkeypatch.setattr(tvd.CIFAR10, "url", f"{url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(loaders, "TINYIMAGENET_URL", f"{url}/tiny-imagenet-200.zip")


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "cifar10", "tinyimagenet"])
def test_a_failed_download_is_one_line_and_removes_what_it_created(tmp_path, monkeypatch, dataset):
    unreachable_sources(monkeypatch, tmp_path)
    data_dir = tmp_path / "new" / "data"  # neither folder exists yet
    with pytest.raises(DataMissingError) as err:
        load_splits(dataset, data_dir=str(data_dir), download=True)
    message = str(err.value)
    assert "\n" not in message and f"dataset {dataset!r}" in message and str(data_dir) in message
    assert "download" in message and "no-mirror" in message  # where it tried
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_download_into_an_existing_folder_keeps_what_was_there(tmp_path, monkeypatch):
    unreachable_sources(monkeypatch, tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("kept")
    (tmp_path / "MNIST").mkdir()
    (tmp_path / "MNIST" / "mine").write_text("kept")
    with pytest.raises(DataMissingError, match="download"):
        load_splits("mnist", data_dir=str(tmp_path), download=True)
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert after == ["MNIST", "MNIST/mine", "notes.txt"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"dataset": "svhn"}, "cifar10, fashion-mnist, mnist, synthetic, synthetic-tradeoff, tinyimagenet"),
     ({"dataset": "synthetic", "val_fraction": 1.0}, "val_fraction=1.0"),
     ({"dataset": "synthetic", "train_subset": 0}, "train_subset=0")],
)  # fmt: skip
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_splits(**kwargs)


def test_synthetic_is_deterministic_in_range_and_nearest_mean_separable():
    a = load_splits("synthetic", seed=1)
    b = load_splits("synthetic", seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    c = load_splits("synthetic", seed=2)
    assert torch.equal(a.x_test, c.x_test) and not torch.equal(a.x_val, c.x_val)  # same task, new split
    assert a.x_train.dtype == torch.float32 and 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    assert len(a.y_train) + len(a.y_val) == 2048 and len(a.y_test) == 512
    assert torch.bincount(a.y_test).tolist() == [128] * 4

    # The best linear rule between class means: its accuracy and l_inf distance to the boundary.
    means = torch.stack([a.x_train[a.y_train == k].flatten(1).mean(0) for k in range(4)])
    x, y = a.x_test.flatten(1), a.y_test
    scores = x @ means.T - 0.5 * (means**2).sum(1)
    assert (scores.argmax(1) == y).float().mean() > 0.99
    other = scores.clone()
    other[torch.arange(len(y)), y] = -torch.inf
    j = other.argmax(1)
    radius = (scores[torch.arange(len(y)), y] - other.max(1).values) / (means[y] - means[j]).abs().sum(1)
    assert radius.median() > 0.15  # certified radii of 0.05-0.1 are within reach


def test_synthetic_is_learnt_by_mlp_tiny_in_two_epochs():
    torch.manual_seed(0)
    s = load_splits("synthetic")
    model = build_model(
        "mlp_tiny", input_shape=s.spec.input_shape, num_classes=4, mean=s.spec.mean, std=s.spec.std
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        for xb, yb in iterate_batches(s.x_train, s.y_train, 64, shuffle=True, generator=g, device="cpu"):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    with torch.no_grad():
        assert (model(s.x_test).argmax(1) == s.y_test).float().mean() > 0.9


def test_synthetic_tradeoff_makes_accuracy_and_robustness_trade_off(tmp_path):
    """The demo's data set: standard training is accurate and barely robust, certified
    training at the data set's radius is robust and loses the swapped samples' accuracy, and
    ACERT's loss mixing kappa moves between the two (measured: 0.87 / 0.027 at kappa 0.9, 0.78 /
    0.066 at kappa 0)."""
    from trainers.config import TrainConfig
    from trainers.train import run_training

    out = {}
    for name, method, kappa in (("standard", "standard", 0.0), ("ibp", "ibp", 0.0), ("acert-0.9", "acert", 0.9),
                                ("acert-0", "acert", 0.0)):  # fmt: skip
        cfg = TrainConfig.from_dict({
            "method": method, "dataset": "synthetic-tradeoff", "synthetic_size": 8192, "epochs": 4,
            "std_epochs": 1, "ramp_epochs": 2, "lr": 3e-3, "val_acr_samples": 300, "device": "cpu",
            "threads": 1, "eval_test_at_end": False,
            **({"kappa": kappa, "kappa_final": kappa} if method != "standard" else {}),
        })  # fmt: skip
        out[name] = run_training(cfg, output_dir=tmp_path / name, log=lambda _m: None)
    acc = {k: v["val_acc"] for k, v in out.items()}
    acr = {k: v["val_acr"] for k, v in out.items()}
    assert acc["standard"] >= 0.9 and acc["ibp"] <= 0.82, acc
    assert acr["ibp"] >= 3 * acr["standard"] and acr["ibp"] >= 0.05, acr
    # ACERT trades too: more standard loss, more accuracy, less ACR
    assert acc["acert-0.9"] >= acc["acert-0"] + 0.05 and acr["acert-0"] >= 1.5 * acr["acert-0.9"], (acc, acr)


def test_synthetic_tradeoff_codes_the_class_faintly_and_swaps_some_prototypes():
    x, y, _, _ = make_synthetic(4000, 8, faint=0.08, swapped=0.3, noise=0.0)
    flat = x.flatten(1)
    code, body = flat[:, -32:], flat[:, :-32]  # the code on the last half of the 64 pixels
    assert torch.allclose((code - 0.5).abs(), torch.full_like(code, 0.08), atol=1e-6)
    codes = torch.stack([code[y == k][0] for k in range(4)])
    assert torch.equal(code, codes[y]) and len({tuple(c.tolist()) for c in codes}) == 4  # the class's own
    protos = torch.stack([body[(y == k)].mode(0).values for k in range(4)])
    shown = (body[:, None, :] - protos[None]).abs().sum(-1).argmin(1)
    assert 0.27 < (shown != y).float().mean() < 0.33  # 30 % show another class's prototype


def test_the_code_amplitude_can_vary_per_sample():
    x, y, _, _ = make_synthetic(4000, 8, faint=(0.0, 0.1), swapped=0.2, noise=0.0)
    code = x.flatten(1)[:, -32:]
    amp = (code - 0.5).abs()
    assert torch.allclose(amp, amp[:, :1].expand_as(amp), atol=1e-6)  # one amplitude per sample
    assert (
        float(amp.min()) < 0.005 and float(amp.max()) > 0.095 and abs(float(amp[:, 0].mean()) - 0.05) < 0.005
    )
    codes = torch.stack([torch.sign(code[y == k][amp[y == k][:, 0] > 0.01][0] - 0.5) for k in range(4)])
    strong = amp[:, 0] > 0.01
    assert torch.equal(torch.sign(code[strong] - 0.5), codes[y[strong]])  # the sample's own class's code


def test_make_synthetic_rejects_too_small_shapes():
    with pytest.raises(ValueError, match=r"shape=\(1, 1, 2\)"):
        make_synthetic(16, 4, num_classes=8, shape=(1, 1, 2))


def test_iterate_batches_covers_each_sample_once_and_is_reproducible():
    x = torch.arange(23 * 4, dtype=torch.uint8).view(23, 1, 2, 2)
    y = torch.arange(23)

    def epoch(seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return list(iterate_batches(x, y, 5, shuffle=True, generator=g, device="cpu"))

    batches = epoch(0)
    assert [len(b) for _, b in batches] == [5, 5, 5, 5, 3]
    seen = torch.cat([b for _, b in batches])
    assert sorted(seen.tolist()) == list(range(23)) and seen.tolist() != list(range(23))
    xs = torch.cat([a for a, _ in batches])
    assert xs.dtype == torch.float32 and torch.allclose(xs, x[seen].float() / 255)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, epoch(0)))
    ordered = list(iterate_batches(x, y, 10, shuffle=False, generator=None, device="cpu"))
    assert torch.cat([b for _, b in ordered]).tolist() == list(range(23))


def test_augmentation_is_a_padded_crop_or_its_mirror():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32) * 0.9 + 0.05  # no zeros, so the padding is recognisable
    out = augment_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 1.0
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips, shifted = set(), set()
    for i in range(len(x)):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(
                out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy : dy + 32, dx : dx + 32])
            )
        ]
        assert len(matches) == 1, f"sample {i} is not a single crop of its padded input"
        flips.add(matches[0][2])
        shifted.add((matches[0][0], matches[0][1]) != (4, 4))
    assert flips == {False, True} and True in shifted  # both occur among 16 samples
    again = augment_batch(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_on_cuda_equal_those_on_cpu():
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(10)

    def epoch(device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(5)
        return list(iterate_batches(x, y, 4, shuffle=True, generator=g, device=device, augment=True))

    for (xc, yc), (xg, yg) in zip(epoch("cpu"), epoch("cuda")):
        assert xg.is_cuda and torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())
