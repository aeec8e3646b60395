"""ACERT's adaptive-radius update over an epoch, as a multiple of an IBP epoch.

    python -m bench.radius [--dataset fashion-mnist] [--model cnn_small] [--train-samples 5120] [--reps 5]

Both epochs are ``trainers.train.train_epoch`` (the real loop: batches, loss, backward,
clipping, Adam) over the same training samples at the same eps_max(t); ACERT additionally
solves every sample's certified radius with ``root_iters`` bound evaluations at most. ACERT
with ``radius_solver="warm"`` (radii carried across epochs, updated from the loss's own pass)
is timed beside them. All run interleaved, each on its own copy of one model, repetition by
repetition; the first (warm-up, untimed) repetition gives the warm solver its estimates.

The model is brought into a realistic state first: ``--pretrain-epochs`` of ACERT training
(one standard epoch, then the ramp) on the same samples, so that most samples are
classified correctly and their radii lie below the cap: the solver then has real work.
Besides the time ratio the script counts the solver's bound evaluations (a counting bound factory injected into the timed ACERT
method, ``build_method(..., bound_factory=...)``): ``evals_per_batch``
(sequential bound passes) and ``sample_evals_per_sample`` (the samples pushed through them,
divided by the batch size: the solver's cost in units of one IBP forward pass of the batch).
Data: the named data set if it is on disk, else a learnable synthetic stand-in (prototypes
plus noise) of the same shape, said in ``data``.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch

from bench.common import (
    EvalCounter,
    acert_pretrained,
    add_common_args,
    emit,
    interleaved,
    load_data,
    log,
    machine,
    median,
    paired_ratio,
    ratio,
    setup,
    warm_settings,
)
from trainers.config import TrainConfig
from trainers.data import DATASETS
from trainers.methods import build_method
from trainers.models import build_model, ibp_init
from trainers.train import train_epoch


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    splits, data = load_data(args.dataset, args.data_dir, args.train_samples, 1, args.seed)
    spec = splits.spec
    model_name = args.model or spec.default_model
    epochs = args.pretrain_epochs + 1
    cfg = TrainConfig.from_dict(
        {
            "dataset": args.dataset,
            "model": model_name,
            "method": "acert",
            "radius_solver": "exact",  # "acert" below (and the pretraining) is the paper's solver
            "epochs": epochs + 1,
            "std_epochs": 1,
            "ramp_epochs": max(0, args.pretrain_epochs - 1),
            "batch_size": args.batch,
            "device": device.type,
            "root_iters": args.root_iters,
        }
    )
    model = build_model(
        model_name,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        mean=spec.mean,
        std=spec.std,
        width=args.width,
    )
    ibp_init(model)
    model = model.to(device)
    steps_per_epoch = -(-splits.x_train.shape[0] // args.batch)
    counter = EvalCounter()  # the timed ACERT method's solver: its bound evaluations only
    warm_counter = EvalCounter()  # the warm solver's exact solves (samples without an estimate)
    methods = {
        "acert": build_method(cfg, steps_per_epoch, bound_factory=counter),
        "acert_warm": build_method(
            cfg.replace(radius_solver="warm", **warm_settings(args.warm_settings)),
            steps_per_epoch,
            bound_factory=warm_counter,
        ),
        "ibp": build_method(cfg.replace(method="ibp"), steps_per_epoch),
    }

    def epoch_fn(name: str, m: torch.nn.Module, epoch: int, record: dict):
        opt = torch.optim.Adam(m.parameters(), lr=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)

        def go() -> None:
            record.update(
                train_epoch(m, methods[name], opt, sched, splits, cfg, epoch, device, augment=False)
            )

        return go

    pre = acert_pretrained(model, splits, cfg, args.pretrain_epochs, device)  # standard epoch, then the ramp
    log(f"radius: pretrained {args.pretrain_epochs} epochs, train_acc {pre.get('train_acc', 0):.3f}")
    # timed epochs at the end of the ramp: eps_max(t) = max_eps, regularisers off
    stats: dict[str, dict] = {name: {} for name in methods}
    fns = {name: epoch_fn(name, copy.deepcopy(model), epochs - 1, stats[name]) for name in methods}
    times = interleaved(fns, reps=args.reps, warmup=args.warmup, device=device)
    runs = args.reps + args.warmup
    n = splits.x_train.shape[0]
    return {
        "data": data,
        "model": model_name,
        "train_samples": n,
        "batch": args.batch,
        "root_iters": cfg.params.root_iters,
        "root_rel_tol": cfg.params.root_rel_tol,
        "eps_max": cfg.train_max_eps,
        "acert_mean_radius_over_eps_max": stats["acert"].get("mean_radius", 0.0) / cfg.train_max_eps,
        "train_acc": stats["acert"].get("train_acc"),
        "median_epoch_s": {k: median(v) for k, v in times.items()},
        "acert_epoch_ratio": ratio(times, "acert", "ibp"),
        "acert_epoch_ratio_paired": paired_ratio(times, "acert", "ibp"),
        "evals_per_batch": counter.calls / (runs * steps_per_epoch),
        "sample_evals_per_sample": counter.samples / (runs * n),
        # the warm solver: its first (warm-up) epoch solves every sample exactly, later ones only
        # the samples without an estimate; the ratio is over the timed epochs
        "warm_settings": warm_settings(args.warm_settings),
        "acert_warm_epoch_ratio": ratio(times, "acert_warm", "ibp"),
        "acert_warm_epoch_ratio_paired": paired_ratio(times, "acert_warm", "ibp"),
        "acert_warm_mean_radius_over_eps_max": stats["acert_warm"].get("mean_radius", 0.0)
        / cfg.train_max_eps,
        "acert_warm_sample_evals_per_sample": warm_counter.samples / (runs * n),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.radius", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS.names())
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--model", default=None, help="registered model (default: the data set's)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--train-samples", type=int, default=5120)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--root-iters", type=int, default=10)
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--warm-settings",
        default="",
        help="the warm solver's own settings (default: the method's), e.g. warm_overshoot=0.5,warm_at_cap=false",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.dataset, args.model, args.train_samples, args.batch = "synthetic", "mlp_tiny", 64, 32
        args.pretrain_epochs, args.reps, args.warmup = 2, args.reps or 1, 0
    args.reps = args.reps or 5
    device = setup(args)
    result = run(args, device)
    emit(
        {
            "benchmark": "radius",
            "machine": machine(device),
            "reps": args.reps,
            "goal": {"acert_epoch_ratio": 1.25},
            **result,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
