"""The Ray Tune trainable: one trial = one ``trainers.train.run_training`` run.

The trial's config (the searcher's suggestion: method, tuned values, target) becomes a
:class:`~trainers.config.TrainConfig` through :meth:`SweepConfig.trial`, the one place trial
configs are made. Every epoch is reported; a checkpoint (``model.pt`` and ``state.pt``) goes
with the report when :meth:`SweepConfig.checkpoint_due` says so, at the trial's last epoch, and
when the process receives SIGTERM. A restarted trial (``FailureConfig(max_failures)`` or
``Tuner.restore``) continues from its last checkpoint.

What a trial process keeps for the next trial when Tune reuses it (``reuse_actors``): the
imports and the last data set it loaded (:func:`cached_splits`); everything a run depends on
(seed, model, optimiser, method state, output folder) is made anew by ``run_training``.

SIGTERM (a preempted node, a ``kill``): the handler, installed in the process's main thread
when the trial actor is set up, asks the training loop to stop before its next step; the trial
then reports a checkpoint of its last finished epoch if that one has none yet, and the process
ends as Ray ends a worker on SIGTERM. Tune retries the trial from that checkpoint
(``--max-failures``), so at most the epoch in progress is trained again.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.config import SweepConfig
from trainers import metrics as M
from trainers.registry import import_plugins
from trainers.train import StopRequested, run_training

# Seconds between SIGTERM and the process's end when the training loop does not get to its
# checkpoint sooner (a step that takes longer); Kubernetes' default grace period is 30 s.
SIGTERM_GRACE_S = 20.0
# After the last report, time for the reply carrying it to reach the driver before the exit.
_REPORT_SETTLE_S = 1.0

_stop = threading.Event()  # set by SIGTERM during a trial: the loop stops before its next step
_training = threading.Event()  # a trial is running in this process
_exiting = False  # the next SIGTERM goes to Ray's handler
_ray_sigterm: Any = signal.SIG_DFL  # the handler Ray installed (ends the worker process)
_data: dict[tuple, Any] = {}  # the data set this process loaded last, by what it depends on


def cached_splits(cfg):
    """``cfg.load_splits()``, kept for the next trial of this process; one data set at a time."""
    key = (cfg.dataset, cfg.data_dir, cfg.val_fraction, cfg.seed, cfg.train_subset, cfg.synthetic_size)
    if key not in _data:
        _data.clear()
        _data[key] = cfg.load_splits()
    return _data[key]


def _on_sigterm(signum: int, frame: Any) -> None:
    """Runs in the main thread. During a trial: ask the loop to stop and give it
    ``SIGTERM_GRACE_S``; otherwise (or the second time) do what Ray's handler does."""
    global _exiting
    if _exiting or not _training.is_set():
        _exiting = True
        if callable(_ray_sigterm):
            _ray_sigterm(signum, frame)
        elif _ray_sigterm == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        return
    _stop.set()
    timer = threading.Timer(SIGTERM_GRACE_S, exit_as_ray_would)  # if the loop does not get there
    timer.daemon = True
    timer.start()


def install_sigterm_handler() -> None:
    """Called in the main thread of the trial process (signal handlers can only be set there)."""
    global _ray_sigterm
    current = signal.getsignal(signal.SIGTERM)
    if current is not _on_sigterm:
        _ray_sigterm = current
        signal.signal(signal.SIGTERM, _on_sigterm)


def exit_as_ray_would() -> None:
    """End the process as Ray ends a worker on SIGTERM (from any thread: the signal is
    delivered again, and the handler, in the main thread, hands it to Ray's)."""
    global _exiting
    _exiting = True
    os.kill(os.getpid(), signal.SIGTERM)


def train_trial(config: dict[str, Any], sweep: SweepConfig) -> None:
    import_plugins(sweep.plugins)  # a worker process registers what the driver registered
    cfg = sweep.trial(config)
    workdir = Path(tempfile.mkdtemp(prefix="acert-trial-"))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            shutil.copytree(d, workdir, dirs_exist_ok=True)
    last: dict[str, Any] = {"metrics": None, "saved": False}

    def report(metrics: dict[str, Any], out: Path) -> None:
        save = bool(metrics.get(M.DONE)) or sweep.checkpoint_due(int(metrics[M.EPOCH])) or _stop.is_set()
        last.update(metrics=metrics, saved=save)
        if save:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(out)))
        else:
            tune.report(metrics)

    _training.set()
    try:
        run_training(
            cfg,
            output_dir=workdir,
            on_epoch=report,
            resume=True,
            splits=cached_splits(cfg),
            should_stop=_stop.is_set,
        )
    except StopRequested:
        if last["metrics"] is not None and not last["saved"]:
            # the last finished epoch, reported before without a checkpoint: again, with it
            tune.report(last["metrics"], checkpoint=tune.Checkpoint.from_directory(str(workdir)))
            time.sleep(_REPORT_SETTLE_S)
        exit_as_ray_would()
        raise
    finally:
        _training.clear()
        shutil.rmtree(workdir, ignore_errors=True)


class _SigtermMixin:
    """Tune's FunctionTrainable with the SIGTERM handler (``__mixins__``: Tune's own hook)."""

    def setup(self, config: dict[str, Any]) -> None:
        install_sigterm_handler()  # actor set-up runs in the process's main thread
        super().setup(config)  # type: ignore[misc]


def make_trainable(sweep: SweepConfig):
    """``train_trial`` bound to the sweep, with each trial's resources and the SIGTERM handler."""
    trainable = tune.with_parameters(train_trial, sweep=sweep)
    trainable.__mixins__ = (_SigtermMixin,)
    return tune.with_resources(trainable, {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial})
