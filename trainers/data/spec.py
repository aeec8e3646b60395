"""What the project knows about a data set, in one record, and the registry of data sets.

A :class:`DatasetSpec` holds everything about a data set: how to load it, the input shape and
classes, the normalisation, the default architecture, the training cap ``max_eps`` (the
paper's; also the normaliser of ACR), the radius range certification searches (``eps_cap``),
the standard evaluation radii and whether training augments. The table of the data sets of
this project is ``trainers/data/datasets.py``; a new data set is one ``register`` call there
(or in a plugin module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from trainers.registry import Registry
from trainers.settings import ConfigError

# loader(data_dir, download, size) -> (x_train, y_train, x_test, y_test); ``size`` is the
# number of training samples of a generated data set (ignored by data sets read from disk).
Loader = Callable[[Path, bool, int], tuple[Tensor, Tensor, Tensor, Tensor]]


class DataMissingError(ConfigError):
    """The data set is not on disk, and downloading was switched off (``--no-download``) or
    failed."""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything about one data set (mean/std and radii in [0, 1] pixel units)."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Loader = field(repr=False, compare=False)
    default_model: str
    max_eps: float  # the paper's training cap and the normaliser of ACR (ACR / max_eps)
    eps_cap: float  # the largest radius certification searches (fixed per data set)
    cert_eps: tuple[float, ...]  # standard radii of certified accuracy (docs/method.md)
    augment: bool = False  # random crop + flip during training (Shi et al. 2021)

    def __post_init__(self) -> None:
        if len(self.mean) != self.input_shape[0] or len(self.std) != self.input_shape[0]:
            raise ValueError(f"dataset {self.name!r}: one mean and std per channel of {self.input_shape}")
        if not 0 < self.max_eps <= self.eps_cap:
            raise ValueError(
                f"dataset {self.name!r}: need 0 < max_eps={self.max_eps} <= eps_cap={self.eps_cap}"
            )


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.register(spec.name, spec)


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.get(name)
