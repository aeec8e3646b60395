"""Frontier pictures: a PNG (matplotlib) and a self-contained interactive HTML (inline SVG).

One panel per dataset, side by side. In each: every trial as a point at its *validation*
(clean accuracy, ACR), the Pareto front of those points as a step line per method, the
targets as vertical dashed lines, and each target's winner at its *test* figures as a star
(the reported frontier). The HTML needs no plotting library: hovering a point shows its trial
and configuration, clicking a legend entry hides a method.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.pareto import TrialPoint, pareto_front

COLORS = {"acert": "#d62728", "ibp": "#1f77b4", "crown-ibp": "#2ca02c"}
_FALLBACK = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


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


def write_png(panels: list[Panel], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, (method, pts) in enumerate(panel.points.items()):
            c = color(method, i)
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
                [r["test_acc"] for r in wins],
                [r["test_acr"] for r in wins],
                marker="*",
                s=160,
                color=c,
                edgecolor="black",
                zorder=5,
                label=f"{method}: winners (test)",
            )
        for t in panel.targets:
            ax.axvline(t, ls="--", color="grey", lw=0.8)
            ax.text(t, 1.0, f" {t:g}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="grey")
        ax.set(title=panel.title, xlabel="clean accuracy", ylabel="ACR (l_inf)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _svg_panel(panel: Panel, w: int = 520, h: int = 380, pad: int = 48) -> str:
    pts = [p for ps in panel.points.values() for p in ps if p.usable]
    xs = (
        [p.val_acc for p in pts]
        + [r["test_acc"] for r in panel.rows if r["status"] == "ok"]
        + list(panel.targets)
    )
    ys = [p.val_acr for p in pts] + [r["test_acr"] for r in panel.rows if r["status"] == "ok"] + [0.0]
    x0, x1 = min(xs, default=0.0) - 0.02, max(xs, default=1.0) + 0.02
    y1 = max(ys, default=1.0) * 1.1 or 1.0

    def sx(v: float) -> float:
        return pad + (v - x0) / (x1 - x0) * (w - 2 * pad)

    def sy(v: float) -> float:
        return h - pad - v / y1 * (h - 2 * pad)

    out = [
        f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(panel.title)}</text>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
        f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">clean accuracy [{x0:.3f}, {x1:.3f}]</text>',
        f'<text x="12" y="{h / 2}" transform="rotate(-90 12 {h / 2})" text-anchor="middle">ACR [0, {y1:.4f}]</text>',
    ]
    for t in panel.targets:
        out.append(
            f'<line x1="{sx(t):.1f}" y1="{pad}" x2="{sx(t):.1f}" y2="{h - pad}" stroke="grey" '
            f'stroke-dasharray="4"><title>target {t:g}</title></line>'
        )
    for i, (method, ps) in enumerate(panel.points.items()):
        c, cls = color(method, i), f"m-{html.escape(method)}"
        front = front_line(ps)
        if front:
            path = " ".join(f"{sx(a):.1f},{sy(r):.1f}" for a, r in front)
            out.append(f'<polyline class="{cls}" points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        for p in ps:
            if p.usable:
                tip = html.escape(
                    f"{method} {p.trial_id}: val_acc={p.val_acc:.4f} val_acr={p.val_acr:.4f}\n"
                    + json.dumps({k: v for k, v in p.config.items() if k != "data_dir"}, default=str)
                )
                out.append(
                    f'<circle class="{cls}" cx="{sx(p.val_acc):.1f}" cy="{sy(p.val_acr):.1f}" r="4" '
                    f'fill="{c}" fill-opacity="0.5"><title>{tip}</title></circle>'
                )
        for r in panel.rows:
            if r["method"] == method and r["status"] == "ok":
                tip = html.escape(
                    f"winner for {r['target']:g} ({method}, test): acc={r['test_acc']:.4f} "
                    f"ACR={r['test_acr']:.4f} trial {r['trial_id']}"
                )
                out.append(
                    f'<rect class="{cls}" x="{sx(r["test_acc"]) - 6:.1f}" y="{sy(r["test_acr"]) - 6:.1f}" '
                    f'width="12" height="12" fill="{c}" stroke="black"><title>{tip}</title></rect>'
                )
    out.append("</svg>")
    return "\n".join(out)


def write_html(panels: list[Panel], path: Path) -> None:
    methods = sorted({m for p in panels for m in p.points})
    legend = " ".join(
        f'<label style="color:{color(m, i)}"><input type="checkbox" checked '
        f"onchange=\"toggle('m-{html.escape(m)}', this.checked)\"> {html.escape(m)}</label>"
        for i, m in enumerate(methods)
    )
    rows = [r for p in panels for r in p.rows]
    cols = [
        "dataset",
        "method",
        "target",
        "status",
        "val_acc",
        "val_acr",
        "test_acc",
        "test_acr",
        *sorted({k for r in rows for k in r if k.startswith("cert_acc@")}),
        "trial_id",
    ]
    table = (
        "<tr>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        + "</tr>"
        + "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c, '')))}</td>" for c in cols) + "</tr>"
            for r in rows
        )
    )
    body = "\n".join(_svg_panel(p) for p in panels)
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>accuracy-ACR frontier</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style></head>
<body><h2>Clean accuracy vs ACR</h2><p>Points: trials (validation). Lines: Pareto fronts (validation).
Squares: each target's winner on the test set. Hover for details. {legend}</p>
<div style="display:flex;flex-wrap:wrap">{body}</div><table>{table}</table>
<script>function toggle(c, on){{document.querySelectorAll('.'+CSS.escape(c)).forEach(
e=>e.style.display=on?'':'none');}}</script></body></html>
""")


def _cell(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
