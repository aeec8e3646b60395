"""Re-check a sweep's frontier as MLflow recorded it: each winner re-certified from its
checkpoint in a fresh process, attacked, and compared with the recorded test figures.

    python -m orchestrator.recheck --sweep NAME --output-dir DIR [--tracking-uri URI] [--storage DIR]

From MLflow it reads the sweep's parent run (tags ``sweep.name`` and ``sweep.role=parent``) and
its ``frontier.json`` artifact: every (method, target) winner with the test figures the sweep
recorded. Each winner's checkpoint is the last one its trial saved in the sweep folder
(``--storage`` as the sweep had it, default: the parent run's ``storage`` param), and the
trial's settings come from the sweep's own ``sweep.json`` there. For each winner
``python -m trainers.verify`` runs in a new process on that checkpoint with the trial's
certification settings and test samples: it certifies the test split as the sweep did, then
attacks every certified sample with PGD at its radius (a success is a broken certificate), at
1.5x and 3x the radius and at the data set's radii (the attack's success rates there show that
it works).

Writes ``DIR/recheck.json`` (per winner: recorded and re-computed figures, their largest
difference, the attack's rates, ``sound``) and ``DIR/<method>-acc<target>/`` (verify's radii.csv
and summary.json; a trial that won several targets is checked once, under its lowest target). Exit code 0 when every certificate held and every figure matched within
``--tolerance``; 1 otherwise; 2 on bad input (no such sweep, no checkpoint, no data).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from orchestrator.config import SWEEP_FILE, SweepConfig, format_target, is_remote_uri
from orchestrator.tracking.reads import client_for, frontier_json, parent_named
from trainers import metrics as M

# recorded frontier field -> the field of trainers.verify's summary.json it must equal
COMPARED = {M.TEST_ACC: "clean_acc", M.TEST_ACR: M.ACR, M.TEST_ACR_UNCAPPED: M.ACR_UNCAPPED}


class RecheckError(ValueError):
    """Bad input: one line naming what is missing."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.recheck",
        description="Re-certify and attack every winner of a sweep's frontier (from MLflow) in fresh processes.",
    )
    p.add_argument("--sweep", required=True, help="the sweep's --name")
    p.add_argument("--output-dir", required=True, help="where recheck.json and each winner's check go")
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    p.add_argument(
        "--storage", default=None, help="the sweep's --storage (default: as the sweep recorded it)"
    )
    p.add_argument("--data-dir", default=None, help="folder of the data sets (default: the sweep's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--tolerance", type=float, default=1e-6, help="largest accepted difference of a figure")
    p.add_argument("--steps", type=int, default=50, help="PGD steps per restart")
    p.add_argument("--restarts", type=int, default=3, help="PGD random restarts")
    p.add_argument(
        "--methods", default="", help="only these methods' winners, comma-separated (default: every method's)"
    )
    return p


def parent_run(client: Any, sweep: str) -> Any:
    run = parent_named(client, sweep)
    if run is None:
        raise RecheckError(f"invalid --sweep {sweep!r}: no parent run of that name in MLflow")
    return run


def frontier_of(client: Any, run_id: str, into: Path) -> list[dict[str, Any]]:
    try:
        return frontier_json(client.tracking_uri, run_id, into)
    except Exception as e:  # noqa: BLE001 -- MLflow raises several kinds for a missing artifact
        raise RecheckError(f"the sweep's parent run {run_id} has no frontier.json: {e}") from None


def last_checkpoint(sweep_dir: Path, method: str, trial_id: str) -> Path:
    """The model.pt of the trial's last checkpoint (the one the sweep evaluated)."""
    trials = sorted((sweep_dir / method).glob(f"*_{trial_id}_*")) or sorted(
        (sweep_dir / method).glob(f"*{trial_id}*")
    )
    checkpoints = [c for t in trials for c in t.glob("checkpoint_*") if (c / "model.pt").is_file()]
    if not checkpoints:
        raise RecheckError(f"no checkpoint of trial {trial_id} ({method}) under {sweep_dir / method}")
    return max(checkpoints, key=lambda c: int(c.name.rsplit("_", 1)[-1])) / "model.pt"


def verify(checkpoint: Path, train: Any, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``python -m trainers.verify`` in a new process, as the sweep certified the winner."""
    cmd = [
        sys.executable,
        "-m",
        "trainers.verify",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        train.dataset,
        "--data-dir",
        train.data_dir,
        "--no-download",
        "--method",
        train.cert_method,
        "--rel-tol",
        repr(train.cert_rel_tol),
        "--device",
        args.device,
        "--steps",
        str(args.steps),
        "--restarts",
        str(args.restarts),
        "--output-dir",
        str(out),
    ]
    if train.test_samples:
        cmd += ["--limit", str(train.test_samples)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in (0, 1) or not (out / "summary.json").is_file():
        raise RecheckError(f"trainers.verify failed on {checkpoint}: {proc.stderr.strip()[-500:]}")
    return json.loads((out / "summary.json").read_text())


def compare(row: dict[str, Any], summary: dict[str, Any]) -> dict[str, float]:
    """recorded field -> |recorded - recomputed|, for the figures both have."""
    diffs = {k: abs(row[k] - summary[v]) for k, v in COMPARED.items() if k in row and v in summary}
    for eps, value in summary.get(M.CERT_ACC, {}).items():
        key = M.cert_acc_key(float(eps))
        if key in row:
            diffs[key] = abs(row[key] - value)
    return diffs


def recheck(args: argparse.Namespace) -> tuple[list[dict[str, Any]], bool]:
    from orchestrator.cli import default_tracking_uri

    client = client_for(args.tracking_uri or default_tracking_uri())
    parent = parent_run(client, args.sweep)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = frontier_of(client, parent.info.run_id, out)
    storage = args.storage or parent.data.params.get("storage", "./sweeps")
    if is_remote_uri(storage):
        raise RecheckError(f"invalid --storage {storage!r}: give a local copy of the sweep folder")
    sweep_dir = Path(storage) / args.sweep
    if not (sweep_dir / SWEEP_FILE).is_file():
        raise RecheckError(f"invalid --storage {storage!r}: no {args.sweep}/{SWEEP_FILE} there")
    cfg = SweepConfig.from_dict(json.loads((sweep_dir / SWEEP_FILE).read_text()))
    if args.data_dir:
        cfg = cfg.replace(data_dir=args.data_dir)
    methods = {m.strip() for m in args.methods.split(",") if m.strip()}
    unknown = sorted(methods - {row["method"] for row in rows})
    if unknown:
        raise RecheckError(
            f"invalid --methods {args.methods!r}: {unknown[0]} is not a method of {args.sweep}"
        )
    report, ok, checked = (
        [],
        True,
        {},
    )  # trial id -> summary: a trial that won several targets is checked once
    for row in rows:
        if row.get("status") != "ok" or (methods and row["method"] not in methods):
            continue
        name = f"{row['method']}-acc{format_target(row['target'])}"
        train = cfg.trial(row["config"])
        checkpoint = last_checkpoint(sweep_dir, row["method"], row["trial_id"])
        if row["trial_id"] not in checked:
            checked[row["trial_id"]] = verify(checkpoint, train, out / name, args)
        summary = checked[row["trial_id"]]
        diffs = compare(row, summary)
        matches = bool(diffs) and all(d <= args.tolerance for d in diffs.values())
        entry = {
            "winner": name,
            "trial_id": row["trial_id"],
            "checkpoint": str(checkpoint),
            "recorded": {k: row[k] for k in diffs},
            "largest_difference": max(diffs.values(), default=math.nan),
            "matches": matches,
            "sound": summary["sound"],
            "broken_certificates": summary["broken_certificates"],
            "certified": summary.get("certified"),
            "success_rate": summary["success_rate"],
            "success_rate_at_eps": summary["success_rate_at_eps"],
            "pgd_acc": summary["pgd_acc"],
        }
        entry["recomputed"] = {k: summary[COMPARED[k]] for k in COMPARED if k in diffs}
        entry["recomputed"].update(
            {M.cert_acc_key(float(e)): v for e, v in summary.get(M.CERT_ACC, {}).items()}
        )
        ok = ok and matches and summary["sound"]
        report.append(entry)
        rates = ", ".join(f"x{k}: {v:.2f}" for k, v in summary["success_rate"].items() if v is not None)
        print(
            f"[recheck] {name} trial {row['trial_id']}: "
            f"{'matches' if matches else 'DIFFERS'} (largest difference {entry['largest_difference']:.2g}), "
            f"{'sound' if summary['sound'] else 'BROKEN'} ({summary['broken_certificates']} broken); "
            f"attack success beyond the radii {rates or '-'}",
            flush=True,
        )
    (out / "recheck.json").write_text(
        json.dumps({"sweep": args.sweep, "winners": report, "ok": ok}, indent=2)
    )
    return report, ok


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report, ok = recheck(args)
    except RecheckError as e:
        print(f"python -m orchestrator.recheck: error: {e}", file=sys.stderr)
        return 2
    if not report:
        print("python -m orchestrator.recheck: error: the frontier has no winner to check", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
