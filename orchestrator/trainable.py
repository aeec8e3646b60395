"""The Ray Tune function trainable: one trial = one ``trainers.train.run_training`` run.

The trial's config (the searcher's suggestion: method, tuned values, target) becomes a
:class:`~trainers.config.TrainConfig` through :meth:`SweepConfig.trial`, the one place trial
configs are made. Every epoch is reported with a checkpoint holding ``model.pt`` and
``state.pt``; a restarted trial (``FailureConfig(max_failures)`` or ``Tuner.restore``)
continues from its last reported checkpoint.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.config import SweepConfig
from trainers.registry import import_plugins
from trainers.train import run_training


def train_trial(config: dict[str, Any], sweep: SweepConfig) -> None:
    import_plugins(sweep.plugins)  # a worker process registers what the driver registered
    cfg = sweep.trial(config)
    workdir = Path(tempfile.mkdtemp(prefix="acert-trial-"))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            shutil.copytree(d, workdir, dirs_exist_ok=True)

    def report(metrics: dict[str, Any], out: Path) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(out)))

    try:
        run_training(cfg, output_dir=workdir, on_epoch=report, resume=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def make_trainable(sweep: SweepConfig):
    """``train_trial`` bound to the sweep, with each trial's resources."""
    trainable = tune.with_parameters(train_trial, sweep=sweep)
    return tune.with_resources(trainable, {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial})
