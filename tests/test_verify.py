"""``python -m trainers.verify``: re-certification of a checkpoint in a fresh process, and PGD
attacks that find nothing within any certified radius but succeed beyond them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import trainers.verify as verify
from trainers.config import TrainConfig
from trainers.train import run_training

RUN = {
    "dataset": "synthetic",
    "method": "ibp",
    "synthetic_size": 1024,
    "epochs": 4,
    "std_epochs": 1,
    "ramp_epochs": 2,
    "batch_size": 64,
    "val_acr_samples": 64,
    "device": "cpu",
    "threads": 1,
    "lr": 1e-2,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small IBP-trained model on the synthetic data set, and its final (recorded) metrics."""
    out = tmp_path_factory.mktemp("run")
    final = run_training(TrainConfig(**RUN), output_dir=out, log=lambda _: None)
    return out / "model.pt", final


@pytest.mark.slow
def test_verify_script_finds_no_attack_within_radii_and_some_beyond(trained, tmp_path):
    ckpt, final = trained
    out = tmp_path / "verify"
    cmd = [sys.executable, "-m", "trainers.verify", "--checkpoint", str(ckpt), "--dataset", "synthetic"]
    cmd += ["--output-dir", str(out), "--device", "cpu", "--steps", "30", "--restarts", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    s = json.loads((out / "summary.json").read_text())
    # the fresh process certifies the whole test split to what the training run recorded
    assert s["n"] == 256 and s["clean_acc"] == pytest.approx(final["test_acc"], abs=1e-9)
    assert s["acr"] == pytest.approx(final["test_acr"], rel=1e-6)
    assert s["certified"] > 100  # not vacuous
    assert s["success_rate"]["1"] == 0.0 and s["broken_certificates"] == 0 and s["sound"]
    assert s["success_rate"]["3"] > 0.2  # the attack works where no certificate holds
    assert set(s["success_rate"]) == {"1", "1.5", "3"}
    for e, acc in s["cert_acc"].items():  # certified accuracy <= PGD accuracy, at every standard eps
        assert acc <= s["pgd_acc"][e]
    rows = (out / "radii.csv").read_text().splitlines()
    assert len(rows) == 257


def test_inflated_radii_are_broken_certificates(trained, tmp_path, monkeypatch, capsys):
    """A bound that claims too much (radii x 4) is caught: exit code 1 and a loud message."""
    ckpt, _ = trained
    real = verify.evaluate_on

    def inflated(*args, **kwargs):
        res = real(*args, **kwargs)
        return {**res, "radii": res["radii"] * 4}

    monkeypatch.setattr(verify, "evaluate_on", inflated)
    argv = ["--checkpoint", str(ckpt), "--dataset", "synthetic", "--output-dir", str(tmp_path)]
    rc = verify.main([*argv, "--device", "cpu", "--limit", "64", "--steps", "20", "--restarts", "1"])
    assert rc == 1
    assert "BROKEN CERTIFICATES" in capsys.readouterr().err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["broken_certificates"] > 0 and not s["sound"] and s["success_rate"]["1"] > 0
    assert {"index", "radius", "eps"} <= s["broken"][0].keys()


def test_check_certificates_counts_a_success_at_a_certified_standard_eps():
    """A sample certified at r >= eps must survive the attack at eps as well."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
        net[1].bias.zero_()
    x = torch.full((1, 1, 2, 2), 0.1)  # margin 0.1: adversarial from eps 0.1 on
    y = torch.tensor([0])
    attack = verify.Attack(steps=5, restarts=1)
    sound = verify.check_certificates(net, x, y, torch.tensor([0.05]), y, (0.2,), attack=attack)
    assert sound["sound"] and sound["success_rate"] == {"1": 0.0, "1.5": 0.0, "3": 1.0}
    assert sound["success_rate_at_eps"] == {"0.2": 1.0} and sound["pgd_acc"] == {"0.2": 0.0}
    wrong = verify.check_certificates(net, x, y, torch.tensor([0.2]), y, (0.2,), attack=attack)
    assert not wrong["sound"] and wrong["broken_certificates"] == 2  # at its radius, and at eps 0.2
    assert [b["eps"] for b in wrong["broken"]] == pytest.approx([0.2, 0.2])


def test_verify_bad_input_exits_2(tmp_path, trained, capsys):
    ckpt, _ = trained
    base = ["--dataset", "synthetic", "--output-dir", str(tmp_path)]
    assert verify.main(["--checkpoint", str(tmp_path / "none.pt"), *base]) == 2
    assert "invalid --checkpoint" in capsys.readouterr().err
    assert verify.main(["--checkpoint", str(ckpt), *base, "--scales", "0.5"]) == 2
    assert "invalid --scales '0.5'" in capsys.readouterr().err
    assert verify.main(["--checkpoint", str(ckpt), *base, "--steps", "0"]) == 2
    assert "invalid --steps 0" in capsys.readouterr().err


def test_verify_with_best_certificates_finds_no_attack_within_radii(trained, tmp_path):
    """``--cert-method best`` (largest radius over IBP, CROWN-IBP and CROWN): no broken
    certificate, and at least the IBP-certified ACR on the same samples."""
    ckpt, _ = trained
    base = ["--checkpoint", str(ckpt), "--dataset", "synthetic", "--device", "cpu", "--limit", "64"]
    base += ["--steps", "30", "--restarts", "2"]
    summaries = {}
    for method in ("ibp", "best"):
        out = tmp_path / method
        assert verify.main([*base, "--output-dir", str(out), "--cert-method", method]) == 0
        summaries[method] = json.loads((out / "summary.json").read_text())
    best = summaries["best"]
    assert best["method"] == "best" and best["certified"] > 10 and best["broken_certificates"] == 0
    assert best["acr_uncapped"] >= summaries["ibp"]["acr_uncapped"]


def test_verify_bad_cert_method_exits_2_with_one_line(tmp_path, trained, capsys):
    ckpt, _ = trained
    out = tmp_path / "v"
    argv = [
        "--checkpoint",
        str(ckpt),
        "--dataset",
        "synthetic",
        "--output-dir",
        str(out),
        "--cert-method",
        "nope",
    ]
    assert verify.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid --cert-method 'nope'" in err
    assert not out.exists()
