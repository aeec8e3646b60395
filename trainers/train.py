"""The training loop and its command line.

    python -m trainers.train --dataset mnist --method acert --epochs 10 --output-dir OUT

Each epoch: one pass over the training split (the method computes the loss), then clean
accuracy on the validation split and ACR on a validation subset; ``OUT/model.pt`` (rebuild
with ``model, meta = trainers.models.load_model("OUT/model.pt")``) and ``OUT/state.pt``
(optimiser and schedule, for resuming) are rewritten. After the last epoch the test split
is certified (reported only: selection uses validation figures).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainers import metrics as M
from trainers.certify import evaluate_on
from trainers.config import TrainConfig
from trainers.data import Splits, iterate_batches
from trainers.methods import TRAINING_METHODS, StepOutput, TrainingMethod, build_method
from trainers.models import build_model, ibp_init, pick_device, save_checkpoint
from trainers.settings import OneLineParser, add_fields

EpochCallback = Callable[[dict[str, Any], Path], None]


class DivergedError(RuntimeError):
    """The loss became NaN or infinite: the trial ends as FAILED with this message."""


class StopRequested(Exception):
    """``should_stop`` said yes between two steps (a preempted trial): the epoch in progress is
    dropped and ``output_dir`` still holds the last finished one (``.epoch``, 0 if none)."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"stop requested during epoch {epoch + 1}; {epoch} finished")
        self.epoch = epoch


def build(cfg: TrainConfig, splits: Splits, device: torch.device) -> nn.Sequential:
    spec = splits.spec
    model = build_model(
        cfg.model_name,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        mean=spec.mean,
        std=spec.std,
        width=cfg.width,
    )
    if cfg.ibp_init and TRAINING_METHODS.get(cfg.method).certified:
        ibp_init(model)
    return model.to(device)


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.OneCycleLR]:
    """Adam and the one-cycle schedule of the paper's code (the authors' configs; docs/method.md):
    linear, in three phases, from cfg.lr / 25 up to cfg.lr over the first 30 % of the steps, back
    to cfg.lr / 25 over the next 30 %, then down to cfg.lr / 25 / 100 (PyTorch divides the
    *initial* lr by ``final_div_factor``). Adam's beta1 cycles between 0.95 and 0.85, inversely,
    as PyTorch's default does (the authors left it on too).

    The schedule gets one step more than the run has updates: the loop steps it after every
    update, so its last call lands on the final lr. With exactly ``total_steps`` PyTorch
    extrapolates one step past the end, and a short linear run would report a negative lr."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=cfg.lr,
        total_steps=total_steps + 1,
        pct_start=0.3,
        anneal_strategy="linear",
        three_phase=True,
        div_factor=25.0,
        final_div_factor=100.0,
    )
    return opt, sched


def l1_norm(model: nn.Module) -> Tensor:
    """sum |w| over the weights of the convolutions and linear layers (biases and BatchNorm
    excluded): the L1 weight decay of the paper's code, whose TinyImageNet setting adds
    1e-4 times it to the loss."""
    weights = [m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return torch.stack(weights).sum()


def method_state(method: TrainingMethod) -> dict:
    """What a method keeps across epochs (ACERT's warm radii), for checkpoints; {} for most."""
    return method.state_dict()


def _save(
    out: Path, model: nn.Sequential, cfg: TrainConfig, splits: Splits, opt, sched, epoch: int, history, method
) -> None:
    spec = splits.spec
    save_checkpoint(
        out / "model.pt",
        model,
        arch=cfg.model_name,
        input_shape=list(spec.input_shape),
        num_classes=spec.num_classes,
        mean=list(spec.mean),
        std=list(spec.std),
        width=cfg.width,
        config=cfg.to_dict(),
        extra={"epoch": epoch},
    )
    tmp = out / "state.pt.tmp"
    torch.save(
        {
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch,
            "history": history,
            "model": model.state_dict(),
            "method": method_state(method),
        },
        tmp,
    )
    tmp.replace(out / "state.pt")


def validate(
    model: nn.Sequential, splits: Splits, cfg: TrainConfig, device: torch.device, split: str
) -> dict:
    """Clean accuracy on the whole split, ACR and certified accuracy on its first samples."""
    x, y = (splits.x_val, splits.y_val) if split == "val" else (splits.x_test, splits.y_test)
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(xb).argmax(1) == yb).sum())
            for xb, yb in iterate_batches(x, y, 1024, shuffle=False, generator=None, device=device)
        )
    n_cert = cfg.val_acr_samples if split == "val" else (cfg.test_samples or x.shape[0])
    res = evaluate_on(
        splits.spec,
        model,
        x[:n_cert],
        y[:n_cert],
        method=cfg.cert_method,
        rel_tol=cfg.cert_rel_tol,
        device=device,
    )
    out = {
        M.split_key(split, M.ACC): correct / max(1, x.shape[0]),
        M.split_key(split, M.ACR): res[M.ACR],
        M.split_key(split, M.ACR_NORM): res[M.ACR_NORM],
        M.split_key(split, M.ACR_UNCAPPED): res[M.ACR_UNCAPPED],
    }
    out.update({M.cert_acc_key(e, split): v for e, v in res[M.CERT_ACC].items()})
    return out


def run_training(
    cfg: TrainConfig,
    *,
    output_dir: str | Path,
    on_epoch: EpochCallback | None = None,
    resume: bool = True,
    log: Callable[[str], None] = print,
    splits: Splits | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``output_dir``; resumes from ``output_dir/state.pt`` when present.

    ``splits``: the data ``cfg.load_splits()`` would load, already loaded (a reused trial
    process keeps it). ``should_stop`` is asked before every step; a yes raises
    :class:`StopRequested` with ``output_dir`` at the last finished epoch."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.init_seed)
    splits = splits if splits is not None else cfg.load_splits()
    model = build(cfg, splits, device)
    steps_per_epoch = math.ceil(splits.x_train.shape[0] / cfg.batch_size)
    method = build_method(cfg, steps_per_epoch)
    opt, sched = build_optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    start, history = 0, []
    if resume and (out / "state.pt").exists():
        # tensors and plain types only: the file lies on storage every trial can write
        state = torch.load(out / "state.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["epoch"], state["history"]
        if state.get("method"):
            method.load_state_dict(state["method"])
        log(f"resuming {out} after epoch {start}")
    for epoch in range(start, cfg.epochs):
        metrics = train_epoch(
            model, method, opt, sched, splits, cfg, epoch, device, splits.spec.augment, should_stop
        )
        metrics.update(validate(model, splits, cfg, device, "val"))
        if epoch == cfg.epochs - 1:
            if cfg.eval_test_at_end:
                metrics.update(validate(model, splits, cfg, device, "test"))
            metrics[M.DONE] = True
        history.append(metrics)
        _save(out, model, cfg, splits, opt, sched, epoch + 1, history, method)
        log(format_metrics(metrics))
        if on_epoch is not None:
            on_epoch(metrics, out)
    return history[-1] if history else {}


def train_step(
    model: nn.Sequential,
    method: TrainingMethod,
    opt: torch.optim.Optimizer,
    sched,
    x: Tensor,
    y: Tensor,
    step: int,
    *,
    grad_clip: float,
    idx: Tensor | None = None,
    l1: float = 0.0,
) -> tuple[StepOutput, float]:
    """One optimisation step: the method's loss (plus ``l1`` times :func:`l1_norm`), a
    divergence check, backward, clip, update.

    The seam the loop and ``bench.step`` share. Returns the method's output and the loss value
    (with the L1 term)."""
    res = method.step(model, x, y, step, idx=idx)
    total = res.loss + l1 * l1_norm(model) if l1 > 0 else res.loss
    loss = total.item()  # sync point: a NaN must stop the trial before it reaches the weights
    if not math.isfinite(loss):
        raise DivergedError(f"loss is {loss} at step {step} (eps_max={res.eps_max:.4g})")
    opt.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    if sched is not None:
        sched.step()
    return res, loss


def train_epoch(
    model,
    method,
    opt,
    sched,
    splits: Splits,
    cfg: TrainConfig,
    epoch: int,
    device,
    augment: bool,
    should_stop: Callable[[], bool] | None = None,
):
    t0 = time.perf_counter()
    model.train()
    gen = torch.Generator().manual_seed(cfg.init_seed * 100_003 + epoch)  # epoch-seeded: resumable
    n, loss_sum, correct, radius_sum, eps_max = 0, 0.0, 0, 0.0, 0.0
    batches = iterate_batches(
        splits.x_train,
        splits.y_train,
        cfg.batch_size,
        shuffle=True,
        generator=gen,
        device=device,
        augment=augment,
        with_index=True,
    )
    for i, (x, y, idx) in enumerate(batches):
        if should_stop is not None and should_stop():
            raise StopRequested(epoch)
        step = epoch * method.steps_per_epoch + i
        res, loss = train_step(
            model, method, opt, sched, x, y, step, grad_clip=cfg.grad_clip, idx=idx, l1=cfg.l1
        )
        b = y.shape[0]
        n += b
        loss_sum += loss * b
        correct += int((res.logits.argmax(1) == y).sum())
        radius_sum += float(res.mean_radius) * b
        eps_max = res.eps_max
    return {
        M.EPOCH: epoch + 1,
        "train_loss": loss_sum / n,
        "train_acc": correct / n,
        "mean_radius": radius_sum / n,
        "eps_max": eps_max,
        "lr": sched.get_last_lr()[0],
        "epoch_time_s": time.perf_counter() - t0,
    }


def format_metrics(m: dict[str, Any]) -> str:
    keys = (
        "epoch",
        "train_loss",
        "train_acc",
        "mean_radius",
        "eps_max",
        M.VAL_ACC,
        M.VAL_ACR,
        M.TEST_ACC,
        M.TEST_ACR,
        "epoch_time_s",
    )
    return "  ".join(f"{k}={m[k]:.4g}" if isinstance(m[k], float) else f"{k}={m[k]}" for k in keys if k in m)


# --- command line ------------------------------------------------------------------------
def build_parser() -> OneLineParser:
    """Flags generated from :class:`TrainConfig` and every registered method's params."""
    p = OneLineParser(prog="python -m trainers.train", description=__doc__)
    p.add_argument("--output-dir", required=True, help="where model.pt, state.pt are written")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/state.pt exists")
    add_fields(p, TrainConfig)
    for _, spec in TRAINING_METHODS.items():  # method settings: only those given are passed on
        add_fields(p, spec.params, suppress_defaults=True)
    return p


def parse_train_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Flags -> validated TrainConfig (a method setting the method does not take is an error)."""
    ns = build_parser().parse_args(argv)
    values = {k: v for k, v in vars(ns).items() if k not in ("output_dir", "no_resume")}
    return TrainConfig.from_dict(values), ns


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, ns = parse_train_args(argv)
        final = run_training(cfg, output_dir=ns.output_dir, resume=not ns.no_resume)
    except ValueError as e:  # ConfigError (bad flags, DataMissingError), or a bad value found at run time
        print(f"python -m trainers.train: error: {e}", file=sys.stderr)
        return 2
    except DivergedError as e:
        print(f"diverged: {e}", file=sys.stderr)
        return 1
    print("final: " + format_metrics(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
