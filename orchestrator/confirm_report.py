"""The confirm stage in the frontier: per method and target, the confirmed candidate's mean and
95 % interval over its retrains (``mean.<figure>`` and ``ci95.<figure>``, the interval's
half-width, None with one seed; prefixes, so that ``cert_acc@<eps>`` keys keep their form) of validation and test figures, and the cross-method ratio of test ACR.

Ratio at a target: the method's mean test ACR over that of the best other method whose mean
test accuracy is at least the method's (the strongest competitor that gives up no accuracy), with
the delta-method interval of ``orchestrator.intervals.ratio_interval``; none when no other
method qualifies. The ACR is of the strongest certificates the retrains have: ``test_acr_<m>``
of ``--cert-method m`` where every retrain of both methods has it (``best`` is each sample's
largest radius, so never below IBP's), else the trials' own ``test_acr``; ``confirm_acr_of``
names it.
"""

from __future__ import annotations

import html
import math
from typing import Any

from orchestrator.confirm import NOT_CONFIRMED, Retrain, TargetConfirmation
from orchestrator.intervals import mean_interval, ratio_interval
from trainers import metrics as M

# per-seed figures that are bookkeeping, not results
_NOT_FIGURES = ("test_n", M.EPOCH)
STATUS = "confirm_status"
RATIO, RATIO_CI, RATIO_VS = "acr_ratio", "acr_ratio_ci", "acr_ratio_vs"
ACR_OF = "confirm_acr_of"  # the ACR the ratio (and the "strongest" columns) are of
# frontier.html's table: its confirm columns (header -> figure)
CONFIRMED_COLS = {
    "test_acc (confirmed, mean ± 95 % CI)": M.TEST_ACC,
    "test_acr (confirmed, mean ± 95 % CI)": M.TEST_ACR,
    "ACR, strongest certificate (confirmed)": ACR_OF,
    "ACR ratio to the best rival": RATIO,
}


def mean_key(figure: str) -> str:
    return f"mean.{figure}"


def ci_key(figure: str) -> str:
    return f"ci95.{figure}"


def seed_figures(retrains: list[Retrain]) -> dict[str, list[float]]:
    """figure -> its value per retrain (validation figures, then the test figures)."""
    out: dict[str, list[float]] = {
        M.VAL_ACC: [r.val_acc for r in retrains],
        M.VAL_ACR: [r.val_acr for r in retrains],
    }
    for r in retrains:
        for k, v in r.test.items():
            if k not in _NOT_FIGURES:
                out.setdefault(k, []).append(float(v))
    return out


def confirm_fields(tc: TargetConfirmation) -> dict[str, Any]:
    """The frontier fields of one (method, target)."""
    retrains = tc.retrains
    tried = "; ".join(f"{a.trial_id}: {a.status}{f' ({a.reason})' if a.reason else ''}" for a in tc.attempts)
    a = tc.confirmed
    if a is None:
        status = NOT_CONFIRMED if tc.attempts else "no candidate"
        return {STATUS: status, "confirm_tried": tried}
    out: dict[str, Any] = {
        STATUS: "confirmed",
        "confirm_trial_id": a.trial_id,
        "confirm_rank": a.rank,
        "confirm_seeds": [retrains[k].seed for k in a.keys],
        "confirm_tried": tried,
    }
    for figure, values in seed_figures([retrains[k] for k in a.keys]).items():
        iv = mean_interval(values)
        if iv is not None:
            out[mean_key(figure)] = iv.mean
            out[ci_key(figure)] = iv.half
    return out


def ratio_fields(
    method: str,
    target: float,
    samples: dict[tuple[str, float], tuple[list[float], list[float]]],
    acr_key: str = M.TEST_ACR,
) -> dict[str, Any]:
    """``samples``: (method, target) -> (test accuracies, ``acr_key`` ACRs) of its confirmed retrains."""
    own = samples.get((method, target))
    if own is None:
        return {}
    own_acc = sum(own[0]) / len(own[0])
    rivals = [
        (sum(acr) / len(acr), m)
        for (m, t), (acc, acr) in samples.items()
        if t == target and m != method and sum(acc) / len(acc) >= own_acc
    ]
    if not rivals:
        return {}
    _, best = max(rivals)
    iv = ratio_interval(own[1], samples[(best, target)][1])
    if iv is None:
        return {}
    return {RATIO: iv.mean, RATIO_CI: iv.half, RATIO_VS: best}


def strongest_acr_key(targets: list[TargetConfirmation]) -> str:
    """``test_acr_<m>`` of a stronger certificate that every confirmed retrain has, else ``test_acr``."""
    tests = [tc.retrains[k].test for tc in targets if (a := tc.confirmed) is not None for k in a.keys]
    second = {k for t in tests for k in t if k.startswith(f"{M.TEST_ACR}_") and _is_second_acr(k)}
    common = sorted(k for k in second if all(k in t for t in tests))
    return common[0] if len(common) == 1 else M.TEST_ACR


def _is_second_acr(key: str) -> bool:
    """``test_acr_<method>``, not ``test_acr_norm[_<m>]`` or ``test_acr_uncapped[_<m>]``."""
    rest = key.removeprefix(f"{M.TEST_ACR}_")
    return not (rest.startswith("norm") or rest.startswith("uncapped"))


def extend_rows(rows: list[dict[str, Any]], targets: list[TargetConfirmation]) -> list[dict[str, Any]]:
    """The frontier rows with the confirm stage's fields (rows of a method or target the stage
    did not see are left as they are)."""
    by_key = {(tc.method, tc.target): tc for tc in targets}
    acr_key = strongest_acr_key(targets)
    samples = {}
    for tc in targets:
        a, retrains = tc.confirmed, tc.retrains
        if a is not None:
            acc = [retrains[k].test.get(M.TEST_ACC, math.nan) for k in a.keys]
            acr = [retrains[k].test.get(acr_key, math.nan) for k in a.keys]
            if all(math.isfinite(v) for v in acc + acr):
                samples[(tc.method, tc.target)] = (acc, acr)
    out = []
    for row in rows:
        key = (row["method"], float(row["target"]))
        tc = by_key.get(key)
        extra = {} if tc is None else {**confirm_fields(tc), **ratio_fields(*key, samples, acr_key)}
        if tc is not None and tc.confirmed is not None:
            extra[ACR_OF] = acr_key
        out.append({**row, **extra})
    return out


def format_confirmed(rows: list[dict[str, Any]]) -> str:
    """The confirmed frontier as a Markdown table: mean ± half-width per figure (test accuracy,
    ACR, certified accuracies), the candidate, and the ACR ratio to the best other method."""
    if not any(STATUS in r for r in rows):
        return ""
    certs = sorted(
        {k.removeprefix("mean.") for r in rows for k in r if k.startswith("mean.") and M.is_cert_acc(k[5:])},
        key=M.cert_eps_of,
    )
    of = next((r[ACR_OF] for r in rows if r.get(ACR_OF)), M.TEST_ACR)
    figures = [M.VAL_ACC, M.TEST_ACC, *dict.fromkeys([M.TEST_ACR, of]), *certs]
    head = ["method", "target", "confirmed", "seeds", *figures, f"{of} ratio (vs)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if STATUS not in r:
            continue
        cells = [r["method"], f"{float(r['target']):g}", r[STATUS]]
        cells.append(str(len(r.get("confirm_seeds", []))))
        cells += [_pm(r.get(mean_key(f)), r.get(ci_key(f))) for f in figures]
        ratio = _pm(r.get(RATIO), r.get(RATIO_CI), 2)
        cells.append(f"{ratio} ({r[RATIO_VS]})" if RATIO in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pm(mean: Any, half: Any, digits: int = 4) -> str:
    if mean is None:
        return ""
    return f"{mean:.{digits}f}" if half is None else f"{mean:.{digits}f} ± {half:.{digits}f}"


def confirmed_cell(row: dict[str, Any], col: str) -> str:
    """A cell of one of frontier.html's ``CONFIRMED_COLS``: mean ± half-width (and the rival)."""
    figure = CONFIRMED_COLS[col]
    if figure == ACR_OF:
        of = row.get(ACR_OF)
        return "" if of is None else f"{_pm(row.get(mean_key(of)), row.get(ci_key(of)))} ({of})"
    if figure == RATIO:
        text = _pm(row.get(RATIO), row.get(RATIO_CI))
        return f"{text} vs {row[RATIO_VS]}" if text else ""
    return _pm(row.get(mean_key(figure)), row.get(ci_key(figure)))


def confirmed_hover(method: str, targets: list[float], row: dict[str, Any]) -> str:
    """The hover label of a confirmed point in frontier.html."""
    pm = {f: _pm(row[mean_key(f)], row.get(ci_key(f))) for f in (M.TEST_ACC, M.TEST_ACR)}
    seeds = len(row.get("confirm_seeds") or [])
    lines = [
        f"<b>{html.escape(method)}</b> confirmed for target {', '.join(f'{t:g}' for t in targets)}",
        f"trial {html.escape(str(row['confirm_trial_id']))} (candidate {row.get('confirm_rank')}), {seeds} seeds",
        f"test acc {pm[M.TEST_ACC]}   test ACR {pm[M.TEST_ACR]}",
    ]
    of = row.get(ACR_OF)
    if of and of != M.TEST_ACR and mean_key(of) in row:
        lines.append(f"{html.escape(of)} {_pm(row[mean_key(of)], row.get(ci_key(of)))}")
    if row.get(RATIO) is not None:
        lines.append(
            f"{html.escape(str(of or 'ACR'))} / {html.escape(str(row[RATIO_VS]))}'s: {_pm(row[RATIO], row.get(RATIO_CI), 3)}"
        )
    return "<br>".join(lines)
