"""The confirm stage's retrains as Ray Tune trials: one experiment per round of candidates,
``<sweep>/confirm-<round>``, restored when it exists (a finished retrain is not run again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback

from orchestrator.config import SweepConfig
from orchestrator.confirm import Retrain, open_run
from orchestrator.evaluation import checkpointed_metrics
from orchestrator.searcher import measured
from orchestrator.trainable import _SigtermMixin, train_trial
from trainers import metrics as M

RUN = "retrain"  # the key of a confirm trial's config: the retrain it is


def confirm_trial(config: dict[str, Any], sweep: SweepConfig) -> None:
    """A search trial's training (``trainable.train_trial``) with the retrain's fresh seed."""
    job = config[RUN]
    train_trial({**job["config"], "train_seed": job["seed"]}, sweep)


def make_confirm_trainable(cfg: SweepConfig):
    """As ``trainable.make_trainable``: the sweep's resources per trial and the SIGTERM handler."""
    trainable = tune.with_parameters(confirm_trial, sweep=cfg)
    trainable.__mixins__ = (_SigtermMixin,)
    return tune.with_resources(trainable, {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})


class ConfirmLogCallback(Callback):
    """Each retrain's MLflow child run while it trains: opened at its first result, its epochs'
    metrics as step metrics (through the tracker's journal, as the search's trials); the stage
    closes it with its test figures and verdicts (``confirm.record``)."""

    def __init__(self, cfg: SweepConfig, tracker: Any) -> None:
        self.cfg, self.tracker = cfg, tracker

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info) -> None:
        from orchestrator.tracking.names import result_metrics

        job = (trial.config or {}).get(RUN) or {}
        if not job.get("key"):
            return
        r = Retrain(job["key"], job["method"], job["of"], job["seed"], job["config"])
        open_run(self.cfg, self.tracker, r)
        step = int(result.get(M.EPOCH, result.get("training_iteration", 0)))
        if step > self.tracker.last_step(r.key, M.VAL_ACR):  # an epoch trained again after a restore
            self.tracker.log_trial_metrics(r.key, result_metrics(result), step=step)


def round_tuner(cfg: SweepConfig, rnd: int, todo: dict[str, Retrain], tracker: Any = None):
    name = f"confirm-{rnd}"
    path = f"{cfg.sweep_dir}/{name}"
    trainable = make_confirm_trainable(cfg)
    if tune.Tuner.can_restore(path):
        print(f"[confirm] restoring {path}", flush=True)
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    jobs = [
        {"key": r.key, "method": r.method, "of": r.of, "seed": r.seed, "config": r.config}
        for r in todo.values()
    ]
    return tune.Tuner(
        trainable,
        param_space={RUN: tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(
            num_samples=1, max_concurrent_trials=cfg.max_concurrent, reuse_actors=cfg.reuse_actors
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=cfg.sweep_dir,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),  # as the search (sweep.make_tuner)
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            callbacks=[ConfirmLogCallback(cfg, tracker)] if tracker is not None else None,
        ),
    )


def run_round(
    cfg: SweepConfig, rnd: int, todo: dict[str, Retrain], tracker: Any = None
) -> dict[str, Retrain]:
    """Train (or restore) the round's retrains; each comes back with its validation figures at
    its latest checkpoint and that checkpoint (``failed`` if it errored, ended or has none)."""
    from orchestrator.sweep import SweepInterrupted, unfinished_trials

    print(f"[confirm] round {rnd}: {len(todo)} retrain(s)", flush=True)
    grid = round_tuner(cfg, rnd, todo, tracker).fit()
    left = unfinished_trials(grid)
    if left:
        raise SweepInterrupted(f"confirm round {rnd} was interrupted with {len(left)} retrain(s) unfinished")
    out = dict(todo)
    for result in grid:
        job = (result.config or {}).get(RUN) or {}
        r = out.get(job.get("key"))
        if r is None:  # a restored round holds exactly the retrains it was started with
            continue
        m = measured(checkpointed_metrics(result), M.VAL_ACR)
        ended = any((result.metrics or {}).get(k) for k in M.ENDED)
        r.failed = result.error is not None or ended or m is None or result.checkpoint is None
        if m is not None:
            r.val_acc, r.val_acr = m
        r.checkpoint = result.checkpoint
        print(
            f"[confirm] {r.key}: val_acc {r.val_acc:.4f} val_acr {r.val_acr:.4f} ({Path(result.path).name})"
        )
    return out
