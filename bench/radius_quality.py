"""Does the warm radius solver train as well as the exact one? Same epochs, several seeds.

    python -m bench.radius_quality [--dataset fashion-mnist --data-dir DATA] [--seeds 0,1,2]

For each seed, ACERT is trained twice with identical settings but ``radius_solver`` exact
and warm (``trainers.train.run_training``, the real loop), and the final validation accuracy,
validation ACR and the mean epoch time are reported with their mean and spread (min, max) per
solver. Radii during training are targets; both models are certified the same, exact way.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from typing import Any

from bench.common import add_common_args, emit, log, machine, setup, warm_settings
from trainers.config import TrainConfig
from trainers.train import run_training

SOLVERS = ("exact", "warm")


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.radius_quality", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--model", default=None)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--val-acr-samples", type=int, default=1000)
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
    device = setup(args)
    solvers = [s for s in SOLVERS if s in args.solvers.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in solvers}
    warm = warm_settings(args.warm_settings)
    for seed in (int(s) for s in args.seeds.split(",")):
        for solver in solvers:
            cfg = TrainConfig.from_dict({
                "dataset": args.dataset, "data_dir": args.data_dir, "download": False, "model": args.model,
                "method": "acert", "radius_solver": solver, "epochs": args.epochs, "std_epochs": 1,
                "ramp_epochs": max(1, args.epochs // 2), "lr": 1e-3, "seed": seed, "device": device.type,
                "threads": args.threads, "train_subset": args.train_subset, "synthetic_size": 1024,
                "val_acr_samples": args.val_acr_samples, "eval_test_at_end": False,
                **(warm if solver == "warm" else {}),
            })  # fmt: skip
            with tempfile.TemporaryDirectory() as out:
                history: list[dict] = []
                run_training(cfg, output_dir=out, on_epoch=lambda m, _o, h=history: h.append(m), log=log)
            final = history[-1]
            epoch_s = statistics.fmean(m["epoch_time_s"] for m in history[cfg.std_epochs :])
            runs[solver].append({"seed": seed, "val_acc": final["val_acc"], "val_acr": final["val_acr"],
                                 "certified_epoch_s": epoch_s})  # fmt: skip
            log(f"{solver} seed {seed}: {runs[solver][-1]}")
    result = {"benchmark": "radius_quality", "machine": machine(device), "dataset": args.dataset,
              "epochs": args.epochs, "train_subset": args.train_subset, "runs": runs,
              "warm_settings": warm}  # fmt: skip
    for solver in solvers:
        for key in ("val_acc", "val_acr", "certified_epoch_s"):
            result[f"{solver}_{key}"] = summary([r[key] for r in runs[solver]])
    if len(solvers) == len(SOLVERS):
        result["warm_over_exact_epoch_s"] = (
            result["warm_certified_epoch_s"]["mean"] / result["exact_certified_epoch_s"]["mean"]
        )
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
