"""Every preset under configs/ is a valid sweep at the published scale (docs/method.md)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest

from orchestrator.config import SweepConfig
from search_spaces import SpaceContext, get_space, with_fixed

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PRESETS = sorted(CONFIGS.glob("*"))
PER_RUN = {"name", "storage", "tracking_uri", "resume", "address", "optuna_storage"}  # where, not what
# docs/method.md, published settings: epochs per data set; CNN7 with BatchNorm everywhere.
PUBLISHED_EPOCHS = {"mnist": 100, "cifar10": 200, "tinyimagenet": 200}
# docs/method.md: batch size, peak learning rate, standard epochs then ramp length; TinyImageNet's L1
# weight decay and regulariser weight (the authors' configs). Fixed in every trial (--fixed).
PUBLISHED_TRIAL_SETTINGS = {
    "mnist": {"batch_size": 128, "lr": 1e-3, "std_epochs": 1, "ramp_epochs": 20},
    "cifar10": {"batch_size": 128, "lr": 2e-3, "std_epochs": 1, "ramp_epochs": 80},
    "tinyimagenet": {
        "batch_size": 256,
        "lr": 2e-3,
        "std_epochs": 1,
        "ramp_epochs": 80,
        "l1": 1e-4,
        "reg_weight": 0.2,
    },
}


def load(path: Path) -> dict:
    values = json.loads(path.read_text())
    assert isinstance(values, dict), f"{path.name}: a JSON object of SweepConfig fields"
    return values


def build(path: Path, tmp_path: Path) -> SweepConfig:
    extra = {
        "name": path.stem,
        "storage": str(tmp_path / "sweeps"),
        "tracking_uri": f"sqlite:///{tmp_path}/m.db",
    }
    return SweepConfig.from_dict({**load(path), **extra})


def test_there_is_a_preset_per_paper_data_set():
    assert {p.stem for p in PRESETS} >= set(PUBLISHED_EPOCHS)
    assert all(p.suffix == ".json" for p in PRESETS), "configs/ holds only JSON presets"


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_is_a_valid_sweep_config(path, tmp_path):
    values = load(path)
    fields = {f.name for f in dataclasses.fields(SweepConfig)}
    assert set(values) <= fields, f"not SweepConfig fields: {sorted(set(values) - fields)}"
    assert not set(values) & PER_RUN, "a preset says what runs, not where: no name, storage or URIs"
    cfg = build(path, tmp_path)
    assert cfg.dataset == path.stem and cfg.model == "cnn7"
    assert cfg.epochs == PUBLISHED_EPOCHS[cfg.dataset]
    assert cfg.trials >= 2 * len(cfg.accs)  # room for the search beyond one trial per target
    assert cfg.grace_epochs <= cfg.epochs


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_method_of_a_preset_makes_valid_trials(path, tmp_path):
    """The search spaces at the preset's epochs and radius give trial configs that validate."""
    cfg = build(path, tmp_path)
    ctx = SpaceContext(max_epochs=cfg.epochs, ref_eps=float(cfg.spec.max_eps))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for method in cfg.methods:
        for _ in range(5):
            trial = study.ask()
            train = cfg.trial(with_fixed(get_space(method), cfg.fixed_settings(method))(trial, ctx))
            assert train.method == method and train.model_name == "cnn7" and train.epochs == cfg.epochs
            for key, value in PUBLISHED_TRIAL_SETTINGS[cfg.dataset].items():
                assert train.to_dict()[key] == value, (method, key)
            assert train.dataset == cfg.dataset
            if method == "acert":  # the paper's per-batch root solve, pinned by the preset
                assert train.params.radius_solver == "exact"
            study.tell(trial, 0.0)
