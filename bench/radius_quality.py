"""Does the warm radius solver train as well as the exact one? Same epochs, several seeds.

    python -m bench.radius_quality [--dataset fashion-mnist --data-dir DATA] [--seeds 0,1,2]
        [--max-eps 0.4] [--kappa 0.5] [--augment]

For each seed, ACERT is trained twice with identical settings but ``radius_solver`` exact
and warm (``trainers.train.run_training``, the real loop), and the final validation accuracy,
validation ACR (capped at the data set's radius, and uncapped: up to its search cap) and the
mean epoch time are reported with their mean and spread (min, max) per solver. ``--max-eps``
trains at another radius than the data set's; ``--augment`` forces the training augmentation
(random crop and flip, ``trainers.data.augment_batch``) on a data set that has none, so that a
sample looks different at every visit. Radii during training are targets; both models are
certified the same, exact way.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from typing import Any

from bench.common import add_common_args, emit, log, machine, setup, warm_settings
from trainers.config import TrainConfig
from trainers.settings import ConfigError, OneLineParser
from trainers.train import run_training

SOLVERS = ("exact", "warm")
FIGURES = ("val_acc", "val_acr", "val_acr_uncapped", "certified_epoch_s")


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m bench.radius_quality", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--model", default=None)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--val-acr-samples", type=int, default=1000)
    p.add_argument("--max-eps", type=float, default=None, help="training radius (default: the data set's)")
    p.add_argument("--kappa", type=float, default=0.0, help="weight of the standard loss")
    p.add_argument("--augment", action="store_true", help="random crop + flip during training")
    p.add_argument("--solvers", default=",".join(SOLVERS), help="which solvers to train (exact,warm)")
    p.add_argument(
        "--warm-settings",
        default="",
        help="the warm solver's own settings, e.g. warm_overshoot=0.5,warm_new_radius=slope",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.dataset, args.seeds, args.epochs, args.train_subset, args.val_acr_samples = (
            "synthetic",
            "0",
            2,
            256,
            32,
        )
    return args


def configs(args: argparse.Namespace, device_type: str) -> list[TrainConfig]:
    """Every run's config, in order (seed, then solver): all validated before anything trains."""
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ConfigError(f"invalid --seeds {args.seeds!r}: comma-separated integers") from None
    solvers = [s for s in SOLVERS if s in args.solvers.split(",")]
    if not solvers:
        raise ConfigError(f"invalid --solvers {args.solvers!r}: choose among {', '.join(SOLVERS)}")
    warm = warm_settings(args.warm_settings)
    return [
        TrainConfig.from_dict(
            {
                "dataset": args.dataset,
                "data_dir": args.data_dir,
                "download": False,
                "model": args.model,
                "method": "acert",
                "radius_solver": solver,
                "epochs": args.epochs,
                "std_epochs": 1,
                "ramp_epochs": max(1, args.epochs // 2),
                "lr": 1e-3,
                "seed": seed,
                "device": device_type,
                "threads": args.threads,
                "train_subset": args.train_subset,
                "synthetic_size": 1024,
                "val_acr_samples": args.val_acr_samples,
                "eval_test_at_end": False,
                "max_eps": args.max_eps,
                "kappa": args.kappa,
                **(warm if solver == "warm" else {}),
            }
        )  # fmt: skip
        for seed in seeds
        for solver in solvers
    ]


def train(cfg: TrainConfig, augment: bool) -> dict[str, Any]:
    """One run's final validation figures and mean certified-epoch time."""
    splits = cfg.load_splits()
    if augment:
        splits = dataclasses.replace(splits, spec=dataclasses.replace(splits.spec, augment=True))
    with tempfile.TemporaryDirectory() as out:
        history: list[dict] = []
        run_training(cfg, output_dir=out, splits=splits, on_epoch=lambda m, _o: history.append(m), log=log)
    final = history[-1]
    epoch_s = statistics.fmean(m["epoch_time_s"] for m in history[cfg.std_epochs :])
    return {"seed": cfg.seed, "val_acc": final["val_acc"], "val_acr": final["val_acr"],
            "val_acr_uncapped": final["val_acr_uncapped"], "certified_epoch_s": epoch_s}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
        device = setup(args)
        cfgs = configs(args, device.type)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, Any]]] = {}
    for cfg in cfgs:
        solver = cfg.params.radius_solver
        runs.setdefault(solver, []).append(train(cfg, args.augment))
        log(f"{solver} seed {cfg.seed}: {runs[solver][-1]}")
    result = {"benchmark": "radius_quality", "machine": machine(device), "dataset": args.dataset,
              "epochs": args.epochs, "train_subset": args.train_subset, "max_eps": cfgs[0].train_max_eps,
              "kappa": args.kappa, "augment": args.augment, "runs": runs,
              "warm_settings": warm_settings(args.warm_settings)}  # fmt: skip
    for solver, solver_runs in runs.items():
        for key in FIGURES:
            result[f"{solver}_{key}"] = summary([r[key] for r in solver_runs])
    if len(runs) == len(SOLVERS):
        result["warm_over_exact_epoch_s"] = (
            result["warm_certified_epoch_s"]["mean"] / result["exact_certified_epoch_s"]["mean"]
        )
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
