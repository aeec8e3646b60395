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

The training runs in a thread of its own (:class:`TrainingThread`), so the trial's thread waits
for each epoch with a deadline, ``--trial-timeout``. A trial that ends on its own, by a
divergence (NaN loss, the same on every retry) or by a timeout (no epoch for that long: a stuck
device or file system), reports a last result marked ``diverged`` or ``timed_out`` with the
worst figures and the reason (``trainers.metrics.ENDED``) and finishes: Tune does not retry it,
the searcher records it as failed, the scheduler does not rank it, and it wins no target.

SIGTERM (a preempted node, a ``kill``): the handler, installed in the process's main thread
when the trial actor is set up, asks the training loop to stop before its next step; the trial
then reports a checkpoint of its last finished epoch if that one has none yet, and the process
ends as Ray ends a worker on SIGTERM. Tune retries the trial from that checkpoint
(``--max-failures``), so at most the epoch in progress is trained again.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.config import SweepConfig
from trainers import metrics as M
from trainers.registry import import_plugins
from trainers.train import DivergedError, StopRequested, run_training

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


class TrialTimedOut(Exception):
    """No epoch finished within the sweep's ``--trial-timeout``."""


class TrainingThread:
    """One trial's ``run_training`` in a thread of its own, so that the trial's thread (Tune's)
    can wait for each epoch with a deadline: a step that never returns (a stuck device or file
    system) cannot be interrupted from Python, but the trial can still end and be recorded.

    An abandoned thread (timed out, or its trial stopped) stops at its next step if that ever
    comes; a thread that stays blocked lingers, as a daemon, until Ray ends the process."""

    def __init__(self, cfg, workdir: Path) -> None:
        self._events: queue.Queue = queue.Queue()
        self._ack = threading.Semaphore(0)
        self.abandoned = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(cfg, workdir), daemon=True, name="training")

    def _run(self, cfg, workdir: Path) -> None:
        try:
            run_training(
                cfg,
                output_dir=workdir,
                on_epoch=self._epoch,
                resume=True,
                splits=cached_splits(cfg),
                should_stop=lambda: _stop.is_set() or self.abandoned.is_set(),
            )
        except BaseException as e:  # handed to the trial's thread, which raises it
            self._events.put(("error", e))
        else:
            self._events.put(("finished", None))

    def _epoch(self, metrics: dict[str, Any], out: Path) -> None:
        self._events.put(("epoch", (metrics, out)))
        self._ack.acquire()  # the checkpoint is copied from ``out`` before training goes on

    def epochs(self, timeout_s: float) -> Iterator[tuple[dict[str, Any], Path]]:
        """Each finished epoch's (metrics, output folder), training paused until the next item is
        asked for; the training's exception is raised here, :class:`TrialTimedOut` when no epoch
        comes within ``timeout_s`` seconds (0: no limit)."""
        self.thread.start()
        while True:
            try:
                kind, value = self._events.get(timeout=timeout_s or None)
            except queue.Empty:
                raise TrialTimedOut(f"no epoch reported for {timeout_s:g} s") from None
            if kind == "finished":
                return
            if kind == "error":
                raise value
            yield value
            self._ack.release()

    def abandon(self) -> None:
        self.abandoned.set()
        self._ack.release()  # if it waits for an acknowledgement: it stops at its next step


def ended_result(finished: int, flag: str, reason: str) -> dict[str, Any]:
    """The last result of a trial that ended on its own (``flag``: one of ``M.ENDED``) after
    ``finished`` epochs: at the epoch it did not finish, with the worst figures, so that no
    target counts it as feasible, and its reason as text (MLflow takes only numbers as metrics)."""
    return {
        M.EPOCH: finished + 1,
        M.VAL_ACC: 0.0,
        M.VAL_ACR: 0.0,
        flag: 1,
        M.END_REASON: reason,
        M.DONE: True,
    }


def finished_epochs(workdir: Path) -> int:
    """The epochs a restored checkpoint holds (0 without one)."""
    if not (workdir / "state.pt").is_file():
        return 0
    import torch

    return int(torch.load(workdir / "state.pt", mmap=True, weights_only=True)["epoch"])


def report_ended(result: dict[str, Any]) -> None:
    """Report an ended trial's last result with a checkpoint of its own, a note of the reason:
    the sweep judges a trial at its latest checkpoint (``evaluation.checkpointed_metrics``), and
    an earlier epoch's checkpoint must not make a diverged trial a winner."""
    with tempfile.TemporaryDirectory(prefix="acert-ended-") as note:
        Path(note, "ended.txt").write_text(result[M.END_REASON] + "\n")
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(note))


def train_trial(config: dict[str, Any], sweep: SweepConfig) -> None:
    import_plugins(sweep.plugins)  # a worker process registers what the driver registered
    cfg = sweep.trial(config)
    workdir = Path(tempfile.mkdtemp(prefix="acert-trial-"))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            shutil.copytree(d, workdir, dirs_exist_ok=True)
    last: dict[str, Any] = {"metrics": None, "saved": False, "epoch": finished_epochs(workdir)}

    def report(metrics: dict[str, Any], out: Path) -> None:
        save = bool(metrics.get(M.DONE)) or sweep.checkpoint_due(int(metrics[M.EPOCH])) or _stop.is_set()
        last.update(metrics=metrics, saved=save, epoch=int(metrics[M.EPOCH]))
        if save:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(out)))
        else:
            tune.report(metrics)

    training, hung = TrainingThread(cfg, workdir), False
    _training.set()
    try:
        for metrics, out in training.epochs(sweep.trial_timeout):
            report(metrics, out)
    except DivergedError as e:  # a property of the config: the same on every retry
        report_ended(ended_result(last["epoch"], M.DIVERGED, f"diverged: {e}"))
    except TrialTimedOut as e:
        hung = True
        report_ended(ended_result(last["epoch"], M.TIMED_OUT, str(e)))
    except StopRequested:
        if last["metrics"] is not None and not last["saved"]:
            # the last finished epoch, reported before without a checkpoint: again, with it
            tune.report(last["metrics"], checkpoint=tune.Checkpoint.from_directory(str(workdir)))
            time.sleep(_REPORT_SETTLE_S)
        exit_as_ray_would()
        raise
    finally:
        training.abandon()
        _training.clear()
        if not hung:  # it has ended, or ends at its next step; a hung one may still write there
            training.thread.join()
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
