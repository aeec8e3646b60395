"""One training step of each method as a multiple of a standard training step.

    python -m bench.step [--archs mnist,cifar] [--batch-sizes 128,256] [--reps 5] [--phase ramp]

A step is ``trainers.train.train_step``, the step ``train_epoch`` takes per batch: the
method's loss, the ``loss.item()`` sync, backward, gradient clipping and an Adam step (no
learning-rate schedule here). Every method trains its own copy of the same model on the same
batch, interleaved repetition by repetition (``bench.common.interleaved``); the figures are
median step time / median standard step.

The model is first trained for a few standard steps on a learnable synthetic batch
(class prototypes plus noise) until it classifies most of it correctly, then for a few
ACERT steps (``--acert-warmup``) so that its certified radii are not all zero: ACERT's
radius solver only works on correctly classified samples whose radius lies below the cap.
Its cost depends on that state, so the script also reports the solver's work
(``acert_sample_evals_per_sample``, counted by a bound factory injected into the timed ACERT
method) and ``acert_worst_case_ratio``: an IBP step plus ``root_iters`` bound evaluations of
the whole batch, the most ACERT can cost. ``bench.radius`` measures ACERT over real epochs.

``--phase ramp`` (default) times a step in the middle of the eps ramp: the Shi et al.
regularisers are on and CROWN-IBP mixes beta = 0.5 of its bound; ``--phase final`` a step
after the ramp (plain IBP loss; CROWN-IBP's beta is 0 there, so it equals IBP). Mid-ramp, an
IBP step after the ramp (``ibp_final``, on another copy of the same model and batch) runs in
the same interleaved rounds, so that ``ibp_ramp_over_final`` (mid-ramp IBP step / post-ramp
IBP step: what the regulariser and the recorded bounds cost) is measured side by side.
If auto_LiRPA is importable, its IBP step (Shi et al.'s setup) is timed as well, through the
same ``train_step``.

Any registered method can be timed (``--methods``). ``crown-ibp`` is the method as it trains by
default, with loss fusion (``trainers.bounds.fusion``); ``crown-ibp-margins`` is the same method
with ``loss_fusion=False`` (the bound on each of the 9 margins, the original formulation).
``<method>_over_ibp`` are the step-time ratios to the IBP step of the same phase (an epoch is
steps_per_epoch such steps, so they are the epoch ratios); ``*_paired`` are the medians of the
per-round ratios.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bench.common import (
    EvalCounter,
    add_common_args,
    emit,
    interleaved,
    log,
    machine,
    median,
    paired_ratio,
    prototype_batch,
    ratio,
    setup,
)
from trainers.config import TrainConfig
from trainers.methods import StepOutput, TrainingMethod, build_method
from trainers.methods.base import robust_ce
from trainers.methods.certified import Schedule
from trainers.models import build_model, ibp_init
from trainers.train import train_step

# name -> (registered model, data set whose paper settings apply, input shape, width)
ARCHS: dict[str, tuple[str, str, tuple[int, int, int], int | None]] = {
    "mnist": ("cnn_small", "mnist", (1, 28, 28), None),
    "cifar": ("cnn7", "cifar10", (3, 32, 32), None),
}
QUICK_ARCHS = {
    "mnist": ("cnn_small", "mnist", (1, 28, 28), 4),
    "cifar": ("cnn7", "cifar10", (3, 16, 16), 4),
}
KAPPA = {"mnist": 0.0, "cifar10": 0.25}  # the ACERT authors' default loss mixing per data set
METHODS = ("standard", "ibp", "crown-ibp", "crown-ibp-margins", "acert", "mtl-ibp", "sabr")
# bench-only variants: (registered method, settings)
VARIANTS = {"crown-ibp-margins": ("crown-ibp", {"loss_fusion": False})}
STEPS_PER_EPOCH, EPOCHS, STD_EPOCHS, RAMP_EPOCHS = 10, 10, 1, 8
NUM_CLASSES = 10
WARMUP_STEPS = {"mnist": 30, "cifar": 0}


def pretrain(
    model: nn.Sequential, cfg: TrainConfig, x: Tensor, y: Tensor, *, max_steps: int, target_acc: float = 0.9
) -> float:
    """Standard training steps on (x, y) until ``target_acc``; returns the last accuracy
    (measured on the logits of the last step, before its update)."""
    method = build_method(cfg.replace(method="standard"), STEPS_PER_EPOCH)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    acc = 0.0
    for _ in range(max_steps):
        res, _ = train_step(model, method, opt, None, x, y, 0, grad_clip=cfg.grad_clip)
        acc = (res.logits.argmax(1) == y).float().mean().item()
        if acc >= target_acc:
            break
    return acc


def acert_warmup(model: nn.Sequential, cfg: TrainConfig, x: Tensor, y: Tensor, step: int, n: int) -> float:
    """``n`` ACERT steps, so that the certified radii are not all zero; the last mean radius."""
    method = build_method(cfg.replace(method="acert"), STEPS_PER_EPOCH)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    radius = 0.0
    for _ in range(n):
        res, _ = train_step(model, method, opt, None, x, y, step, grad_clip=cfg.grad_clip)
        radius = float(res.mean_radius)
    return radius


def solver_worst_fn(model: nn.Sequential, x: Tensor, y: Tensor, eps: float, iters: int) -> Callable[[], None]:
    """What the ACERT solver costs at most: ``iters`` bound evaluations of the whole batch."""
    from trainers.bounds import clean_pass
    from trainers.bounds.engine import BoundContext, ibp_margins_fn

    idx = torch.arange(x.shape[0], device=x.device)
    e = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
    with torch.no_grad():  # the clean pass is the loss's, shared with the solver: not timed here
        _, clean_ctx = clean_pass(model, x)

    def run() -> None:
        with torch.no_grad():
            f = ibp_margins_fn(model, x, y, BoundContext(affines=dict(clean_ctx.affines)))
            for _ in range(iters):
                f(idx, e).min(1).values.sum().item()  # a solver syncs on every step

    return run


def train_step_fn(
    method: TrainingMethod, model: nn.Module, x: Tensor, y: Tensor, step: int, grad_clip: float, stats: dict
) -> Callable[[], None]:
    """One ``trainers.train.train_step`` of ``method`` on (x, y), as a closure with its own Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def run() -> None:
        res, _ = train_step(model, method, opt, None, x, y, step, grad_clip=grad_clip)
        stats["mean_radius"] = float(res.mean_radius)
        stats["eps_max"] = float(res.eps_max)

    return run


class LirpaIBP:
    """auto_LiRPA's IBP training loss (Shi et al.'s setup) as a training method, so that its
    step is ``train_step`` too: a clean forward pass (BatchNorm statistics of the clean batch),
    the IBP bound with the specification folded into the last layer, robust cross-entropy.

    Its model is ``nn.ModuleList([bounded])``: ``BoundedModule.parameters()`` fails under
    torch 2.14 (its ``_named_members`` override lacks ``remove_duplicate``); the list's own
    ``parameters()`` walks the submodules and works."""

    steps_per_epoch = STEPS_PER_EPOCH

    def __init__(self, lirpa, ptb, c: Tensor, eps: float) -> None:
        self.lirpa, self.ptb, self.c, self.eps = lirpa, ptb, c, eps

    def step(
        self, model: nn.ModuleList, x: Tensor, y: Tensor, step: int, idx: Tensor | None = None
    ) -> StepOutput:
        bounded = model[0]
        logits = bounded(x)  # clean pass: BatchNorm statistics of the clean batch
        bx = self.lirpa.BoundedTensor(x, self.ptb)
        lb, _ = bounded.compute_bounds(x=(bx,), C=self.c, method="IBP", bound_upper=False)
        return StepOutput(robust_ce(lb), logits, self.eps, self.eps)


def lirpa_step_fn(
    model: nn.Sequential, x: Tensor, y: Tensor, eps: float, grad_clip: float
) -> Callable[[], None]:
    """auto_LiRPA's IBP training step (``LirpaIBP`` through ``train_step``) on a copy of ``model``."""
    from tests.lirpa import compat
    from tests.lirpa.backend import _lirpa_friendly, _load, spec_matrix
    from trainers.bounds.engine import input_box

    lirpa = _load()
    net = _lirpa_friendly(copy.deepcopy(model).eval())
    with compat.quiet_exporter():
        bounded = lirpa.BoundedModule(
            net, torch.zeros_like(x), bound_opts={"relu": "adaptive"}, device=x.device
        )
    bounded.train()
    e = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
    lo, hi = input_box(x, e)
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=e.view(-1, 1, 1, 1), x_L=lo, x_U=hi)
    method = LirpaIBP(lirpa, ptb, spec_matrix(y, NUM_CLASSES, dtype=x.dtype), eps)
    return train_step_fn(method, nn.ModuleList([bounded]), x, y, 0, grad_clip, {})


def bench_config(
    arch: str, spec, batch: int, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    model_name, dataset, shape, width = spec
    model = build_model(
        model_name,
        input_shape=shape,
        num_classes=NUM_CLASSES,
        mean=(0.5,) * shape[0],
        std=(0.25,) * shape[0],
        width=width,
    )
    ibp_init(model)
    model = model.to(device).train()
    x, y = prototype_batch(batch, shape, NUM_CLASSES, args.seed)
    x, y = x.to(device), y.to(device)
    cfg = TrainConfig(
        dataset=dataset,
        method="acert",
        epochs=EPOCHS,
        std_epochs=STD_EPOCHS,
        ramp_epochs=RAMP_EPOCHS,
        batch_size=batch,
        kappa=KAPPA[dataset],
        device=device.type,
    ).replace(radius_solver="exact")  # the paper's solver: one step has no carried radii
    acc = pretrain(model, cfg, x, y, max_steps=args.pretrain_steps)
    final_step = EPOCHS * STEPS_PER_EPOCH - 1
    step = (STD_EPOCHS + RAMP_EPOCHS // 2) * STEPS_PER_EPOCH if args.phase == "ramp" else final_step
    eps_t = Schedule(cfg, STEPS_PER_EPOCH).eps_max(step)
    warm = args.acert_warmup if args.acert_warmup is not None else WARMUP_STEPS[arch]
    radius = acert_warmup(model, cfg, x, y, step, warm)
    counter = EvalCounter()  # the timed ACERT method's solver: its bound evaluations, nothing else
    fns, stats = {}, {}
    for name in args.methods:
        seams = {"bound_factory": counter} if name == "acert" else {}
        registered, params = VARIANTS.get(name, (name, {}))
        method = build_method(cfg.replace(method=registered, **params), STEPS_PER_EPOCH, **seams)
        stats[name] = {}
        fns[name] = train_step_fn(method, copy.deepcopy(model), x, y, step, cfg.grad_clip, stats[name])
    if args.phase == "ramp" and "ibp" in args.methods:
        method = build_method(cfg.replace(method="ibp"), STEPS_PER_EPOCH)
        fns["ibp_final"] = train_step_fn(method, copy.deepcopy(model), x, y, final_step, cfg.grad_clip, {})
    if "acert" in args.methods:
        worst = solver_worst_fn(copy.deepcopy(model).train(), x, y, eps_t / 2, cfg.params.root_iters)
        fns["acert_solver_worst"] = worst
    out: dict[str, Any] = {
        "arch": arch,
        "model": model_name,
        "input_shape": list(shape),
        "batch": batch,
        "dataset_settings": dataset,
        "kappa": cfg.kappa,
        "eps_max": eps_t,
        "pretrain_acc": acc,
        "acert_warmup_steps": warm,
        "acert_warmup_radius_over_eps_max": radius / max(eps_t, 1e-12),
    }
    if args.lirpa:
        from tests.lirpa.backend import auto_lirpa_available

        ok, why = auto_lirpa_available()
        if ok:
            try:
                fns["autolirpa_ibp"] = lirpa_step_fn(model, x, y, eps_t, cfg.grad_clip)
            except Exception as exc:  # noqa: BLE001 -- a comparison, not a requirement
                out["autolirpa_error"] = f"{type(exc).__name__}: {exc}"[:300]
        else:
            out["autolirpa_error"] = why[:300]
    log(f"step: {arch} batch {batch}: {', '.join(fns)} x {args.reps} reps")
    times = interleaved(fns, reps=args.reps, warmup=args.warmup, device=device)
    out["median_ms"] = {k: 1000 * median(v) for k, v in times.items()}
    for name in fns:
        if name not in ("standard", "acert_solver_worst"):
            out[f"{name.replace('-', '_')}_ratio"] = ratio(times, name, "standard")
    for name in fns:
        if name not in ("standard", "ibp", "ibp_final", "acert_solver_worst") and "ibp" in times:
            key = f"{name.replace('-', '_')}_over_ibp"
            out[key] = ratio(times, name, "ibp")
            out[f"{key}_paired"] = paired_ratio(times, name, "ibp")
    if "ibp_final" in times:
        out["ibp_ramp_over_final"] = ratio(times, "ibp", "ibp_final")
        # the median of the per-round ratios: steadier when other jobs load the machine
        out["ibp_ramp_over_final_paired"] = paired_ratio(times, "ibp", "ibp_final")
    out["load_avg_1_5_15min"] = [round(v, 2) for v in os.getloadavg()]  # a shared machine's load
    if "acert" in stats:
        out["acert_mean_radius_over_eps_max"] = stats["acert"].get("mean_radius", 0.0) / max(eps_t, 1e-12)
        out["acert_sample_evals_per_sample"] = counter.samples / ((args.reps + args.warmup) * batch)
        # ACERT whose solver runs all root_iters evaluations on the whole batch: its upper bound
        worst = median(times["ibp"]) + median(times["acert_solver_worst"])
        out["acert_worst_case_ratio"] = worst / median(times["standard"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--archs", default="mnist,cifar", help=f"comma-separated, from {', '.join(ARCHS)}")
    p.add_argument("--batch-sizes", default="128,256")
    p.add_argument("--methods", default=",".join(METHODS), help="standard is always included")
    p.add_argument("--phase", default="ramp", choices=["ramp", "final"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--pretrain-steps", type=int, default=60, help="standard steps at most, to 90%% accuracy")
    p.add_argument(
        "--acert-warmup",
        type=int,
        default=None,
        help="ACERT steps after that (default: 30 for mnist; 0 for cifar, whose radii stay 0 "
        "on the synthetic batch and whose steps are slow on CPU)",
    )
    p.add_argument("--no-lirpa", dest="lirpa", action="store_false", help="skip the auto_LiRPA IBP step")
    args = p.parse_args(argv)
    archs = QUICK_ARCHS if args.quick else ARCHS
    names = [a for a in args.archs.split(",") if a]
    unknown = [a for a in names if a not in archs]
    if unknown:
        p.error(f"unknown arch(s) {unknown}; known: {', '.join(archs)}")
    args.methods = ["standard"] + [m for m in args.methods.split(",") if m and m != "standard"]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; known: {', '.join(METHODS)}")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if args.quick:
        batches, args.reps, args.warmup, args.pretrain_steps = [8], args.reps or 1, 0, 5
        args.acert_warmup = 2
    args.reps = args.reps or 5
    device = setup(args)
    configs = [bench_config(a, archs[a], b, args, device) for a in names for b in batches]
    keys = (
        "ibp_ratio",
        "ibp_ramp_over_final",
        "crown_ibp_ratio",
        "crown_ibp_over_ibp",
        "crown_ibp_fused_over_ibp",
        "acert_ratio",
        "acert_worst_case_ratio",
        "autolirpa_ibp_ratio",
    )
    summary = {f"max_{k}": max(c[k] for c in configs) for k in keys if all(k in c for c in configs)}
    emit(
        {
            "benchmark": "step",
            "machine": machine(device),
            "phase": args.phase,
            "reps": args.reps,
            "goal": {
                "ibp_ratio": 2.3,
                "acert_ratio": 2.3,
                "ibp_ramp_over_final": 1.15,
                "crown_ibp_fused_over_ibp": 2.0,
            },
            "summary": summary,
            "configs": configs,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
