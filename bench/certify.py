"""Certifying N test images (radius per sample and ACR) as a multiple of one IBP forward pass.

    python -m bench.certify [--dataset fashion-mnist] [--n 1000] [--rel-tol 1e-3] [--reps 3]

``trainers.certify.certified_radii`` finds each sample's certified radius in [0, eps_cap]
to a relative tolerance ``--rel-tol``, all samples of a batch in lockstep (a sample leaves
the computation when its bracket closes; the clean pass gives the bracket's lower end).
The unit is one IBP bound pass over the same N images at one radius, in the same batches;
both run interleaved with the certification and one bound pass of each other method of
``--methods`` (crown-ibp, crown, best; ``best`` certifies each sample at its largest radius
over ibp, crown-ibp and crown, so it costs the three searches together).
For each method M the JSON has ``certify_M_ratio`` (its certification / one IBP pass),
``M_pass_ratio`` (its bound pass / one IBP pass), ``certify_M_ratio_vs_M_pass``, ``M_acr``
and ``M_sample_evals_per_sample`` (M with '-' as '_').
The model is first trained for a few ACERT epochs (``bench.common.acert_pretrained``), so
that radii are spread over (0, eps_cap) as in a sweep. Besides the time ratios the script
reports the ACR and ``sample_evals_per_sample``: bound evaluations per certified image,
counted by a solver passed to the certifier (``certified_radii(..., solver=...)``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from bench.common import (
    acert_pretrained,
    add_common_args,
    emit,
    interleaved,
    load_data,
    log,
    machine,
    median,
    ratio,
    setup,
)
from trainers.bounds import get_bound_method
from trainers.certify import as_float, certified_radii
from trainers.config import TrainConfig
from trainers.data import DATASETS
from trainers.models import build_model, ibp_init
from trainers.rootfind import solve_radius

METHODS = ("ibp", "crown-ibp", "crown", "best", "alpha-crown")  # the first four by default


class SolverCounter:
    """A radius solver (``solve_radius`` by default) that counts the samples pushed through
    the bound function it is given: pass it as ``certified_radii(..., solver=counter)``."""

    def __init__(self, solve=solve_radius) -> None:
        self.solve, self.samples = solve, 0

    def __call__(self, f, *args, **kwargs):
        def counted(idx, eps):
            self.samples += idx.numel()
            return f(idx, eps)

        return self.solve(counted, *args, **kwargs)


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    splits, data = load_data(args.dataset, args.data_dir, args.train_samples, args.n, args.seed)
    spec = splits.spec
    model_name = args.model or spec.default_model
    cfg = TrainConfig(
        dataset=args.dataset,
        model=model_name,
        method="acert",
        epochs=args.pretrain_epochs + 1,
        std_epochs=1,
        ramp_epochs=max(0, args.pretrain_epochs - 1),
        batch_size=128,
        device=device.type,
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
    pre = acert_pretrained(model, splits, cfg, args.pretrain_epochs, device)
    log(f"certify: pretrained {args.pretrain_epochs} epochs, train_acc {pre.get('train_acc', 0):.3f}")
    model.eval()
    x, y = splits.x_test.to(device), splits.y_test.to(device)
    cap, bs = float(spec.eps_cap), args.batch_size
    xf = as_float(x)

    def one_pass(method: str):
        bound = get_bound_method(method)

        def go() -> None:
            with torch.no_grad():
                for s in range(0, xf.shape[0], bs):
                    xb = xf[s : s + bs]
                    bound(model, xb, y[s : s + bs], torch.full((xb.shape[0],), cap / 4, device=device))

        return go

    results: dict[str, tuple] = {}
    counters = {method: SolverCounter() for method in args.methods}

    def certify(method: str):
        def go() -> None:
            results[method] = certified_radii(
                model,
                x,
                y,
                eps_cap=cap,
                method=method,
                rel_tol=args.rel_tol,
                batch_size=bs,
                device=device,
                solver=counters[method],
            )

        return go

    fns = {}
    for method in args.methods:
        key = method.replace("-", "_")
        fns.update({f"{key}_pass": one_pass(method), f"certify_{key}": certify(method)})
    times = interleaved(fns, reps=args.reps, warmup=args.warmup, device=device)
    runs = args.reps + args.warmup
    n = x.shape[0]
    out: dict[str, Any] = {
        "data": data,
        "model": model_name,
        "n": n,
        "batch_size": bs,
        "rel_tol": args.rel_tol,
        "eps_cap": cap,
        "median_s": {k: median(v) for k, v in times.items()},
        "certify_ibp_ratio": ratio(times, "certify_ibp", "ibp_pass"),
    }
    for method, (radii, preds) in results.items():
        key = method.replace("-", "_")
        r = torch.where(preds == y.cpu(), radii, torch.zeros_like(radii))
        out[f"{key}_acr"] = r.double().mean().item()
        out[f"{key}_sample_evals_per_sample"] = counters[method].samples / (runs * n)
    out["clean_acc"] = (results["ibp"][1] == y.cpu()).double().mean().item()
    for method in args.methods[1:]:
        key = method.replace("-", "_")
        out[f"certify_{key}_ratio"] = ratio(times, f"certify_{key}", "ibp_pass")
        out[f"{key}_pass_ratio"] = ratio(times, f"{key}_pass", "ibp_pass")
        out[f"certify_{key}_ratio_vs_{key}_pass"] = ratio(times, f"certify_{key}", f"{key}_pass")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.certify", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS.names())
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--model", default=None, help="registered model (default: the data set's)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--n", type=int, default=1000, help="test images to certify")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--rel-tol", type=float, default=1e-3)
    p.add_argument("--methods", default=",".join(METHODS[:4]), help="ibp is always included")
    p.add_argument("--train-samples", type=int, default=5120)
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)
    args.methods = ["ibp"] + [m for m in args.methods.split(",") if m and m != "ibp"]
    if any(m not in METHODS for m in args.methods):
        p.error(f"--methods takes {', '.join(METHODS)}, got {args.methods}")
    if args.quick:
        args.dataset, args.model, args.n, args.train_samples, args.batch_size = (
            "synthetic",
            "mlp_tiny",
            64,
            64,
            32,
        )
        args.pretrain_epochs, args.reps, args.warmup = 2, args.reps or 1, 0
    args.reps = args.reps or 3
    device = setup(args)
    emit(
        {
            "benchmark": "certify",
            "machine": machine(device),
            "reps": args.reps,
            "goal": {"certify_ibp_ratio": 12.0},
            **run(args, device),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
