"""The confirm stage's frontier fields from known retrains: means and intervals per figure, the
verdicts, and the ACR ratio against the best other method that is at least as accurate."""

from __future__ import annotations

import pytest

from orchestrator.confirm import CONFIRMED, NOT_CONFIRMED, Attempt, Retrain, TargetConfirmation
from orchestrator.confirm_report import extend_rows, format_confirmed
from orchestrator.intervals import mean_interval, ratio_interval
from trainers import metrics as M


def confirmed(method, target, accs, acrs, certs=None):
    retrains, keys = {}, []
    for i, (acc, acr) in enumerate(zip(accs, acrs)):
        key = f"{method}-{target}-{i}"
        test = {"test_acc": acc, "test_acr": acr, "test_n": 100.0, "epoch": 3.0}
        if certs:
            test["cert_acc@0.1"] = certs[i]
        retrains[key] = Retrain(
            key, method, "t1", i + 1, {}, val_acc=acc + 0.01, val_acr=acr, failed=False, test=test
        )
        keys.append(key)
    tc = TargetConfirmation(method, target, [], retrains=retrains)
    tc.attempts = [
        Attempt("t0", 1, [], NOT_CONFIRMED, 0.6, "mean val_acc 0.6 < target"),
        Attempt("t1", 2, keys, CONFIRMED),
    ]
    return tc


def test_rows_get_means_intervals_and_the_ratio_to_the_best_rival():
    a = confirmed("acert", 0.8, [0.82, 0.84, 0.83], [0.12, 0.13, 0.11], certs=[0.5, 0.6, 0.7])
    b = confirmed("ibp", 0.8, [0.85, 0.86, 0.84], [0.10, 0.09, 0.11])  # more accurate: a rival of acert
    c = confirmed("sabr", 0.8, [0.80, 0.80, 0.81], [0.30, 0.31, 0.29])  # less accurate: no rival of acert
    nobody = TargetConfirmation("mtl-ibp", 0.8, [])
    rows = [{"method": m, "target": 0.8, "status": "ok"} for m in ("acert", "ibp", "sabr", "mtl-ibp")]
    rows.append({"method": "crown-ibp", "target": 0.8, "status": "ok"})  # not in the stage: unchanged
    out = {r["method"]: r for r in extend_rows(rows, [a, b, c, nobody])}
    r = out["acert"]
    iv = mean_interval([0.12, 0.13, 0.11])
    assert r["confirm_status"] == "confirmed" and r["confirm_trial_id"] == "t1" and r["confirm_rank"] == 2
    assert r["mean.test_acr"] == pytest.approx(0.12) and r["ci95.test_acr"] == pytest.approx(iv.half)
    assert (
        r["mean.cert_acc@0.1"] == pytest.approx(0.6)
        and not any(M.is_cert_acc(k) for k in r)
        and "mean.test_n" not in r
        and "mean.epoch" not in r
    )
    assert r["mean.val_acc"] == pytest.approx(0.84)
    assert "t0: not confirmed (mean val_acc 0.6 < target)" in r["confirm_tried"]
    # acert's rival is ibp (accuracy 0.85 >= 0.83), not sabr (0.803 < 0.83) although sabr's ACR is larger
    ratio = ratio_interval([0.12, 0.13, 0.11], [0.10, 0.09, 0.11])
    assert r["acr_ratio_vs"] == "ibp" and r["acr_ratio"] == pytest.approx(1.2)
    assert r["acr_ratio_ci"] == pytest.approx(ratio.half)
    assert out["ibp"].get("acr_ratio_vs") is None  # nobody is at least as accurate as ibp
    assert out["sabr"]["acr_ratio_vs"] == "acert"  # of acert and ibp (both >= 0.803), the larger ACR
    assert out["sabr"]["acr_ratio"] == pytest.approx(2.5)
    assert out["mtl-ibp"] == {**rows[3], "confirm_status": "no candidate", "confirm_tried": ""}
    assert out["crown-ibp"] == rows[4]
    table = format_confirmed(list(out.values()))
    assert "| acert | 0.8 | confirmed | 3 | " in table and f"0.1200 ± {iv.half:.4f}" in table
    assert f"1.20 ± {ratio.half:.2f} (ibp)" in table and "| mtl-ibp | 0.8 | no candidate | 0 |" in table
    assert "crown-ibp" not in table


def test_one_seed_has_means_without_intervals():
    (row,) = extend_rows([{"method": "ibp", "target": 0.7}], [confirmed("ibp", 0.7, [0.75], [0.1])])
    assert row["mean.test_acc"] == 0.75 and row["ci95.test_acc"] is None
    assert "| ibp | 0.7 | confirmed | 1 | 0.7600 | 0.7500 | 0.1000 |" in format_confirmed([row])


def test_frontier_pictures_draw_confirmed_means_with_error_bars(tmp_path):
    from orchestrator.plots import Panel, frontier_figure, write_html, write_png

    a = confirmed("acert", 0.8, [0.82, 0.84, 0.83], [0.12, 0.13, 0.11])
    b = confirmed("ibp", 0.8, [0.85, 0.86, 0.84], [0.10, 0.09, 0.11])
    won = {
        "status": "ok",
        "trial_id": "t0",
        "val_acc": 0.9,
        "val_acr": 0.2,
        "test_acc": 0.88,
        "test_acr": 0.15,
    }
    rows = extend_rows([{"method": m, "target": 0.8, **won} for m in ("acert", "ibp")], [a, b])
    panel = Panel("synthetic", {"acert": [], "ibp": []}, rows, (0.8,))
    bars = [t for t in frontier_figure([panel]).data if t.error_y is not None and t.error_y.array is not None]
    assert len(bars) == 2
    acert = next(t for t in bars if t.name.startswith("acert"))
    assert acert.x == pytest.approx((0.83,)) and acert.y == pytest.approx((0.12,))
    assert acert.error_y.array == pytest.approx((mean_interval([0.12, 0.13, 0.11]).half,))
    assert acert.error_x.array == pytest.approx((mean_interval([0.82, 0.84, 0.83]).half,))
    assert "test_acr / ibp's: 1.200 ± " in acert.text[0]
    write_html([panel], tmp_path / "f.html")
    text = (tmp_path / "f.html").read_text()
    assert f"0.1200 ± {mean_interval([0.12, 0.13, 0.11]).half:.4f}" in text and "vs ibp" in text
    write_png([panel], tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0


def test_the_ratio_is_of_the_strongest_certificates_every_retrain_has():
    """With --cert-method best the retrains carry test_acr_best beside IBP's test_acr: the ratio,
    the table and frontier.html's column use it (IBP would rank these two the other way)."""
    from orchestrator.confirm_report import ACR_OF, CONFIRMED_COLS, confirmed_cell

    a = confirmed("acert", 0.8, [0.82, 0.83, 0.84], [0.10, 0.11, 0.12])
    b = confirmed("ibp", 0.8, [0.85, 0.86, 0.84], [0.12, 0.13, 0.14])
    for tc, best in ((a, [0.20, 0.21, 0.22]), (b, [0.14, 0.15, 0.16])):
        for k, v in zip(tc.attempts[-1].keys, best):
            tc.retrains[k].test.update({"test_acr_best": v, "test_acr_norm_best": v * 10})
    rows = [{"method": m, "target": 0.8, "status": "ok"} for m in ("acert", "ibp")]
    out = {r["method"]: r for r in extend_rows(rows, [a, b])}
    assert out["acert"][ACR_OF] == "test_acr_best" and out["acert"]["acr_ratio_vs"] == "ibp"
    expect = ratio_interval([0.20, 0.21, 0.22], [0.14, 0.15, 0.16])
    assert out["acert"]["acr_ratio"] == pytest.approx(expect.mean) == pytest.approx(0.21 / 0.15)
    table = format_confirmed(list(out.values()))
    assert "test_acr_best ratio (vs)" in table.splitlines()[0] and "| test_acr | test_acr_best |" in table
    (col,) = [c for c, f in CONFIRMED_COLS.items() if f == ACR_OF]
    assert confirmed_cell(out["acert"], col).startswith("0.2100 ± ") and "(test_acr_best)" in confirmed_cell(
        out["acert"], col
    )
    # one retrain without it: the ratio falls back to the trials' own certificates
    del b.retrains[b.attempts[-1].keys[0]].test["test_acr_best"]
    again = {r["method"]: r for r in extend_rows(rows, [a, b])}
    assert again["acert"][ACR_OF] == "test_acr" and again["acert"]["acr_ratio"] == pytest.approx(
        ratio_interval([0.10, 0.11, 0.12], [0.12, 0.13, 0.14]).mean
    )
