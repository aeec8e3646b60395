"""Certification: per-sample certified radius, ACR and certified accuracy.

    python -m trainers.certify --checkpoint OUT/model.pt --dataset mnist --output-dir CERT

writes ``CERT/radii.csv`` (index, label, prediction, certified radius) and
``CERT/summary.json`` (clean_acc, acr, acr_norm in %, acr_uncapped, cert_acc {eps: acc}, bound
method, tolerance). ``--cert-method`` (alias ``--method``) picks the bound: ``ibp`` (default),
``crown-ibp``, ``crown`` or ``best``.

``best`` gives each sample the largest of its radii certified with IBP, CROWN-IBP and CROWN
(``trainers.bounds.BEST_OF``), each searched on its own. A certificate is sound if any sound
bound proves it, so the maximum is sound. The maximum of radii, rather than one search on the
element-wise maximum of the margins (the registered ``best`` bound), because the radius search
assumes a bound that only shrinks as eps grows, which CROWN's need not (its relaxation changes
with the intermediate bounds): a search on the combined margins can stop below a radius one of
the methods certifies alone, the maximum of radii never does. The cost is the sum of the three
searches (``bench.certify``).

A certified radius is the largest eps in [0, eps_cap] at which the margin lower bound was
checked to be positive (``trainers.rootfind``); misclassified samples get 0. ACR is the mean
over all samples of min(radius, max_eps), as in the published evaluation, which searches radii
only up to the data set's max_eps (docs/method.md); ``acr_uncapped`` is the mean of the radii as
certified. A sample counts as certified only if its bound exceeds a small float32 safety
margin (``SAFETY_REL`` times its logit scale), so that rounding in the bound computation
cannot turn into a wrong certificate.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from trainers import metrics as M
from trainers.bounds import BEST_OF, get_bound_method
from trainers.bounds.engine import BoundContext, ibp_margins_fn
from trainers.config import DEVICES, TrainConfig, _names
from trainers.rootfind import min_margin, solve_radius
from trainers.settings import OneLineParser, add_fields, bad, fields_from, flag_of, same_as, setting

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
    solver=solve_radius,
) -> tuple[Tensor, Tensor]:
    """(certified radius [B], prediction [B]) for one batch, all samples in lockstep.

    ``solver`` has the signature of :func:`trainers.rootfind.solve_radius` (benchmarks pass
    one that counts the bound evaluations)."""
    if method == "best":
        return _best_radii(model, x, y, eps_cap, ctx, dict(rel_tol=rel_tol, abs_tol=abs_tol, max_iter=max_iter,
                           safety=safety, solver=solver))  # fmt: skip
    bound = get_bound_method(method)
    logits = model(x)
    pred = logits.argmax(1)
    others = torch.ones_like(logits, dtype=torch.bool).scatter_(1, y[:, None], False)
    clean_margin = logits.gather(1, y[:, None]).squeeze(1) - logits.masked_fill(~others, float("-inf")).amax(
        1
    )
    clean_margin = torch.where(pred == y, clean_margin, torch.zeros_like(clean_margin))
    threshold = SAFETY_REL * (1 + logits.abs().amax(1)) if safety else torch.zeros_like(clean_margin)

    if method == "ibp":  # same bounds; the folded specification is built once per batch
        ibp_fn = ibp_margins_fn(model, x, y, ctx)

        def f(idx: Tensor, eps: Tensor) -> Tensor:
            return min_margin(ibp_fn(idx, eps))
    else:

        def f(idx: Tensor, eps: Tensor) -> Tensor:
            # a fresh context with the batch's BatchNorm maps only: CROWN-IBP would otherwise
            # reuse pre-activation bounds recorded for another box (another radius or sub-batch)
            fresh = None if ctx is None else BoundContext(affines=ctx.affines)
            return min_margin(bound(model, x[idx], y[idx], eps, fresh))

    radii = solver(
        f,
        clean_margin,
        eps_cap,
        rel_tol=rel_tol,
        abs_tol=eps_cap * 1e-5 if abs_tol is None else abs_tol,
        max_iter=max_iter,
        threshold=threshold,
    )
    return radii, pred


def _best_radii(
    model: nn.Sequential, x: Tensor, y: Tensor, eps_cap: float, ctx: BoundContext | None, kw: dict
) -> tuple[Tensor, Tensor]:
    """Each sample's largest radius over the methods of ``BEST_OF``, searched one method after
    the other, the cheapest first; a sample certified at the cap already is not searched again
    (no method can give it more)."""
    radii, pred = certified_radii_batch(model, x, y, eps_cap=eps_cap, method=BEST_OF[0], ctx=ctx, **kw)
    for m in BEST_OF[1:]:
        todo = (radii < eps_cap).nonzero().squeeze(1)
        if todo.numel():
            r, _ = certified_radii_batch(model, x[todo], y[todo], eps_cap=eps_cap, method=m, ctx=ctx, **kw)
            radii[todo] = torch.maximum(radii[todo], r)
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
    solver=solve_radius,
) -> tuple[Tensor, Tensor]:
    """Certified radii and predictions of a whole split (model put in eval mode), on CPU."""
    was_training = model.training
    model.eval()
    radii, preds = [], []
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = as_float(x[start : start + batch_size]).to(device)
            yb = y[start : start + batch_size].to(device)
            r, p = certified_radii_batch(
                model, xb, yb, eps_cap=eps_cap, method=method, rel_tol=rel_tol, solver=solver
            )
            radii.append(r.cpu())
            preds.append(p.cpu())
    finally:
        model.train(was_training)
    return torch.cat(radii), torch.cat(preds)


def summarize(
    radii: Tensor, preds: Tensor, y: Tensor, cert_eps: tuple[float, ...], max_eps: float | None
) -> dict:
    """clean_acc, acr, acr_norm, acr_uncapped and cert_acc (misclassified samples count as 0).

    ``acr`` is the mean of min(radius, max_eps) (docs/method.md: the published evaluation searches
    radii only up to max_eps, so radii above it do not count), ``acr_norm`` that in % of
    max_eps (at most 100), ``acr_uncapped`` the mean of the radii as certified. Capping is
    sound: a box of radius max_eps lies inside the checked box of any larger radius. Without
    ``max_eps`` there is nothing to cap at: ``acr`` is the uncapped mean and ``acr_norm`` absent.
    """
    correct = preds == y
    r = torch.where(correct, radii, torch.zeros_like(radii)).double()
    uncapped = r.mean().item()
    out = {
        "n": int(y.numel()),
        "clean_acc": correct.double().mean().item(),
        M.ACR: r.clamp(max=max_eps).mean().item() if max_eps else uncapped,
        M.ACR_UNCAPPED: uncapped,
        M.CERT_ACC: {M.eps_key(e): (r >= e).double().mean().item() for e in cert_eps},
    }
    if max_eps:
        out[M.ACR_NORM] = 100.0 * out[M.ACR] / max_eps
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
    solver=solve_radius,
) -> dict:
    """Certify a split and summarise it; the dict also carries the radii for callers that write them."""
    radii, preds = certified_radii(
        model,
        x,
        y,
        eps_cap=eps_cap,
        method=method,
        rel_tol=rel_tol,
        batch_size=batch_size,
        device=device,
        solver=solver,
    )
    summary = summarize(radii, preds, y, cert_eps, max_eps)
    summary.update({"method": method, "rel_tol": rel_tol, "eps_cap": eps_cap, "max_eps": max_eps})
    return {**summary, "radii": radii, "preds": preds}


@dataclass(frozen=True)
class CertifyConfig:
    """The settings of ``python -m trainers.certify``."""

    checkpoint: str = setting(help="model.pt written by trainers.train")
    dataset: str = setting(help="data set to certify on", known=lambda: _names("trainers.data", "DATASETS"))
    output_dir: str = setting(help="where radii.csv and summary.json are written")
    data_dir: str = same_as(TrainConfig, "data_dir")
    download: bool = same_as(TrainConfig, "download")
    cert_method: str = setting(
        "ibp",
        "bound method of the certificates (alias --method); best: each sample's largest radius over "
        "ibp, crown-ibp and crown",
        known=lambda: _names("trainers.bounds", "BOUND_METHODS"),
    )
    rel_tol: float = setting(1e-3, "relative tolerance of the radius search")
    eps_cap: float | None = setting(None, "largest radius searched (default: the data set's)")
    split: str = setting("test", "split to certify: test or val")
    limit: int | None = setting(None, "certify only the first N samples")
    batch_size: int = setting(512, "samples certified together")
    device: str = same_as(TrainConfig, "device")

    def __post_init__(self) -> None:
        from trainers.bounds import BOUND_METHODS
        from trainers.data import DATASETS

        if self.dataset not in DATASETS:
            raise bad("--dataset", self.dataset, f"known: {', '.join(DATASETS.names())}")
        if self.cert_method not in BOUND_METHODS:
            raise bad("--cert-method", self.cert_method, f"known: {', '.join(BOUND_METHODS.names())}")
        if not Path(self.checkpoint).is_file():
            raise bad("--checkpoint", self.checkpoint, "no such file")
        if not 0 < self.rel_tol < 1:
            raise bad("--rel-tol", self.rel_tol, "must lie in (0, 1)")
        if self.split not in ("test", "val"):
            raise bad("--split", self.split, "choose test or val")
        if self.eps_cap is not None and not self.eps_cap > 0:
            raise bad("--eps-cap", self.eps_cap, "must be > 0")
        for name in ("limit", "batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise bad("--" + name.replace("_", "-"), v, "must be >= 1")
        if self.device not in DEVICES:
            raise bad("--device", self.device, f"choose one of {', '.join(DEVICES)}")


def evaluate_on(
    spec, model: nn.Sequential, x: Tensor, y: Tensor, *, eps_cap: float | None = None, **kwargs
) -> dict:
    """``evaluate`` with a data set's radii (a ``DatasetSpec``): its search cap ``eps_cap``
    (unless given), its certified-accuracy radii and its ACR cap ``max_eps``."""
    return evaluate(
        model, x, y, eps_cap=eps_cap or spec.eps_cap, cert_eps=spec.cert_eps, max_eps=spec.max_eps, **kwargs
    )


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="python -m trainers.certify",
        description="Certify a checkpoint: per-sample certified radii, ACR and certified accuracy.",
    )
    for f in dataclasses.fields(CertifyConfig):  # the three without default are required
        if f.default is dataclasses.MISSING:
            p.add_argument(flag_of(f.name), dest=f.name, required=True, help=f.metadata["help"])
    add_fields(p, CertifyConfig)
    add_method_alias(p)
    return p


def add_method_alias(p: OneLineParser) -> None:
    """``--method``, the earlier name of ``--cert-method``, still accepted."""
    p.add_argument("--method", dest="cert_method", default=argparse.SUPPRESS, help="alias of --cert-method")


def main(argv: list[str] | None = None) -> int:
    from trainers.data import load_splits
    from trainers.models import load_model, pick_device

    try:
        args = CertifyConfig(**fields_from(build_parser().parse_args(argv), CertifyConfig))
        device = pick_device(args.device)
        model, meta = load_model(args.checkpoint)
        cfg = meta.get("config", {})
        splits = load_splits(
            args.dataset,
            data_dir=args.data_dir,
            download=args.download,
            val_fraction=cfg.get("val_fraction", 0.1),
            seed=cfg.get("seed", 0),
            synthetic_size=cfg.get("synthetic_size", TrainConfig.synthetic_size),
        )
    except ValueError as e:  # ConfigError, DataMissingError, an unreadable checkpoint
        print(f"python -m trainers.certify: error: {e}", file=sys.stderr)
        return 2
    x, y = (splits.x_test, splits.y_test) if args.split == "test" else (splits.x_val, splits.y_val)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    spec = splits.spec
    model.to(device)
    res = evaluate_on(
        spec,
        model,
        x,
        y,
        eps_cap=args.eps_cap,
        method=args.cert_method,
        rel_tol=args.rel_tol,
        batch_size=args.batch_size,
        device=device,
    )
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
