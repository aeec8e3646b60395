"""``orchestrator.compare``: two sweeps' confirmed frontiers side by side: interval overlap per
(method, target), and whether the per-target method rankings (by the confirmed ACR) agree."""

import json

import pytest

from orchestrator.compare import compare, format_comparison, main


def row(method, target, acc, acr, half=0.01, status="confirmed", of="test_acr_best"):
    r = {"method": method, "target": target, "status": "ok", "confirm_status": status}
    if status == "confirmed":
        r.update({"mean.test_acc": acc, "ci95.test_acc": half, f"mean.{of}": acr, f"ci95.{of}": half})
        r["confirm_acr_of"] = of
    return r


def test_overlap_and_rankings():
    a = [row("acert", 0.8, 0.82, 0.10), row("ibp", 0.8, 0.85, 0.08), row("acert", 0.85, 0.86, 0.05),
         row("ibp", 0.85, 0.87, 0.03)]  # fmt: skip
    b = [row("acert", 0.8, 0.83, 0.07), row("ibp", 0.8, 0.84, 0.085), row("acert", 0.85, 0.86, 0.052),
         row("ibp", 0.85, 0, 0, status="not confirmed")]  # fmt: skip
    out = compare(a, b)
    pairs = {(p["method"], p["target"]): p for p in out["pairs"]}
    assert pairs[("acert", 0.8)]["acc_overlap"] is True  # 0.81-0.83 and 0.82-0.84
    assert pairs[("acert", 0.8)]["acr_overlap"] is False  # 0.09-0.11 against 0.06-0.08
    assert pairs[("ibp", 0.8)]["acr_overlap"] is True
    assert pairs[("ibp", 0.85)]["acr_overlap"] is None and pairs[("ibp", 0.85)]["b"] is False
    ranks = {r["target"]: r for r in out["rankings"]}
    assert (ranks[0.8]["a"], ranks[0.8]["b"]) == (["acert", "ibp"], ["ibp", "acert"])
    assert not ranks[0.8]["agree"] and not ranks[0.8]["first_agrees"]
    assert ranks[0.85]["b"] == ["acert"] and not ranks[0.85]["agree"] and ranks[0.85]["first_agrees"]
    text = format_comparison(out)
    assert (
        "| 0.8 | acert | 0.8200 ± 0.0100 | 0.8300 ± 0.0100 | yes | 0.1000 ± 0.0100 | 0.0700 ± 0.0100 | no |"
        in text
    )
    assert "| 0.8 | acert > ibp | ibp > acert | no | no |" in text


def test_cli_reads_sweep_folders_and_rejects_bad_input(tmp_path, capsys):
    for name, acr in (("s0", 0.1), ("s1", 0.105)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "frontier.json").write_text(json.dumps([row("acert", 0.8, 0.82, acr)]))
    assert main([str(tmp_path / "s0"), str(tmp_path / "s1" / "frontier.json")]) == 0
    assert "| 0.8 | acert | 0.8200 ± 0.0100 | 0.8200 ± 0.0100 | yes |" in capsys.readouterr().out
    assert main([str(tmp_path / "s0"), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "frontier.json").write_text(json.dumps([{"method": "ibp", "target": 0.8}]))
    assert main([str(tmp_path / "plain"), str(tmp_path / "plain")]) == 2
    assert "--confirm-seeds" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{", '{"a": 1}'])
def test_a_broken_frontier_file_is_one_line(tmp_path, capsys, text):
    (tmp_path / "frontier.json").write_text(text)
    assert main([str(tmp_path), str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_row_without_confirm_acr_of_uses_its_one_stronger_acr():
    old = row("acert", 0.8, 0.82, 0.10, of="test_acr_crown-ibp")
    del old["confirm_acr_of"]
    old.update({"mean.test_acr": 0.01, "mean.test_acr_norm_crown-ibp": 1.0})
    out = compare([old], [old])
    (pair,) = out["pairs"]
    assert pair["acr_a"] == pytest.approx((0.09, 0.11))
