"""Contract suite over every registered model, IBP initialisation, checkpoints and device choice."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainers import models
from trainers.data import DATASETS
from trainers.models import MODELS, Normalize, build_model, ibp_init, load_model, pick_device, save_checkpoint

ALLOWED = (Normalize, nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.Flatten, nn.Linear)
SMALL = {"mlp_tiny": None, "cnn_tiny": None, "cnn_small": 4, "cnn7": 4}  # widths that keep tests fast


def small_model(name: str, shape=(3, 8, 8), num_classes: int = 5) -> nn.Sequential:
    c = shape[0]
    return build_model(
        name, input_shape=shape, num_classes=num_classes, mean=(0.5,) * c, std=(0.25,) * c, width=SMALL[name]
    )


def test_suite_covers_every_registered_model():
    assert set(SMALL) == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_contract(name):
    model = small_model(name)
    assert isinstance(model, nn.Sequential) and isinstance(model[0], Normalize)
    assert all(type(m) in ALLOWED for m in model), [type(m).__name__ for m in model]
    assert isinstance(model[-1], nn.Linear) and model[-1].out_features == 5
    assert not any(getattr(m, "inplace", False) for m in model)
    out = model.train()(torch.rand(4, 3, 8, 8))  # BatchNorm needs > 1 sample in train mode
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    out.sum().backward()


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "tinyimagenet"])
def test_cnn7_fits_the_paper_data_sets(dataset):
    spec = DATASETS[dataset]
    model = build_model(
        "cnn7",
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        mean=spec.mean,
        std=spec.std,
        width=2,
    )
    assert model.eval()(torch.rand(2, *spec.input_shape)).shape == (2, spec.num_classes)
    # Shi et al.: one stride-2 layer on 28/32 pixels, two on TinyImageNet's 64 (32768 = 16*16*128 at width 64)
    strides = [m.stride[0] for m in model if isinstance(m, nn.Conv2d)]
    assert strides == ([1, 1, 2, 1, 2] if dataset == "tinyimagenet" else [1, 1, 2, 1, 1])


def test_published_sizes_at_default_width():
    spec = DATASETS["cifar10"]
    cnn7 = build_model("cnn7", input_shape=(3, 32, 32), num_classes=10, mean=spec.mean, std=spec.std)
    linears = [m for m in cnn7 if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16 * 16 * 128, 512), (512, 10)]
    small = build_model("cnn_small", input_shape=(1, 28, 28), num_classes=10, mean=(0.1,), std=(0.3,))
    assert [m.out_channels for m in small if isinstance(m, nn.Conv2d)] == [16, 32]
    assert [(m.in_features, m.out_features) for m in small if isinstance(m, nn.Linear)] == [
        (1568, 100),
        (100, 10),
    ]


def test_normalize_is_per_channel():
    norm = Normalize((0.1, 0.5), (0.2, 0.25))
    x = torch.rand(3, 2, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.1) / 0.2, (x[:, 1] - 0.5) / 0.25], 1)
    torch.testing.assert_close(norm(x), expected)
    assert norm.mean.shape == norm.std.shape == (1, 2, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"name": "resnet"}, "known models: cnn7, cnn_small, cnn_tiny, mlp_tiny"),
     ({"mean": (0.5,)}, r"mean=\(0.5,\)"),
     ({"width": 0}, "width=0"),
     ({"num_classes": 1}, "num_classes=1"),
     ({"name": "cnn_small", "input_shape": (3, 2, 2)}, r"input_shape=\(3, 2, 2\)")],
)  # fmt: skip
def test_bad_arguments_name_the_value(kwargs, match):
    args = {
        "name": "mlp_tiny",
        "input_shape": (3, 8, 8),
        "num_classes": 5,
        "mean": (0.5,) * 3,
        "std": (0.2,) * 3,
    }
    with pytest.raises(ValueError, match=match):
        build_model(**{**args, **kwargs})


def test_ibp_init_draws_the_stated_std_except_for_the_last_layer():
    torch.manual_seed(0)
    model = build_model(
        "cnn7", input_shape=(3, 16, 16), num_classes=10, mean=(0.5,) * 3, std=(0.2,) * 3, width=16
    )
    layers = [m for m in model if isinstance(m, nn.Conv2d | nn.Linear)]
    before_last = layers[-1].weight.clone()
    biases = [m.bias.clone() for m in layers]
    ibp_init(model)
    for m in layers[:-1]:
        fan_in = m.weight[0].numel()
        expected = math.sqrt(2 * math.pi) / fan_in
        tol = 4 / math.sqrt(2 * m.weight.numel())  # 4 standard errors of a sample std
        assert abs(m.weight.std().item() / expected - 1) < tol, (m, m.weight.std().item(), expected)
        assert abs(m.weight.mean().item()) < 4 * expected / math.sqrt(m.weight.numel())
    # Shi et al.'s code leaves the last layer and all biases untouched.
    assert torch.equal(layers[-1].weight, before_last)
    assert all(torch.equal(m.bias, b) for m, b in zip(layers, biases))
    # PyTorch's default (std 1 / sqrt(3 * fan_in)) is 10x larger for the 2048-input linear layer
    assert layers[-2].in_features == 2048 and layers[-2].weight.std() < 0.2 / math.sqrt(3 * 2048)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = small_model("cnn_tiny")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # move BatchNorm running statistics and weights away from their initial values
        opt.zero_grad()
        model(torch.rand(8, 3, 8, 8)).pow(2).mean().backward()
        opt.step()
    model.eval()
    path = tmp_path / "run" / "model.pt"
    config = {"dataset": "synthetic", "cert_eps": [0.05, 0.1], "extra": {"note": None}}
    save_checkpoint(path, model, arch="cnn_tiny", input_shape=(3, 8, 8), num_classes=5, mean=(0.5,) * 3,
                    std=(0.25,) * 3, width=None, config=config, extra={"epoch": 7, "val_acr": 0.12})  # fmt: skip
    loaded, meta = load_model(path)
    x = torch.rand(6, 3, 8, 8)
    assert not loaded.training
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert meta["config"] == config and meta["epoch"] == 7 and meta["arch"] == "cnn_tiny"
    assert meta["input_shape"] == [3, 8, 8] and "state_dict" not in meta
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_checkpoint_rejects_non_plain_metadata_before_writing(tmp_path):
    model = small_model("mlp_tiny")
    args = {
        "arch": "mlp_tiny",
        "input_shape": (3, 8, 8),
        "num_classes": 5,
        "mean": (0.5,) * 3,
        "std": (0.25,) * 3,
    }
    with pytest.raises(ValueError, match=r"checkpoint.config.path=.*PosixPath"):
        save_checkpoint(tmp_path / "m.pt", model, **args, width=None, config={"path": tmp_path})
    with pytest.raises(ValueError, match="clash"):
        save_checkpoint(tmp_path / "m.pt", model, **args, width=None, config={}, extra={"arch": "x"})
    assert not list(tmp_path.iterdir())


def test_load_model_rejects_foreign_files(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="missing state_dict"):
        load_model(tmp_path / "other.pt")


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(models.torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="'tpu'.*auto, cpu, cuda"):
        pick_device("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_models_and_checkpoints_on_cuda(tmp_path):
    model = small_model("cnn7").cuda().eval()
    x = torch.rand(4, 3, 8, 8, device="cuda")
    save_checkpoint(tmp_path / "m.pt", model, arch="cnn7", input_shape=(3, 8, 8), num_classes=5, mean=(0.5,) * 3,
                    std=(0.25,) * 3, width=4, config={})  # fmt: skip
    loaded, _ = load_model(tmp_path / "m.pt", map_location="cuda")
    assert next(loaded.parameters()).is_cuda
    torch.testing.assert_close(loaded(x), model(x))
