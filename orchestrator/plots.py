"""Frontier pictures: a PNG (matplotlib) and a self-contained interactive HTML (plotly).

One panel per dataset, side by side. In each: every trial as a point at its *validation*
(clean accuracy, ACR), the Pareto front of those points as a step line per method, the
targets as vertical dashed lines, and each target's winner at its *test* figures as a star
(the reported frontier). In the HTML, hovering a point shows its trial and its tuned
configuration, and clicking a method in the legend hides it in every panel. The HTML embeds
plotly.js, so it opens offline; :func:`frontier_figure` is the same figure as a plotly
object (``mlflow.log_figure`` stores it as is).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import TARGET, TRIAL_META_KEYS
from orchestrator.confirm_report import CONFIRMED_COLS, ci_key, confirmed_cell, confirmed_hover, mean_key
from orchestrator.confirm_report import STATUS as CONFIRM_STATUS
from orchestrator.pareto import TrialPoint, pareto_front
from trainers import metrics as M

COLORS = {"acert": "#d62728", "ibp": "#1f77b4", "crown-ibp": "#2ca02c"}
_FALLBACK = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
ACC_TITLE, ACR_TITLE = "clean accuracy", "ACR (l_inf, pixel units)"
MEAN_ACC, MEAN_ACR = mean_key(M.TEST_ACC), mean_key(M.TEST_ACR)  # the confirm stage's fields
CI_ACC, CI_ACR = ci_key(M.TEST_ACC), ci_key(M.TEST_ACR)
PLOT_ID = "frontier-plot"  # the HTML element plotly draws into
# Not tuned: the searcher's bookkeeping, the method (the trace says it), and the settings every
# trial of a sweep shares (configs of sweeps from before SweepConfig.trial carried them).
_NOT_TUNED = {
    *TRIAL_META_KEYS,
    "method",
    "dataset",
    "data_dir",
    "download",
    "device",
    "threads",
    "seed",
    "model",
    "train_subset",
    "synthetic_size",
    "val_acr_samples",
    "test_samples",
}


def color(method: str, i: int = 0) -> str:
    return COLORS.get(method, _FALLBACK[i % len(_FALLBACK)])


@dataclass
class Panel:
    """What one dataset's plot shows."""

    title: str
    points: dict[str, list[TrialPoint]]  # method -> trials
    rows: list[dict[str, Any]]  # frontier rows (test figures of the winners)
    targets: tuple[float, ...]


def front_line(points: list[TrialPoint]) -> list[tuple[float, float]]:
    """The Pareto front of usable points as (acc, acr) pairs, by increasing accuracy."""
    usable = [p for p in points if p.usable]
    xy = [(p.val_acc, p.val_acr) for p in usable]
    return [xy[i] for i in pareto_front(xy)]


def methods_of(panels: list[Panel]) -> list[str]:
    """Every method in any panel, in order of appearance: its index fixes its colour everywhere."""
    found = [m for p in panels for m in p.points] + [r["method"] for p in panels for r in p.rows]
    return list(dict.fromkeys(found))


def winners(panel: Panel, method: str) -> list[tuple[list[float], dict[str, Any]]]:
    """The method's feasible frontier rows, one entry per winning trial with the targets it won
    (trials are shared across targets, so one trial often wins several)."""
    won: dict[str, tuple[list[float], dict[str, Any]]] = {}
    for r in panel.rows:
        if r["method"] == method and r["status"] == "ok":
            won.setdefault(r["trial_id"], ([], r))[0].append(float(r["target"]))
    return list(won.values())


def confirmed(panel: Panel, method: str) -> list[tuple[list[float], dict[str, Any]]]:
    """The method's rows confirmed over seeds (``--confirm-seeds``), one entry per confirmed
    candidate with the targets it holds: drawn at their mean test figures with 95 % error bars."""
    held: dict[str, tuple[list[float], dict[str, Any]]] = {}
    for r in panel.rows:
        if r["method"] == method and r.get(CONFIRM_STATUS) == "confirmed" and MEAN_ACC in r:
            held.setdefault(str(r["confirm_trial_id"]), ([], r))[0].append(float(r["target"]))
    return list(held.values())


def _half(row: dict[str, Any], key: str) -> float:
    """An interval's half-width for an error bar: 0 without one (a single seed)."""
    v = row.get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else 0.0


def tuned_config(config: dict[str, Any]) -> dict[str, Any]:
    """The tuned hyperparameters of a trial config (Ray's dict or MLflow's string params)."""
    return {k: v for k, v in sorted(config.items()) if k not in _NOT_TUNED}


# --- PNG -------------------------------------------------------------------------------------
def write_png(panels: list[Panel], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = methods_of(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for method, pts in panel.points.items():
            c = color(method, methods.index(method))
            usable = [p for p in pts if p.usable]
            ax.scatter(
                [p.val_acc for p in usable],
                [p.val_acr for p in usable],
                s=14,
                alpha=0.45,
                color=c,
                label=f"{method}: trials (val, {len(usable)}/{len(pts)})",
            )
            front = front_line(pts)
            if front:  # "pre": past a front point only the next (more accurate) point's ACR is attained
                ax.step(*zip(*front), where="pre", color=c, lw=1.6, label=f"{method}: Pareto front (val)")
            wins = [r for r in panel.rows if r["method"] == method and r["status"] == "ok"]
            ax.scatter(
                [r[M.TEST_ACC] for r in wins],
                [r[M.TEST_ACR] for r in wins],
                marker="*",
                s=160,
                color=c,
                edgecolor="black",
                zorder=5,
                label=f"{method}: winners (test)",
            )
            held = [r for _, r in confirmed(panel, method)]
            if held:
                ax.errorbar(
                    [r[MEAN_ACC] for r in held],
                    [r[MEAN_ACR] for r in held],
                    xerr=[_half(r, CI_ACC) for r in held],
                    yerr=[_half(r, CI_ACR) for r in held],
                    fmt="D",
                    ms=6,
                    color=c,
                    mec="black",
                    capsize=3,
                    zorder=6,
                    label=f"{method}: confirmed mean (test, 95 % CI)",
                )
        for t in panel.targets:
            ax.axvline(t, ls="--", color="grey", lw=0.8)
            ax.text(t, 1.0, f" {t:g}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="grey")
        ax.set(title=panel.title, xlabel=ACC_TITLE, ylabel=ACR_TITLE)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the interactive figure --------------------------------------------------------------------
def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as e:  # a dependency of the project: only a broken install lacks it
        raise ImportError("frontier.html is drawn with plotly: pip install plotly") from e
    return go, make_subplots


def _value(v: Any) -> str:
    """A config value for a hover label: numbers (also MLflow's string params) to 4 digits."""
    if isinstance(v, str):
        try:
            num = float(v)
        except ValueError:
            return html.escape(v[:60])
        return v if v.lstrip("-").isdigit() else _value(num)
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v)[:60])


def _config_lines(config: dict[str, Any]) -> list[str]:
    return [f"{html.escape(str(k))} = {_value(v)}" for k, v in tuned_config(config).items()]


def _trial_hover(method: str, p: TrialPoint) -> str:
    lines = [
        f"<b>{html.escape(method)}</b> trial {html.escape(p.trial_id)}",
        f"val acc {p.val_acc:.4f}   val ACR {p.val_acr:.4f}",
    ]
    if TARGET in p.config:
        lines.append(f"searched for target {_value(p.config[TARGET])}")
    return "<br>".join(lines + _config_lines(p.config))


def _winner_hover(method: str, targets: list[float], row: dict[str, Any]) -> str:
    certs = sorted((k for k in row if M.is_cert_acc(k)), key=M.cert_eps_of)
    lines = [
        f"<b>{html.escape(method)}</b> winner for target {', '.join(f'{t:g}' for t in targets)}",
        f"trial {html.escape(str(row['trial_id']))}",
        f"test acc {row[M.TEST_ACC]:.4f}   test ACR {row[M.TEST_ACR]:.4f}",
        f"val acc {row[M.VAL_ACC]:.4f}   val ACR {row[M.VAL_ACR]:.4f}",
        *(f"{k} {row[k]:.4f}" for k in certs),
    ]
    return "<br>".join(lines + _config_lines(row.get("config") or {}))


def _target_hover(panel: Panel, target: float) -> str:
    lines = [f"target clean accuracy {target:g}"]
    for r in panel.rows:
        if math.isclose(float(r["target"]), target):
            won = f"trial {r['trial_id']}" if r["status"] == "ok" else "no feasible trial"
            lines.append(f"{html.escape(r['method'])}: {html.escape(won)}")
    return "<br>".join(lines)


def _method_traces(go: Any, panel: Panel, method: str, c: str, legend: bool) -> list[Any]:
    """One method's trials (validation), their Pareto front and its winners (test, stars), in
    the method's legend group: one legend entry (``legend``) hides all three, in every panel."""
    pts = panel.points.get(method, [])
    usable = [p for p in pts if p.usable]
    front = front_line(pts)
    won = winners(panel, method)
    held = confirmed(panel, method)
    hover = dict(hovertemplate="%{text}<extra></extra>", legendgroup=method)
    bars = dict(type="data", color=c, thickness=1.5, width=4)
    traces = [
        go.Scatter(
            x=[p.val_acc for p in usable],
            y=[p.val_acr for p in usable],
            mode="markers",
            name=method,
            marker=dict(color=c, size=8, opacity=0.55),
            text=[_trial_hover(method, p) for p in usable],
            showlegend=legend,
            **hover,
        ),
        go.Scatter(
            x=[a for a, _ in front],
            y=[r for _, r in front],
            mode="lines",
            line=dict(color=c, width=2, shape="vh"),  # as matplotlib's step(where="pre")
            name=f"{method} Pareto front (val)",
            hoverinfo="skip",
            legendgroup=method,
            showlegend=False,
        ),
        go.Scatter(
            x=[row[M.TEST_ACC] for _, row in won],
            y=[row[M.TEST_ACR] for _, row in won],
            mode="markers",
            marker=dict(color=c, size=18, symbol="star", line=dict(color="black", width=1)),
            name=f"{method} winners (test)",
            text=[_winner_hover(method, targets, row) for targets, row in won],
            showlegend=False,
            **hover,
        ),
    ]
    if not held:  # no confirm stage (or nothing confirmed): no trace for it
        return traces
    return [
        *traces,
        go.Scatter(
            x=[row[MEAN_ACC] for _, row in held],
            y=[row[MEAN_ACR] for _, row in held],
            error_x=dict(array=[_half(row, CI_ACC) for _, row in held], **bars),
            error_y=dict(array=[_half(row, CI_ACR) for _, row in held], **bars),
            mode="markers",
            marker=dict(color=c, size=11, symbol="diamond", line=dict(color="black", width=1)),
            name=f"{method} confirmed (test mean, 95 % CI)",
            text=[confirmed_hover(method, targets, row) for targets, row in held],
            showlegend=False,
            **hover,
        ),
    ]


def frontier_figure(panels: list[Panel]) -> Any:
    """The frontier as one plotly figure, a subplot per panel (dataset): per method its trials,
    Pareto front and winners (:func:`_method_traces`), and the targets as dashed lines."""
    go, make_subplots = _plotly()
    methods = methods_of(panels)
    fig = make_subplots(rows=1, cols=max(1, len(panels)), subplot_titles=[p.title for p in panels])
    shown: set[str] = set()
    for col, panel in enumerate(panels, start=1):
        for method in methods:
            c = color(method, methods.index(method))
            for trace in _method_traces(go, panel, method, c, legend=method not in shown):
                fig.add_trace(trace, row=1, col=col)
            shown.add(method)
        for t in panel.targets:
            fig.add_vline(
                x=t,
                line=dict(color="grey", width=1, dash="dash"),
                annotation=dict(text=f"{t:g}", hovertext=_target_hover(panel, t), font_color="grey"),
                annotation_position="bottom right",
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=ACC_TITLE, ticks="outside", showline=True, row=1, col=col)
        fig.update_yaxes(
            title_text=ACR_TITLE, ticks="outside", showline=True, rangemode="tozero", row=1, col=col
        )
    fig.update_layout(
        title=dict(  # the key as a second line: layout.title.subtitle needs plotly >= 5.23
            text="Clean accuracy vs ACR<br><sup>dots: trials (validation) · lines: Pareto fronts "
            "(validation) · stars: each target's winner (test) · diamonds: confirmed over seeds (test "
            "mean, 95 % CI) · dashed: targets</sup>"
        ),
        template="plotly_white",
        height=540,
        margin=dict(t=110),
        hovermode="closest",
        hoverlabel=dict(align="left"),
        legend=dict(title_text="method (click to hide)"),
    )
    return fig


# --- HTML ------------------------------------------------------------------------------------
def write_html(panels: list[Panel], path: Path) -> None:
    """The figure (plotly.js embedded: no network needed) above the table of frontier rows."""
    plot = frontier_figure(panels).to_html(
        full_html=False, include_plotlyjs=True, div_id=PLOT_ID, config={"displaylogo": False}
    )
    rows = [r for p in panels for r in p.rows]
    certs = sorted({k for r in rows for k in r if M.is_cert_acc(k)}, key=M.cert_eps_of)
    cols = [
        "dataset",
        "method",
        "target",
        "status",
        M.VAL_ACC,
        M.VAL_ACR,
        M.TEST_ACC,
        M.TEST_ACR,
        *certs,
        "trial_id",
    ]
    if any(CONFIRM_STATUS in r for r in rows):
        cols += [CONFIRM_STATUS, *CONFIRMED_COLS]
    table = (
        "<tr>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        + "</tr>"
        + "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(confirmed_cell(r, c) if c in CONFIRMED_COLS else _cell(r.get(c, '')))}</td>"
                for c in cols
            )
            + "</tr>"
            for r in rows
        )
    )
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>accuracy-ACR frontier</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style></head>
<body>{plot}<h3>Frontier (test figures of each target's winner)</h3><table>{table}</table></body></html>
""")


def _cell(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
