"""``python -m orchestrator.frontier``: frontiers of one or several datasets, from MLflow alone.

    python -m orchestrator.frontier --datasets mnist,cifar10,tinyimagenet [--out frontier]

For each dataset and method it takes the newest finished sweep (or ``--sweep NAME``): its
``frontier.json`` artifact gives the winners' test figures, its child runs give every trial's
validation point. Writes ``<out>.png`` and ``<out>.html`` (datasets side by side) and prints
the table, and the convergence of each search from its parent run's step metrics. Nothing is read from the Ray result folders, so it works from any machine that can
reach the tracking server.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from orchestrator.cli import default_tracking_uri
from orchestrator.convergence import best_key, format_convergence, hypervolume_key, summary
from orchestrator.pareto import TrialPoint
from orchestrator.tracking.names import TAG_SWEEP, TAG_TRIAL
from orchestrator.tracking.reads import (
    client_for,
    experiment_id,
    finished_parents,
    frontier_json,
    trial_runs_of,
)
from trainers import metrics as M
from trainers.settings import ConfigError, OneLineParser


class FrontierInputError(ConfigError):
    """Bad user input; one line naming the flag and the value."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m orchestrator.frontier", description=__doc__.splitlines()[0])
    p.add_argument("--datasets", required=True, help="comma-separated, e.g. mnist,cifar10")
    p.add_argument("--methods", default=None, help="only these methods (default: all found)")
    p.add_argument("--sweep", default=None, help="use this sweep name instead of the newest one")
    p.add_argument(
        "--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db"
    )
    p.add_argument("--out", default="frontier", help="output prefix: <out>.png and <out>.html")
    return p


def _names(flag: str, text: str) -> tuple[str, ...]:
    """``"mnist, cifar10"`` -> ``("mnist", "cifar10")``; an empty list or item is an error."""
    items = tuple(t.strip() for t in text.split(","))
    if not all(items):
        raise FrontierInputError(f"invalid {flag} {text!r}: give comma-separated names, e.g. mnist,cifar10")
    return items


def _points(client: Any, exp_id: str, sweep: str, method: str) -> list[TrialPoint]:
    out = []
    for r in trial_runs_of(client, exp_id, sweep, method):
        m = r.data.metrics
        out.append(
            TrialPoint(
                r.data.tags.get(TAG_TRIAL, r.info.run_id),
                m.get(M.VAL_ACC, math.nan),
                m.get(M.VAL_ACR, math.nan),
                method,
                dict(r.data.params),
                failed=r.info.status != "FINISHED",
            )
        )
    return out


def load_panel(
    client: Any,
    uri: str,
    dataset: str,
    methods: tuple[str, ...] | None,
    sweep: str | None,
    sources: dict[str, Any] | None = None,
):
    """The Panel of one dataset: per method, the newest finished sweep that ran it (its parent
    run goes into ``sources``, by method, when given)."""
    from orchestrator.plots import Panel

    exp_id = experiment_id(client, dataset)
    parents = finished_parents(client, exp_id, sweep) if exp_id else []
    if not parents:
        raise FrontierInputError(
            f"invalid --datasets {dataset!r}: no finished sweep"
            f"{f' named {sweep!r}' if sweep else ''} in the tracking store"
        )
    rows: list[dict[str, Any]] = []
    points: dict[str, list[TrialPoint]] = {}
    for parent in parents:  # newest first: each method comes from the newest sweep that ran it
        sweep_rows = frontier_json(uri, parent.info.run_id)
        for method in dict.fromkeys(r["method"] for r in sweep_rows):
            if method in points or (methods and method not in methods):
                continue
            points[method] = _points(client, exp_id, parent.data.tags[TAG_SWEEP], method)
            if sources is not None:
                sources[method] = parent
            rows += [r for r in sweep_rows if r["method"] == method]
    if not rows:
        raise FrontierInputError(f"invalid --methods {','.join(methods or ())!r}: none found for {dataset}")
    return Panel(dataset, points, rows, tuple(sorted({float(r["target"]) for r in rows})))


def convergence_rows(client: Any, panel: Any, sources: dict[str, Any]) -> list[dict[str, Any]]:
    """Per method, the convergence of its search, from its sweep's parent-run step metrics
    (``orchestrator.convergence``); a sweep recorded before them gives a row of ``-``."""
    rows = []
    for method, parent in sources.items():
        targets = sorted({float(r["target"]) for r in panel.rows if r["method"] == method})
        keys = [hypervolume_key(method), *(best_key(method, a) for a in targets)]
        histories = {
            k: [(m.step, m.value) for m in client.get_metric_history(parent.info.run_id, k)]
            for k in keys
            if k in parent.data.metrics
        }
        row = summary(method, targets, histories)
        rows.append({"dataset": panel.title, "sweep": parent.data.tags.get(TAG_SWEEP, ""), **row})
    return rows


def main(argv: list[str] | None = None) -> int:
    from orchestrator.confirm_report import format_confirmed
    from orchestrator.evaluation import format_table
    from orchestrator.plots import write_html, write_png
    from orchestrator.sweep import check_tracking_uri

    try:
        args = build_parser().parse_args(argv)
        uri = args.tracking_uri or default_tracking_uri()
        datasets = _names("--datasets", args.datasets)
        methods = _names("--methods", args.methods) if args.methods else None
        check_tracking_uri(uri)
        client = client_for(uri)
        sources = [{} for _ in datasets]
        panels = [load_panel(client, uri, d, methods, args.sweep, src) for d, src in zip(datasets, sources)]
    except ConfigError as e:  # FrontierInputError, a bad flag, and the sweep's SweepInputError
        print(f"python -m orchestrator.frontier: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(panels, out.with_suffix(".png"))
    write_html(panels, out.with_suffix(".html"))
    print(format_table([r for p in panels for r in p.rows]))
    confirmed = format_confirmed([r for p in panels for r in p.rows])  # sweeps with --confirm-seeds
    if confirmed:
        print(f"\nconfirmed over seeds (mean ± 95 % half-width):\n{confirmed}")
    convergence = [r for p, src in zip(panels, sources) for r in convergence_rows(client, p, src)]
    print(
        "\nconvergence (trials: finished trials; hypervolume of the validation front above the lowest"
        " target; at which trial it reached 90 % of that; at which trial each target's best was found):\n"
        + format_convergence(convergence)
    )
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
