"""Certification: per-sample certified radius, ACR and certified accuracy.

    python -m trainers.certify --checkpoint OUT/model.pt --dataset mnist --output-dir CERT

writes ``CERT/radii.csv`` (index, label, prediction, certified radius) and
``CERT/summary.json`` (clean_acc, acr, acr_norm, cert_acc {eps: acc}, bound method, tolerance).

A certified radius is the largest eps in [0, eps_cap] at which the margin lower bound was
checked to be positive (``trainers.rootfind``); misclassified samples get 0. ACR is the mean
radius over all samples. A sample counts as certified only if its bound exceeds a small
float32 safety margin (``SAFETY_REL`` times its logit scale), so that rounding in the bound
computation cannot turn into a wrong certificate.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from trainers.bounds import get_bound_method
from trainers.bounds.engine import BoundContext, ibp_margins_fn
from trainers.rootfind import min_margin, solve_radius

SAFETY_REL = 1e-5  # certified iff bound > SAFETY_REL * (1 + max |logit|)


def as_float(x: Tensor) -> Tensor:
    """Images stored as uint8 become float32 in [0, 1]; float data is passed through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def certified_radii_batch(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    *,
    eps_cap: float,
    method: str = "ibp",
    rel_tol: float = 1e-3,
    abs_tol: float | None = None,
    max_iter: int = 64,
    ctx: BoundContext | None = None,
    safety: bool = True,
) -> tuple[Tensor, Tensor]:
    """(certified radius [B], prediction [B]) for one batch, all samples in lockstep."""
    bound = get_bound_method(method)
    logits = model(x)
    pred = logits.argmax(1)
    others = torch.ones_like(logits, dtype=torch.bool).scatter_(1, y[:, None], False)
    clean_margin = logits.gather(1, y[:, None]).squeeze(1) - logits.masked_fill(~others, float("-inf")).amax(1)
    clean_margin = torch.where(pred == y, clean_margin, torch.zeros_like(clean_margin))
    threshold = SAFETY_REL * (1 + logits.abs().amax(1)) if safety else torch.zeros_like(clean_margin)

    if method == "ibp":  # same bounds; the folded specification is built once per batch
        ibp_fn = ibp_margins_fn(model, x, y, ctx)

        def f(idx: Tensor, eps: Tensor) -> Tensor:
            return min_margin(ibp_fn(idx, eps))
    else:

        def f(idx: Tensor, eps: Tensor) -> Tensor:
            return min_margin(bound(model, x[idx], y[idx], eps, ctx))

    radii = solve_radius(
        f,
        clean_margin,
        eps_cap,
        rel_tol=rel_tol,
        abs_tol=eps_cap * 1e-5 if abs_tol is None else abs_tol,
        max_iter=max_iter,
        threshold=threshold,
    )
    return radii, pred


def certified_radii(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    *,
    eps_cap: float,
    method: str = "ibp",
    rel_tol: float = 1e-3,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Certified radii and predictions of a whole split (model put in eval mode), on CPU."""
    was_training = model.training
    model.eval()
    radii, preds = [], []
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = as_float(x[start : start + batch_size]).to(device)
            yb = y[start : start + batch_size].to(device)
            r, p = certified_radii_batch(model, xb, yb, eps_cap=eps_cap, method=method, rel_tol=rel_tol)
            radii.append(r.cpu())
            preds.append(p.cpu())
    finally:
        model.train(was_training)
    return torch.cat(radii), torch.cat(preds)


def summarize(radii: Tensor, preds: Tensor, y: Tensor, cert_eps: tuple[float, ...], max_eps: float | None) -> dict:
    """clean_acc, acr (misclassified count as 0), acr_norm (= acr / max_eps) and cert_acc."""
    correct = preds == y
    r = torch.where(correct, radii, torch.zeros_like(radii)).double()
    out = {
        "n": int(y.numel()),
        "clean_acc": correct.double().mean().item(),
        "acr": r.mean().item(),
        "cert_acc": {f"{e:.6g}": (r >= e).double().mean().item() for e in cert_eps},
    }
    if max_eps:
        out["acr_norm"] = out["acr"] / max_eps
    return out


def evaluate(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    *,
    eps_cap: float,
    cert_eps: tuple[float, ...],
    max_eps: float | None = None,
    method: str = "ibp",
    rel_tol: float = 1e-3,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> dict:
    """Certify a split and summarise it; the dict also carries the radii for callers that write them."""
    radii, preds = certified_radii(
        model, x, y, eps_cap=eps_cap, method=method, rel_tol=rel_tol, batch_size=batch_size, device=device
    )
    summary = summarize(radii, preds, y, cert_eps, max_eps)
    summary.update({"method": method, "rel_tol": rel_tol, "eps_cap": eps_cap})
    return {**summary, "radii": radii, "preds": preds}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainers.certify",
        description="Certify a checkpoint: per-sample certified radii, ACR and certified accuracy.",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt written by trainers.train")
    p.add_argument("--dataset", required=True, help="data set to certify on (its test split)")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--no-download", action="store_true", help="fail if the data set is not on disk")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--method", default="ibp", choices=["ibp", "crown-ibp", "best"])
    p.add_argument("--rel-tol", type=float, default=1e-3, help="relative tolerance of the radius search")
    p.add_argument("--eps-cap", type=float, default=None, help="largest radius searched (default: per data set)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--limit", type=int, default=None, help="certify only the first N samples")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv: list[str] | None = None) -> int:
    from trainers.config import DATASET_DEFAULTS
    from trainers.data import DATASETS, DataMissingError, load_splits
    from trainers.models import load_model, pick_device

    args = _parser().parse_args(argv)
    try:
        if args.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {args.dataset!r}; known: {', '.join(sorted(DATASETS))}")
        if not Path(args.checkpoint).is_file():
            raise ValueError(f"checkpoint not found: {args.checkpoint}")
        if not 0 < args.rel_tol < 1:
            raise ValueError(f"--rel-tol must lie in (0, 1), got {args.rel_tol}")
        device = pick_device(args.device)
        model, meta = load_model(args.checkpoint)
        cfg = meta.get("config", {})
        splits = load_splits(
            args.dataset, data_dir=args.data_dir, download=not args.no_download,
            val_fraction=cfg.get("val_fraction", 0.1), seed=cfg.get("seed", 0),
            synthetic_size=cfg.get("synthetic_size", 2048),
        )
    except (ValueError, DataMissingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    x, y = (splits.x_test, splits.y_test) if args.split == "test" else (splits.x_val, splits.y_val)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    defaults = DATASET_DEFAULTS[args.dataset]
    cap = args.eps_cap or defaults["eps_cap"]
    model.to(device)
    res = evaluate(model, x, y, eps_cap=cap, cert_eps=defaults["cert_eps"], max_eps=defaults["max_eps"],
                   method=args.method, rel_tol=args.rel_tol, batch_size=args.batch_size, device=device)
    write_outputs(Path(args.output_dir), res, y)
    print(json.dumps({k: v for k, v in res.items() if k not in ("radii", "preds")}, indent=2))
    return 0


def write_outputs(out: Path, res: dict, y: Tensor) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "radii.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "label", "prediction", "certified_radius"])
        for i, (label, pred, rad) in enumerate(zip(y.tolist(), res["preds"].tolist(), res["radii"].tolist())):
            w.writerow([i, label, pred, f"{rad:.9g}"])
    summary = {k: v for k, v in res.items() if k not in ("radii", "preds")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())
