"""One typed, frozen configuration for a training run.

The same object is built from the command line (``trainers.train``), from a Ray Tune
trial config (a plain dict, see :meth:`TrainConfig.from_dict`) and is written into every
checkpoint and into MLflow params (:meth:`TrainConfig.to_dict`). Bad values raise
``ValueError`` naming the field and the value, before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Standard evaluation radii (pixel units, inputs in [0, 1]) and the paper's training caps.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # max_eps: the paper's training cap, also the normaliser of ACR (ACR / max_eps);
    # eps_cap: the largest radius certification searches, fixed per data set so that ACR
    # is comparable across trials whatever max_eps each trial trained with.
    "mnist": {"max_eps": 0.4, "eps_cap": 0.5, "cert_eps": (0.1, 0.3), "model": "cnn_small"},
    "fashion-mnist": {"max_eps": 0.1, "eps_cap": 0.2, "cert_eps": (0.05, 0.1), "model": "cnn_small"},
    "cifar10": {"max_eps": 8.8 / 255, "eps_cap": 16 / 255, "cert_eps": (2 / 255, 8 / 255), "model": "cnn7"},
    "tinyimagenet": {"max_eps": 1 / 255, "eps_cap": 4 / 255, "cert_eps": (1 / 255,), "model": "cnn7"},
    "synthetic": {"max_eps": 0.1, "eps_cap": 0.2, "cert_eps": (0.05, 0.1), "model": "mlp_tiny"},
}

METHODS = ("standard", "ibp", "crown-ibp", "acert")
DEVICES = ("auto", "cpu", "cuda")
RAMP_SHAPES = ("smooth", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Epoch counts are in epochs, not steps."""

    dataset: str = "synthetic"
    method: str = "acert"
    model: str | None = None  # None: the dataset's default architecture
    width: int | None = None  # None: the architecture's default width
    data_dir: str = "./data"
    download: bool = True
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    # Radius growth: `std_epochs` of standard training, then eps_max(t) ramps to `max_eps`
    # over `ramp_epochs` (Shi et al. 2021: a smooth polynomial start, then linear).
    max_eps: float | None = None  # None: the dataset's training cap (PAPER.md)
    std_epochs: int = 1
    ramp_epochs: int = 5
    ramp_shape: str = "smooth"
    # Loss mixing (1 - kappa) * L_rob + kappa * L_std; kappa_final (if set) is reached
    # linearly at the end of training.
    kappa: float = 0.0
    kappa_final: float | None = None
    # Shi et al. 2021 regularisers (tightness + ReLU balance), weight decays to 0 as
    # eps_max(t) reaches max_eps.
    reg_weight: float = 0.5
    reg_tol: float = 0.5
    min_eps: float = 0.0
    # CROWN-IBP beta mixing: beta goes from beta_start to beta_end over the ramp.
    beta_start: float = 1.0
    beta_end: float = 0.0
    # Root solving of the adaptive radii during training.
    root_iters: int = 10
    root_rel_tol: float = 1e-4
    # Certification / validation.
    cert_method: str = "ibp"
    cert_rel_tol: float = 1e-3
    val_fraction: float = 0.1
    val_acr_samples: int = 500
    eval_test_at_end: bool = True
    test_samples: int | None = None  # None: certify the whole test set at the end
    ibp_init: bool = True
    train_subset: int | None = None
    synthetic_size: int = 2048
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    num_workers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from trainers.data import DATASETS  # late: data imports torchvision

        def bad(name: str, value: Any, why: str) -> ValueError:
            return ValueError(f"invalid {name}={value!r}: {why}")

        if self.dataset not in DATASETS:
            raise bad("dataset", self.dataset, f"known datasets: {', '.join(sorted(DATASETS))}")
        if self.method not in METHODS:
            raise bad("method", self.method, f"known methods: {', '.join(METHODS)}")
        if self.device not in DEVICES:
            raise bad("device", self.device, f"choose one of {', '.join(DEVICES)}")
        if self.ramp_shape not in RAMP_SHAPES:
            raise bad("ramp_shape", self.ramp_shape, f"choose one of {', '.join(RAMP_SHAPES)}")
        for name in ("epochs", "batch_size", "root_iters"):
            if getattr(self, name) < 1:
                raise bad(name, getattr(self, name), "must be >= 1")
        for name in ("std_epochs", "ramp_epochs"):
            if getattr(self, name) < 0:
                raise bad(name, getattr(self, name), "must be >= 0")
        if not self.lr > 0:
            raise bad("lr", self.lr, "must be > 0")
        if self.max_eps is not None and not self.max_eps > 0:
            raise bad("max_eps", self.max_eps, "must be > 0")
        for name in ("kappa", "beta_start", "beta_end", "val_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise bad(name, v, "must lie in [0, 1]")
        if self.kappa_final is not None and not 0.0 <= self.kappa_final <= 1.0:
            raise bad("kappa_final", self.kappa_final, "must lie in [0, 1]")
        if self.min_eps < 0:
            raise bad("min_eps", self.min_eps, "must be >= 0")

    # --- derived values -------------------------------------------------------------
    @property
    def train_max_eps(self) -> float:
        return float(self.max_eps if self.max_eps is not None else DATASET_DEFAULTS[self.dataset]["max_eps"])

    @property
    def model_name(self) -> str:
        return self.model or DATASET_DEFAULTS[self.dataset]["model"]

    @property
    def cert_eps(self) -> tuple[float, ...]:
        return tuple(DATASET_DEFAULTS[self.dataset]["cert_eps"])

    # --- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (Ray trial config, checkpoint); unknown keys go to ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in values.items() if k in names}
        unknown = {k: v for k, v in values.items() if k not in names}
        if unknown:
            known["extra"] = {**known.get("extra", {}), **unknown}
        return cls(**known)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
