"""One typed, frozen configuration for a training run, declared once.

Every setting is a field with its default and help text (:func:`trainers.settings.setting`);
the command line of ``python -m trainers.train`` is generated from these fields and from the
params dataclass of every registered training method. The settings that only one method
understands (CROWN-IBP's ``beta_*``, ACERT's ``root_*`` and ``min_eps``, ...) live in that
method's own params dataclass (``TrainConfig.params``), next to the method.

The same object is built from the command line, from a sweep trial
(``orchestrator.config.SweepConfig.trial``) and from a checkpoint; it is written flat (method
params beside the common fields) into every checkpoint and into MLflow params
(:meth:`TrainConfig.to_dict`). Bad values, and keys that neither the run nor its method
knows, raise :class:`ConfigError` naming the setting and the value, before any work starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainers.settings import ConfigError, bad, setting

DEVICES = ("auto", "cpu", "cuda")
RAMP_SHAPES = ("smooth", "linear")
DATA_DIR = "./data"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Epoch counts are in epochs, not steps."""

    dataset: str = setting("synthetic", "data set", known=lambda: _names("trainers.data", "DATASETS"))
    method: str = setting(
        "acert", "training method", known=lambda: _names("trainers.methods", "TRAINING_METHODS")
    )
    model: str | None = setting(
        None, "architecture (default: the data set's)", known=lambda: _names("trainers.models", "MODELS")
    )
    width: int | None = setting(
        None, "channels / hidden units of the architecture; default: its published size"
    )
    data_dir: str = setting(DATA_DIR, "folder of the data sets (torchvision layout)")
    download: bool = setting(True, "download a missing data set (--no-download: fail instead)")
    epochs: int = setting(10, "epochs to train")
    batch_size: int = setting(128, "training batch size")
    lr: float = setting(1e-3, "peak learning rate of Adam's one-cycle schedule")
    weight_decay: float = setting(0.0, "Adam's (L2) weight decay")
    l1: float = setting(0.0, "L1 weight decay: adds l1 * sum |w| of conv and linear weights to the loss")
    grad_clip: float = setting(10.0, "gradient-norm clipping (0 disables)")
    # Radius growth (every certified method): `std_epochs` of standard training, then eps_max(t)
    # ramps to `max_eps` over `ramp_epochs` (Shi et al. 2021: a smooth polynomial start, then linear).
    max_eps: float | None = setting(
        None, "training radius cap (pixel units); default: the data set's (docs/method.md)"
    )
    std_epochs: int = setting(1, "epochs of standard training before the radius ramp")
    ramp_epochs: int = setting(5, "epochs of the eps_max(t) ramp up to max_eps")
    ramp_shape: str = setting("smooth", "shape of the ramp: smooth (Shi et al. 2021) or linear")
    # Loss mixing (1 - kappa) * L_rob + kappa * L_std.
    kappa: float = setting(0.0, "weight of the standard loss in (1 - kappa) L_rob + kappa L_std")
    kappa_final: float | None = setting(None, "if set, kappa moves linearly to this value by the last epoch")
    # Shi et al. 2021 regularisers (tightness + ReLU balance), weight decaying to 0 as eps_max(t) -> max_eps.
    reg_weight: float = setting(
        0.5, "weight of the Shi et al. 2021 regularisers during the ramp (0 disables)"
    )
    reg_tol: float = setting(0.5, "tolerance of the Shi et al. 2021 regularisers")
    ibp_init: bool = setting(True, "IBP initialisation of Shi et al. 2021 (certified methods)")
    # Validation and test evaluation.
    cert_method: str = setting(
        "ibp",
        "bound used for validation/test certification",
        known=lambda: _names("trainers.bounds", "BOUND_METHODS"),
    )
    cert_rel_tol: float = setting(1e-3, "relative tolerance of the certified-radius search")
    val_fraction: float = setting(
        0.1, "fraction of the training set held out for validation (model selection)"
    )
    val_acr_samples: int = setting(500, "validation samples certified each epoch for the validation ACR")
    eval_test_at_end: bool = setting(
        True, "certify the test split after the last epoch (reported, never selected on)"
    )
    test_samples: int | None = setting(None, "test samples certified at the end; default: the whole test set")
    train_subset: int | None = setting(None, "train on the first N training samples only (quick runs)")
    synthetic_size: int = setting(
        2048, "training samples of the generated `synthetic` and `synthetic-tradeoff` data sets"
    )
    seed: int = setting(0, "seed of the initialisation, shuffling and the validation split")
    train_seed: int | None = setting(
        None, "seed of the initialisation and shuffling only (default: seed); the split keeps seed"
    )
    device: str = setting("auto", "auto (CUDA if available), cpu or cuda")
    threads: int | None = setting(None, "torch CPU threads; default: torch's choice")
    # The method's own settings (a frozen dataclass registered with the method); None: its defaults.
    params: Any = setting(None, "the training method's own settings", cli=False)

    def __post_init__(self) -> None:
        from trainers.data import DATASETS  # late: data imports torchvision
        from trainers.methods import TRAINING_METHODS

        if self.dataset not in DATASETS:
            raise bad("dataset", self.dataset, f"known datasets: {', '.join(DATASETS.names())}")
        if self.method not in TRAINING_METHODS:
            raise bad("method", self.method, f"known methods: {', '.join(TRAINING_METHODS.names())}")
        spec = TRAINING_METHODS.get(self.method)
        params = self.params
        if params is None or isinstance(params, Mapping):
            params = build_params(spec.params, self.method, dict(params or {}))
        elif not isinstance(params, spec.params):
            raise bad("params", params, f"method {self.method!r} takes {spec.params.__name__}")
        object.__setattr__(self, "params", params)
        self._check()

    def _check(self) -> None:
        if self.device not in DEVICES:
            raise bad("device", self.device, f"choose one of {', '.join(DEVICES)}")
        if self.ramp_shape not in RAMP_SHAPES:
            raise bad("ramp_shape", self.ramp_shape, f"choose one of {', '.join(RAMP_SHAPES)}")
        for name in ("epochs", "batch_size", "val_acr_samples", "synthetic_size"):
            if getattr(self, name) < 1:
                raise bad(name, getattr(self, name), "must be >= 1")
        for name in ("std_epochs", "ramp_epochs", "weight_decay", "l1", "grad_clip", "reg_weight"):
            if getattr(self, name) < 0:
                raise bad(name, getattr(self, name), "must be >= 0")
        if not self.lr > 0:
            raise bad("lr", self.lr, "must be > 0")
        if self.max_eps is not None and not self.max_eps > 0:
            raise bad("max_eps", self.max_eps, "must be > 0")
        for name in ("kappa", "kappa_final"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise bad(name, v, "must lie in [0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", self.val_fraction, "must lie in [0, 1)")
        for name in ("train_subset", "test_samples", "threads", "width"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise bad(name, v, "must be >= 1 (or unset)")
        from trainers.bounds import BOUND_METHODS
        from trainers.models import MODELS

        if self.model is not None and self.model not in MODELS:
            raise bad("model", self.model, f"known models: {', '.join(MODELS.names())}")

        if self.cert_method not in BOUND_METHODS:
            raise bad("cert_method", self.cert_method, f"known: {', '.join(BOUND_METHODS.names())}")

    # --- derived values -------------------------------------------------------------
    @property
    def spec(self):
        """The data set's :class:`~trainers.data.spec.DatasetSpec`."""
        from trainers.data import get_dataset

        return get_dataset(self.dataset)

    @property
    def init_seed(self) -> int:
        """Seed of the initialisation and the data order: ``train_seed``, else ``seed``. The
        confirm stage retrains a configuration with fresh ones on the sweep's validation split."""
        return self.seed if self.train_seed is None else self.train_seed

    @property
    def train_max_eps(self) -> float:
        return float(self.max_eps if self.max_eps is not None else self.spec.max_eps)

    @property
    def model_name(self) -> str:
        return self.model or self.spec.default_model

    def load_splits(self, **overrides: Any):
        """The run's data: train / validation / test splits as this config says (see
        :func:`trainers.data.load_splits`); ``overrides`` change single arguments."""
        from trainers.data import load_splits

        args = dict(data_dir=self.data_dir, download=self.download, val_fraction=self.val_fraction, seed=self.seed,
                    train_subset=self.train_subset, synthetic_size=self.synthetic_size)  # fmt: skip
        return load_splits(self.dataset, **{**args, **overrides})

    # --- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Flat: the common fields and the method's params side by side (MLflow params, checkpoints)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"}
        out.update(dataclasses.asdict(self.params))
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a flat dict (a trial, a checkpoint): a key that is neither a field of the
        run nor of its method's params is an error naming the key and the method."""
        names = {f.name for f in dataclasses.fields(cls)}
        common = {k: v for k, v in values.items() if k in names and k != "params"}
        rest = {k: v for k, v in values.items() if k not in names}
        nested = values.get("params")
        if isinstance(nested, Mapping):
            rest = {**nested, **rest}
        return cls(**common, params=rest or None)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed; method params may be given by name too."""
        names = {f.name for f in dataclasses.fields(self)}
        own = {k: v for k, v in changes.items() if k in names}
        method_params = {k: v for k, v in changes.items() if k not in names}
        if "method" in own and own["method"] != self.method and "params" not in own:
            own["params"] = method_params or None  # another method: its own defaults
        elif method_params:
            own["params"] = dataclasses.replace(
                self.params, **_checked(type(self.params), self.method, method_params)
            )
        return dataclasses.replace(self, **own)


def _names(module: str, registry: str) -> tuple[str, ...]:
    """A registry's names, imported late (the registries import torch and torchvision)."""
    import importlib

    return getattr(importlib.import_module(module), registry).names()


def _checked(params_cls: type, method: str, values: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"invalid setting {unknown[0]!r} for method {method!r}: "
            f"it takes {', '.join(sorted(known)) or 'no settings of its own'} besides the common ones"
        )
    return values


def build_params(params_cls: type, method: str, values: dict[str, Any]) -> Any:
    """The method's params dataclass from a dict; unknown keys raise ConfigError."""
    return params_cls(**_checked(params_cls, method, values))


__all__ = ["DATA_DIR", "DEVICES", "RAMP_SHAPES", "ConfigError", "TrainConfig", "build_params"]
