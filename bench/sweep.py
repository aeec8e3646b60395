"""Overhead of the sweep orchestration: K fixed-length trials through the project's sweep
(Ray Tune + the Optuna TargetSearcher + MLflow) against the same K trainings in a plain loop.

    python -m bench.sweep [--trials 4] [--trial-seconds 20] [--dataset fashion-mnist]
                          [--checkpoint-every N] [--no-reuse-actors]

The sweep is ``orchestrator.sweep.run_sweep``, exactly as ``python -m orchestrator.sweep``
runs it (trial reports every epoch, checkpoints every ``--checkpoint-every`` epochs and at the
end, trial processes reused unless ``--no-reuse-actors``, MLflow child runs, the winner's test
evaluation and the frontier artifacts at the end), with one change: a search space whose
trials all train for the same number of epochs (it tunes only kappa, which does not change
the cost of an IBP step), so that the trials are comparable with a plain loop. The plain
loop then runs ``trainers.train.run_training`` on the very configs the sweep ran, one after
the other in this process. Every trial is single-threaded (``threads=1``).

Figures: ``overhead_1`` = sweep wall time at 1 concurrent trial / plain loop - 1 (goal
<= 0.05), ``ratio_2`` = sweep wall time at 2 concurrent trials / plain loop (goal <= 0.6 on
2 cores); also ``fit_*`` (the Tuner alone, without the sweep's set-up and its closing
evaluation: the seconds ``run_sweep`` passes to its ``on_fit`` hook, which also hands over
the trials' results), ``ray_init_s`` (starting local Ray once, not counted above) and
``tracking_db_s``: creating the MLflow SQLite database the sweeps log to (its schema
migrations), once per database, as a user's ``./mlflow.db`` is created by their first sweep;
done before the timed runs, not counted, unless ``--fresh-tracking-db`` (every sweep then
logs to a new database and pays it).
The trial length is calibrated first: ``--trial-seconds`` of training per trial.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import add_common_args, emit, log, machine, median, setup

if TYPE_CHECKING:
    from orchestrator.config import SweepConfig
    from trainers.config import TrainConfig


def fixed_values(epochs: int, kappa: float) -> dict[str, Any]:
    """The trial values of an IBP trial of ``epochs`` epochs (same cost per step for any kappa)."""
    return {
        "method": "ibp",
        "epochs": epochs,
        "std_epochs": 1,
        "ramp_epochs": max(0, epochs - 2),
        "kappa": kappa,
        "lr": 1e-3,
        "batch_size": 128,
    }


def fixed_space(trial, ctx, *, epochs: int) -> dict[str, Any]:
    """IBP trials of a fixed length; only the loss mixing is tuned (same cost per step)."""
    return fixed_values(epochs, trial.suggest_float("kappa", 0.05, 0.5))


@contextlib.contextmanager
def stdout_to_stderr():
    """Ray Tune's progress tables go to stdout; the benchmark's stdout is its one JSON line."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def tracking_uri(workdir: Path, tag: str | None = None) -> str:
    """The MLflow database of the sweeps: one shared, or one per sweep ``tag`` (--fresh-tracking-db)."""
    return f"sqlite:///{workdir / (f'{tag}.db' if tag else 'mlflow.db')}"


def sweep_config(
    args: argparse.Namespace, epochs: int, concurrent: int, data_dir: str, workdir: Path, tag: str
) -> SweepConfig:
    """The sweep this benchmark runs: ``--trials`` IBP trials of ``epochs`` epochs, no early
    stopping, ``concurrent`` at a time, one thread each, no retries."""
    from orchestrator.config import SweepConfig

    return SweepConfig(
        dataset=args.dataset,
        accs=(0.5,),
        methods=("ibp",),
        trials=args.trials,
        epochs=epochs,
        name=tag,
        storage=str(workdir / "sweeps"),
        tracking_uri=tracking_uri(workdir, tag if args.fresh_tracking_db else None),
        data_dir=data_dir,
        download=False,
        max_concurrent=concurrent,
        scheduler="none",
        threads=1,
        max_failures=0,
        device="cpu",
        train_subset=args.train_subset,
        synthetic_size=args.synthetic_size,
        val_acr_samples=args.val_acr_samples,
        test_samples=args.test_samples,
        seed=args.seed,
        register_models=False,
        checkpoint_every=args.checkpoint_every,
        reuse_actors=args.reuse_actors,
    )


def train_config(args: argparse.Namespace, epochs: int, data_dir: str, workdir: Path) -> TrainConfig:
    """A trial of the sweep with kappa = 0.25, made as the sweep makes its trials
    (``SweepConfig.trial``): what every trial shares plus the fixed space's values."""
    return sweep_config(args, epochs, 1, data_dir, workdir, "plain").trial(fixed_values(epochs, 0.25))


def plain_loop(configs: list[TrainConfig], workdir: Path, train_s: list[float] | None = None) -> float:
    """The K trainings (``TrainConfig``s) back to back in this process: seconds (``train_s``
    gets the sum of the training epochs' own times, ``epoch_time_s``)."""
    from trainers.train import run_training

    epochs: list[float] = []
    t0 = time.perf_counter()
    for i, cfg in enumerate(configs):
        out = workdir / f"plain-{i}"
        run_training(
            cfg,
            output_dir=out,
            resume=False,
            log=lambda _m: None,
            on_epoch=lambda m, _out: epochs.append(m["epoch_time_s"]),
        )
        shutil.rmtree(out, ignore_errors=True)
    if train_s is not None:
        train_s.append(sum(epochs))
    return time.perf_counter() - t0


def calibrate_epochs(args: argparse.Namespace, data_dir: str, workdir: Path) -> tuple[int, float, float]:
    """Epochs for ``--trial-seconds`` per trial, from timing 2 and 4 epochs after an untimed
    run (first-call costs: imports, reading the data): (epochs, s/epoch, fixed s per trial)."""
    plain_loop([train_config(args, 1, data_dir, workdir)], workdir)
    t2 = plain_loop([train_config(args, 2, data_dir, workdir)], workdir)
    t4 = plain_loop([train_config(args, 4, data_dir, workdir)], workdir)
    per_epoch = max((t4 - t2) / 2, 1e-3)
    fixed = max(t2 - 2 * per_epoch, 0.0)
    return max(1, min(500, round((args.trial_seconds - fixed) / per_epoch))), per_epoch, fixed


def project_sweep(
    args, epochs: int, concurrent: int, data_dir: str, workdir: Path, tag: str
) -> dict[str, Any]:
    """One run of ``run_sweep`` with the fixed-length space: wall and fit seconds, the trials'
    configs (as ``TrainConfig``s) and where their time went, read from its ``on_fit`` hook."""
    from orchestrator.sweep import run_sweep

    cfg = sweep_config(args, epochs, concurrent, data_dir, workdir, tag)
    seen: dict[str, Any] = {}

    def on_fit(_method: str, grid, fit_s: float) -> None:
        seen["fit_s"] = fit_s
        seen["configs"] = [cfg.trial(r.config) for r in grid if r.config]
        seen["errors"] = sum(r.error is not None for r in grid)
        # where the time goes: Tune's clock inside each trial, and the training epochs
        seen["trial_s"] = sum(float((r.metrics or {}).get("time_total_s", 0.0)) for r in grid)
        seen["train_s"] = sum(
            float(r.metrics_dataframe["epoch_time_s"].sum())
            for r in grid
            if r.metrics_dataframe is not None and "epoch_time_s" in r.metrics_dataframe
        )

    t0 = time.perf_counter()
    run_sweep(cfg, spaces={"ibp": functools.partial(fixed_space, epochs=epochs)}, on_fit=on_fit)
    seen["wall_s"] = time.perf_counter() - t0
    return seen


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    workdir = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    data_dir = str(Path(args.data_dir).resolve())
    try:
        epochs, per_epoch, fixed = calibrate_epochs(args, data_dir, workdir)
        log(f"sweep: {epochs} epochs per trial ({per_epoch:.2f} s/epoch + {fixed:.2f} s)")
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
        ray_init_s = time.perf_counter() - t0
        tracking_db_s = None
        if not args.fresh_tracking_db:
            from mlflow.tracking import MlflowClient

            t0 = time.perf_counter()
            MlflowClient(tracking_uri(workdir)).search_experiments()
            tracking_db_s = time.perf_counter() - t0
        times: dict[str, list[float]] = {
            "plain": [],
            "sweep_1": [],
            "sweep_2": [],
            "fit_1": [],
            "fit_2": [],
            "plain_train": [],
            "trial_1": [],
            "train_1": [],
            "trial_2": [],
            "train_2": [],
        }
        errors = 0
        order = ["sweep_1", "plain", "sweep_2"]  # the plain loop needs the configs of a sweep
        for rep in range(args.reps):
            configs = None
            for name in order[rep % 3 :] + order[: rep % 3] if rep else order:
                if name == "plain":
                    if configs is None:
                        configs = [train_config(args, epochs, data_dir, workdir)] * args.trials
                    times["plain"].append(plain_loop(configs, workdir, times["plain_train"]))
                else:
                    conc = int(name[-1])
                    res = project_sweep(args, epochs, conc, data_dir, workdir, f"bench-c{conc}-r{rep}")
                    times[name].append(res["wall_s"])
                    times[f"fit_{conc}"].append(res["fit_s"])
                    times[f"trial_{conc}"].append(res["trial_s"])
                    times[f"train_{conc}"].append(res["train_s"])
                    errors += res["errors"]
                    configs = configs or res["configs"]
                log(f"sweep: rep {rep} {name}: {times[name][-1]:.1f} s")
        ray.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    plain = median(times["plain"])
    return {
        "trials": args.trials,
        "checkpoint_every": args.checkpoint_every,
        "reuse_actors": args.reuse_actors,
        "epochs_per_trial": epochs,
        "trial_seconds_target": args.trial_seconds,
        "seconds_per_epoch": per_epoch,
        "dataset": args.dataset,
        "ray_init_s": ray_init_s,
        "fresh_tracking_db": args.fresh_tracking_db,
        "tracking_db_s": tracking_db_s,
        "errored_trials": errors,
        "median_s": {k: median(v) for k, v in times.items()},
        "overhead_1": median(times["sweep_1"]) / plain - 1,
        "ratio_2": median(times["sweep_2"]) / plain,
        "fit_overhead_1": median(times["fit_1"]) / plain - 1,
        "fit_ratio_2": median(times["fit_2"]) / plain,
        # at 1 concurrent trial: fit = sum of the trials' own clocks + what happens between them
        # (actor processes starting, scheduling); a trial's clock = its epochs + reporting,
        # checkpointing and validation; the plain loop's epochs are the same work in-process
        "breakdown_1_s": {
            "between_trials": median(times["fit_1"]) - median(times["trial_1"]),
            "in_trials_not_epochs": median(times["trial_1"]) - median(times["train_1"]),
            "epochs": median(times["train_1"]),
            "plain_not_epochs": plain - median(times["plain_train"]),
            "plain_epochs": median(times["plain_train"]),
            "after_fit": median(times["sweep_1"]) - median(times["fit_1"]),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--trials", type=int, default=4, help="K: trials per sweep")
    p.add_argument("--trial-seconds", type=float, default=20.0, help="training time per trial (calibrated)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--train-subset", type=int, default=6000)
    p.add_argument("--synthetic-size", type=int, default=2048)
    p.add_argument("--val-acr-samples", type=int, default=100)
    p.add_argument("--test-samples", type=int, default=200)
    p.add_argument("--checkpoint-every", type=int, default=1, help="the sweep's --checkpoint-every")
    p.add_argument(
        "--fresh-tracking-db",
        action="store_true",
        help="each sweep logs to a new MLflow database and pays its creation (default: created once, untimed)",
    )
    p.add_argument(
        "--reuse-actors",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the sweep's --reuse-actors (--no-reuse-actors: a fresh process per trial)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.trial_seconds, args.dataset = 2, 0.5, "synthetic"
        args.synthetic_size, args.train_subset, args.val_acr_samples, args.test_samples = 128, None, 16, 16
    args.reps = args.reps or 1
    device = setup(args)
    if device.type != "cpu":
        log("sweep: trials run on CPU (the goal is about 2 single-threaded trials on 2 cores)")
    info = machine(device)  # before the plain loop sets this process to one thread
    with stdout_to_stderr():
        result = run(args)
    emit(
        {
            "benchmark": "sweep",
            "machine": info,
            "reps": args.reps,
            "goal": {"overhead_1": 0.05, "ratio_2": 0.6},
            **result,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
