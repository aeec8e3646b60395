"""``python -m orchestrator.compare``: does a frontier hold up under another sweep seed?

    python -m orchestrator.compare sweeps/fmnist-s0 sweeps/fmnist-s1

Two sweeps of the same settings but ``--seed`` (each with ``--confirm-seeds``), given as their
folders or ``frontier.json`` files. Per target and method it prints the confirmed mean and
95 % interval of test accuracy and ACR in each sweep and whether the intervals overlap; per
target, the methods ranked by confirmed mean ACR in each sweep and whether the rankings agree
(all of it, and the first place). The ACR is the one the confirm stage's ratio is of
(``confirm_acr_of``: the strongest certificates every retrain had). A row without a confirmed
candidate counts as absent from the ranking.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from orchestrator.confirm_report import ACR_OF, ci_key, mean_key
from trainers import metrics as M
from trainers.settings import ConfigError, OneLineParser


def load_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a sweep's ``frontier.json`` (``path``: the file or the sweep's folder)."""
    p = Path(path)
    p = p / "frontier.json" if p.is_dir() else p
    try:
        rows = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"invalid sweep {path!r}: no readable frontier.json ({e.__class__.__name__})"
        ) from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"invalid sweep {path!r}: frontier.json is not a list of rows")
    return rows


def confirmed(rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    """(method, target) -> its row, for the rows with a confirmed candidate."""
    return {(r["method"], float(r["target"])): r for r in rows if r.get("confirm_status") == "confirmed"}


def interval(row: dict[str, Any], figure: str) -> tuple[float, float] | None:
    mean = row.get(mean_key(figure))
    if mean is None:
        return None
    half = row.get(ci_key(figure)) or 0.0
    return mean - half, mean + half


def overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool | None:
    if a is None or b is None:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def acr_figure(row: dict[str, Any]) -> str:
    """``confirm_acr_of``; in a row written before it existed, its one ``test_acr_<method>``."""
    if row.get(ACR_OF):
        return row[ACR_OF]
    prefix = mean_key(f"{M.TEST_ACR}_")
    second = [
        k for k in row if k.startswith(prefix) and not k[len(prefix) :].startswith(("norm", "uncapped"))
    ]
    return second[0].removeprefix("mean.") if len(second) == 1 else M.TEST_ACR


def ranking(rows: dict[tuple[str, float], dict[str, Any]], target: float) -> list[str]:
    """The methods confirmed at ``target``, best mean ACR first."""
    at = [(r.get(mean_key(acr_figure(r)), float("-inf")), m) for (m, t), r in rows.items() if t == target]
    return [m for _, m in sorted(at, key=lambda x: (-x[0], x[1]))]


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (method, target): the intervals of both sweeps and whether they overlap; per target:
    the two rankings and whether they (and their first places) agree."""
    ca, cb = confirmed(a), confirmed(b)
    targets = sorted({float(r["target"]) for r in a + b})
    methods = sorted({r["method"] for r in a + b})
    pairs = []
    for t in targets:
        for m in methods:
            ra, rb = ca.get((m, t)), cb.get((m, t))
            entry: dict[str, Any] = {"target": t, "method": m, "a": ra is not None, "b": rb is not None}
            for name, fig in (("acc", M.TEST_ACC), ("acr", None)):
                ia = None if ra is None else interval(ra, fig or acr_figure(ra))
                ib = None if rb is None else interval(rb, fig or acr_figure(rb))
                entry.update({f"{name}_a": ia, f"{name}_b": ib, f"{name}_overlap": overlap(ia, ib)})
            pairs.append(entry)
    ranks = []
    for t in targets:
        ka, kb = ranking(ca, t), ranking(cb, t)
        ranks.append(
            {
                "target": t,
                "a": ka,
                "b": kb,
                "agree": ka == kb,
                "first_agrees": bool(ka and kb and ka[0] == kb[0]),
            }
        )
    return {"pairs": pairs, "rankings": ranks}


def _iv(iv: tuple[float, float] | None) -> str:
    return "-" if iv is None else f"{(iv[0] + iv[1]) / 2:.4f} ± {(iv[1] - iv[0]) / 2:.4f}"


def _yes(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


def format_comparison(result: dict[str, Any]) -> str:
    head = "| target | method | test_acc A | test_acc B | overlap | ACR A | ACR B | overlap |"
    lines = [head, "|" + "---|" * 8]
    for p in result["pairs"]:
        if not (p["a"] or p["b"]):
            continue
        cells = [f"{p['target']:g}", p["method"], _iv(p["acc_a"]), _iv(p["acc_b"]), _yes(p["acc_overlap"])]
        cells += [_iv(p["acr_a"]), _iv(p["acr_b"]), _yes(p["acr_overlap"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| target | ranking A (by ACR) | ranking B | same ranking | same first |",
        "|---|---|---|---|---|",
    ]
    for r in result["rankings"]:
        cells = [f"{r['target']:g}", " > ".join(r["a"]) or "-", " > ".join(r["b"]) or "-"]
        cells += [_yes(r["agree"]), _yes(r["first_agrees"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m orchestrator.compare", description=__doc__.splitlines()[0])
    p.add_argument("a", help="the first sweep: its folder or its frontier.json")
    p.add_argument("b", help="the second sweep")
    try:
        args = p.parse_args(argv)
        a, b = load_rows(args.a), load_rows(args.b)
    except ConfigError as e:
        print(f"python -m orchestrator.compare: error: {e}", file=sys.stderr)
        return 2
    if not (confirmed(a) or confirmed(b)):
        print("python -m orchestrator.compare: error: neither sweep has confirmed rows (run them with --confirm-seeds)", file=sys.stderr)  # fmt: skip
        return 2
    print(format_comparison(compare(a, b)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
