"""Certificates checked by attack, on a checkpoint, in a fresh process.

    python -m trainers.verify --checkpoint OUT/model.pt --dataset cifar10 --output-dir VERIFY [--limit 1000]

Certifies the split as ``python -m trainers.certify`` does (:func:`trainers.certify.evaluate`),
then attacks it with :func:`trainers.attacks.pgd_attack`:

- at each certified sample's own radius. A sound certificate admits no adversarial example
  there, so every success is a **broken certificate**: it is listed, printed loudly, and the
  exit code is 1;
- at ``--scales`` (1.5 and 3) times that radius. The attack must succeed on some of these: its
  success rates show that finding nothing at the radius itself means something;
- at each of the data set's standard radii (``cert_eps``), on the correctly classified samples:
  the attack's success rate and the PGD accuracy, an upper bound of the certified accuracy. A
  sample certified at a radius >= eps that is attacked successfully at eps is a broken
  certificate too.

A point is adversarial when some other logit is at least the true one (the smallest margin
z_y - z_j is <= 0): a tie already contradicts a certificate, whose bound is strictly positive.

Writes ``VERIFY/radii.csv`` (as trainers.certify) and ``VERIFY/summary.json``: the certification
figures (``acr``, ``acr_norm``, ``acr_uncapped``, ``cert_acc``, ...) and ``success_rate``
({radius multiple: rate over the certified samples}), ``success_rate_at_eps`` and ``pgd_acc``
({eps: ...}), ``broken_certificates`` (count) and ``broken`` (the first 100), ``sound``.
Exit codes: 0 sound, 1 a broken certificate, 2 bad input.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from trainers import metrics as M
from trainers.attacks import eval_mode, margins_of, pgd_attack
from trainers.certify import CertifyConfig, add_method_alias, as_float, evaluate_on, write_outputs
from trainers.config import TrainConfig
from trainers.settings import OneLineParser, add_fields, bad, fields_from, flag_of, setting

MAX_LISTED = 100  # broken certificates listed in summary.json (all are counted)


@dataclass(frozen=True)
class Attack:
    """The PGD settings of the checks (``trainers.attacks.pgd_attack``)."""

    steps: int = 50
    restarts: int = 3
    step_size: float | None = None  # a fraction of the radius; None: 2.5 / steps
    seed: int = 0
    batch_size: int = 512


@dataclass(frozen=True)
class VerifyConfig(CertifyConfig):
    """The settings of ``python -m trainers.verify``: those of trainers.certify, and the attack's."""

    scales: tuple[float, ...] = setting(
        (1.5, 3.0), "multiples (> 1) of each certified radius also attacked, to show the attack works"
    )
    steps: int = setting(Attack.steps, "PGD steps per restart")
    restarts: int = setting(Attack.restarts, "PGD random restarts (the best point over all is kept)")
    step_size: float | None = setting(
        None, "PGD step per coordinate as a fraction of the radius (default: 2.5 / steps)"
    )
    seed: int = setting(Attack.seed, "seed of the attack's random starts")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.scales or any(not s > 1 for s in self.scales):
            raise bad("--scales", ",".join(map(str, self.scales)), "give multiples > 1, e.g. 1.5,3")
        for name in ("steps", "restarts"):
            if getattr(self, name) < 1:
                raise bad("--" + name, getattr(self, name), "must be >= 1")
        if self.step_size is not None and not self.step_size > 0:
            raise bad("--step-size", self.step_size, "must be > 0")

    @property
    def attack(self) -> Attack:
        return Attack(self.steps, self.restarts, self.step_size, self.seed, self.batch_size)


def attack_succeeds(
    model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, attack: Attack, *, device: torch.device | str = "cpu"
) -> Tensor:
    """Per sample (on CPU): did PGD find a point of the clipped box of radius ``eps`` where the
    smallest margin is <= 0? Batched, the model attacked in eval mode."""
    gen = torch.Generator(device=device).manual_seed(attack.seed)
    found, b = [], attack.batch_size
    for start in range(0, x.shape[0], b):
        xb = as_float(x[start : start + b]).to(device)
        yb = y[start : start + b].to(device)
        eb = eps[start : start + b].to(device=device, dtype=xb.dtype)
        x_adv = pgd_attack(
            model,
            xb,
            yb,
            eb,
            steps=attack.steps,
            restarts=attack.restarts,
            step_size=attack.step_size,
            generator=gen,
        )
        with torch.no_grad(), eval_mode(model):
            found.append((margins_of(model(x_adv), yb).min(1).values <= 0).cpu())
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.bool)


def check_certificates(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    radii: Tensor,
    preds: Tensor,
    cert_eps: tuple[float, ...],
    *,
    scales: tuple[float, ...] = (1.5, 3.0),
    attack: Attack = Attack(),
    device: torch.device | str = "cpu",
) -> dict:
    """Attack every certified sample at its radius and at ``scales`` times it, and every correctly
    classified sample at each of ``cert_eps``; the success rates and the broken certificates
    (successes within a certified radius)."""
    certified = (radii > 0) & (preds == y)
    idx = certified.nonzero().squeeze(1)
    broken: list[dict] = []
    success_rate = {}
    for scale in (1.0, *scales):
        hit = attack_succeeds(model, x[idx], y[idx], radii[idx] * scale, attack, device=device)
        success_rate[f"{scale:g}"] = hit.double().mean().item() if idx.numel() else None
        if scale == 1.0:
            broken += [{"index": int(i), "radius": float(radii[i]), "eps": float(radii[i])} for i in idx[hit]]
    correct = (preds == y).nonzero().squeeze(1)
    at_eps, pgd_acc = {}, {}
    for e in cert_eps:
        eps = torch.full((correct.numel(),), e)
        hit = attack_succeeds(model, x[correct], y[correct], eps, attack, device=device)
        at_eps[M.eps_key(e)] = hit.double().mean().item() if correct.numel() else None
        pgd_acc[M.eps_key(e)] = (correct.numel() - int(hit.sum())) / max(1, y.numel())
        wrong = correct[hit & (radii[correct] >= e)]
        broken += [{"index": int(i), "radius": float(radii[i]), "eps": e} for i in wrong]
    return {
        "certified": int(idx.numel()),
        "success_rate": success_rate,
        "success_rate_at_eps": at_eps,
        "pgd_acc": pgd_acc,
        "broken_certificates": len(broken),
        "broken": broken[:MAX_LISTED],
        "sound": not broken,
        "attack": dataclasses.asdict(attack),
    }


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="python -m trainers.verify",
        description="Certify a checkpoint, then attack it within and beyond every certified radius.",
    )
    for f in dataclasses.fields(VerifyConfig):  # the three without default are required
        if f.default is dataclasses.MISSING:
            p.add_argument(flag_of(f.name), dest=f.name, required=True, help=f.metadata["help"])
    add_fields(p, VerifyConfig)
    add_method_alias(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from trainers.data import load_splits
    from trainers.models import load_model, pick_device

    try:
        args = VerifyConfig(**fields_from(build_parser().parse_args(argv), VerifyConfig))
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
        print(f"python -m trainers.verify: error: {e}", file=sys.stderr)
        return 2
    x, y = (splits.x_test, splits.y_test) if args.split == "test" else (splits.x_val, splits.y_val)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    spec = splits.spec
    model.to(device).eval()
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
    check = check_certificates(
        model,
        x,
        y,
        res["radii"],
        res["preds"],
        spec.cert_eps,
        scales=args.scales,
        attack=args.attack,
        device=device,
    )
    out = Path(args.output_dir)
    write_outputs(out, res, y)
    summary = {k: v for k, v in res.items() if k not in ("radii", "preds")}
    summary.update({"checkpoint": args.checkpoint, "dataset": args.dataset, "split": args.split, **check})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "broken"}, indent=2))
    return report(check)


def report(check: dict) -> int:
    """Exit code 1 and a loud message for broken certificates; a warning if the attack found
    nothing even at the largest multiple of the radii (then finding nothing within them is weak)."""
    if check["broken_certificates"]:
        first = check["broken"][0]
        print(
            f"BROKEN CERTIFICATES: PGD found {check['broken_certificates']} adversarial example(s) within "
            f"certified radii (first: sample {first['index']}, radius {first['radius']:.6g}, attacked at "
            f"{first['eps']:.6g}). The bound or the radius search is unsound.",
            file=sys.stderr,
        )
        return 1
    rates = [v for v in check["success_rate"].values() if v is not None]
    if check["certified"] and max(rates) == 0:
        print(
            "warning: the attack found no adversarial example even at the largest multiple of the "
            "certified radii; raise --steps/--restarts or --scales before trusting the check",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
