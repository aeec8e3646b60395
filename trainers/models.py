"""Model registry, IBP initialisation, checkpoints and device choice.

Every model is an ``nn.Sequential`` of Normalize, Conv2d, BatchNorm2d, BatchNorm1d, ReLU, Flatten
and Linear layers, ending in a Linear layer. The restriction is what keeps the bound engine small:
it propagates intervals layer by layer through exactly these types, and folds the margin
specification C into the last Linear layer (W' = C W, b' = C b), which is tighter than applying C
after that layer's interval. Normalisation is the first layer, so the inputs, and every
perturbation radius, are in [0, 1] pixel units.

A new architecture is one function decorated with ``@register_model``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainers.registry import Registry

ALLOWED_LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.Flatten, nn.Linear)


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers shaped [1, C, 1, 1] so they move with the model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"Normalize needs one positive std per mean, got mean={mean!r}, std={std!r}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# A factory gets (input_shape, num_classes, width) and returns the layers after Normalize.
ModelFactory = Callable[[tuple[int, int, int], int, int | None], list[nn.Module]]
MODELS: Registry[ModelFactory] = Registry("model")


def register_model(fn: ModelFactory) -> ModelFactory:
    """Register ``fn`` under its function name."""
    return MODELS.register(fn.__name__, fn)


def build_model(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    width: int | None = None,
) -> nn.Sequential:
    """Build a registered model; ``width`` scales its channels / hidden units (None: the published size)."""
    factory = MODELS.get(name)
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape={tuple(input_shape)!r} must be (C, H, W) with positive sizes")
    if len(mean) != shape[0]:
        raise ValueError(f"mean={tuple(mean)!r} needs one value per channel of input_shape={shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be >= 2")
    if width is not None and width < 1:
        raise ValueError(f"width={width!r} must be >= 1 (or None for the default)")
    model = nn.Sequential(Normalize(mean, std), *factory(shape, num_classes, width))  # type: ignore[arg-type]
    assert isinstance(model[-1], nn.Linear) and all(isinstance(m, ALLOWED_LAYERS) for m in model[1:]), name
    return model


def _conv_out(size: int, kernel: int, stride: int, padding: int, shape: tuple[int, ...]) -> int:
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"input_shape={shape!r} is too small for this model's convolutions")
    return out


def _conv_block(c_in: int, c_out: int, k: int, s: int, p: int, bn: bool) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, k, stride=s, padding=p),
        *([nn.BatchNorm2d(c_out)] if bn else []),
        nn.ReLU(),
    ]


@register_model
def mlp_tiny(shape: tuple[int, int, int], num_classes: int, width: int | None) -> list[nn.Module]:
    """Two hidden layers of 32 units: fast enough for unit tests and the synthetic data set."""
    w = width or 32
    return [
        nn.Flatten(),
        nn.Linear(math.prod(shape), w),
        nn.ReLU(),
        nn.Linear(w, w),
        nn.ReLU(),
        nn.Linear(w, num_classes),
    ]


@register_model
def cnn_tiny(shape: tuple[int, int, int], num_classes: int, width: int | None) -> list[nn.Module]:
    """Padding, stride and both BatchNorm kinds in a few hundred parameters, for tests."""
    w = width or 4
    h, wd = (_conv_out(_conv_out(d, 3, 1, 1, shape), 3, 2, 1, shape) for d in shape[1:])
    return [
        *_conv_block(shape[0], w, 3, 1, 1, bn=True),
        *_conv_block(w, 2 * w, 3, 2, 1, bn=True),
        nn.Flatten(),
        nn.Linear(2 * w * h * wd, 4 * w),
        nn.BatchNorm1d(4 * w),
        nn.ReLU(),
        nn.Linear(4 * w, num_classes),
    ]


@register_model
def cnn_small(shape: tuple[int, int, int], num_classes: int, width: int | None) -> list[nn.Module]:
    """The small MNIST network of Wong & Kolter 2018 and Gowal et al. 2018 (16 and 32 channels, 100 units)."""
    w = width or 16
    hidden = max(1, round(100 * w / 16))
    h, wd = (_conv_out(_conv_out(d, 4, 2, 1, shape), 4, 2, 1, shape) for d in shape[1:])
    return [
        *_conv_block(shape[0], w, 4, 2, 1, bn=False),
        *_conv_block(w, 2 * w, 4, 2, 1, bn=False),
        nn.Flatten(),
        nn.Linear(2 * w * h * wd, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    ]


@register_model
def cnn7(shape: tuple[int, int, int], num_classes: int, width: int | None) -> list[nn.Module]:
    """CNN7 with BatchNorm of Shi et al. 2021 (``cnn_7layer_bn2``; width 64, 512 hidden units).

    For inputs of 64x64 and larger the fifth convolution has stride 2, as in their TinyImageNet
    variant ``cnn_7layer_bn_imagenet``; otherwise the first linear layer would have 67M weights.
    The hidden layer has 8 * width units (512 at the default width 64).
    """
    w = width or 64
    last_stride = 2 if min(shape[1:]) >= 64 else 1
    convs = [(shape[0], w, 1), (w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 2 * w, last_stride)]
    layers: list[nn.Module] = []
    h, wd = shape[1:]
    for c_in, c_out, stride in convs:
        layers += _conv_block(c_in, c_out, 3, stride, 1, bn=True)
        h, wd = _conv_out(h, 3, stride, 1, shape), _conv_out(wd, 3, stride, 1, shape)
    hidden = 8 * w
    return [*layers, nn.Flatten(), nn.Linear(2 * w * h * wd, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes)]  # fmt: skip


def ibp_init(model: nn.Module) -> nn.Module:
    """IBP initialisation of Shi et al. 2021, "Fast certified robust training with short warmup".

    Standard initialisations let interval widths grow with depth; drawing each weight from
    N(0, 2*pi / fan_in**2) keeps the expected IBP bound width roughly constant from layer to layer
    (their Theorem 1). As in their code (``ibp_init`` in ``manual_init.py`` of
    shizhouxing/Fast-Certified-Robust-Training), every Conv2d / Linear weight except the last
    layer's is re-drawn, and biases and BatchNorm parameters are left as they are. In place.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        for layer in layers[:-1]:
            fan_in = layer.weight[0].numel()  # in_features, or in_channels * kernel area
            layer.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in)
    return model


# --- checkpoints ---------------------------------------------------------------------------------
_META_KEYS = ("arch", "input_shape", "num_classes", "mean", "std", "width", "config")


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    width: int | None,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the weights and everything needed to rebuild the model, as plain types only.

    Plain types let :func:`load_model` use ``torch.load(weights_only=True)``, which cannot execute
    code from a checkpoint. The file is written to a temporary name and renamed, so a trial killed
    mid-write never leaves a truncated checkpoint.
    """
    meta = {
        "arch": arch,
        "input_shape": [int(d) for d in input_shape],
        "num_classes": int(num_classes),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "width": None if width is None else int(width),
        "config": config,
    }
    clash = set(extra or {}) & {*_META_KEYS, "state_dict"}
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} clash with the checkpoint's own keys")
    meta.update(extra or {})
    _check_plain(meta, "checkpoint")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"state_dict": state, **meta}, tmp)
    os.replace(tmp, path)


def _check_plain(value: Any, where: str) -> None:
    """Reject what ``weights_only`` loading would refuse (numpy scalars, dataclasses, Paths...)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise ValueError(f"{where}: key {k!r} must be a str or int")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif value is not None and not isinstance(value, str | int | float | bool | torch.Tensor):
        raise ValueError(f"{where}={value!r} is a {type(value).__name__}; checkpoints take plain types only")


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Sequential, dict]:
    """Rebuild a model saved by :func:`save_checkpoint`, in eval mode on ``map_location``.

    ``model, meta = trainers.models.load_model("OUT/model.pt")``; ``meta`` holds everything but the
    weights (arch, input_shape, num_classes, mean, std, width, config and any extras).
    """
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    missing = [k for k in ("state_dict", *_META_KEYS) if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a checkpoint of this project (missing {', '.join(missing)})")
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    model = build_model(
        meta["arch"],
        input_shape=meta["input_shape"],
        num_classes=meta["num_classes"],
        mean=meta["mean"],
        std=meta["std"],
        width=meta["width"],
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.to(map_location).eval(), meta


def pick_device(name: str) -> torch.device:
    """Map "auto" | "cpu" | "cuda" to a device; "cuda" without CUDA fails now, not mid-sweep."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device='cuda' was requested but CUDA is not available here; use 'cpu' or 'auto'"
            )
        return torch.device("cuda")
    raise ValueError(f"unknown device {name!r}; choose one of auto, cpu, cuda")
