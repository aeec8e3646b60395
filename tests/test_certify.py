"""Certification against independent truth: closed-form radii of linear classifiers, and
PGD attacks that must fail inside every certified radius."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.test_bounds import pgd_min_margin, true_margins
from trainers.certify import SAFETY_REL, certified_radii, main, summarize
from trainers.models import Normalize, build_model, save_checkpoint


def linear_net(d=16, k=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(Normalize((0.5,), (0.2,)), nn.Flatten(), nn.Linear(d, k)).eval()


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "best"])
def test_linear_classifier_radius_matches_closed_form(method):
    """radius = min_j (margin_j - safety) / ||w_y - w_j||_1 (in pixel units: W / std)."""
    net = linear_net()
    x = torch.rand(64, 1, 4, 4) * 0.4 + 0.3  # inside the domain: the box is not clipped
    with torch.no_grad():
        logits = net(x)
    y = logits.argmax(1)
    y[:4] = (y[:4] + 1) % 4  # misclassified samples get radius 0
    radii, preds = certified_radii(net, x, y, eps_cap=0.3, method=method, rel_tol=1e-3)
    w = net[2].weight / 0.2  # pixel-space weights
    thr = SAFETY_REL * (1 + logits.abs().amax(1))
    expected = torch.full((64,), float("inf"))
    for j in range(4):
        m = logits.gather(1, y[:, None]).squeeze(1) - logits[:, j]
        dist = (w[y] - w[j]).abs().sum(1)
        cand = torch.where(y == j, torch.full_like(m, float("inf")), (m - thr) / dist)
        expected = torch.minimum(expected, cand)
    expected = torch.where(preds == y, expected.clamp(0, 0.3), torch.zeros_like(expected))
    assert (radii[:4] == 0).all()
    assert (radii <= expected * (1 + 1e-5) + 1e-7).all()
    assert (radii >= expected * (1 - 1e-3) - 1e-7).all()


def test_no_pgd_attack_succeeds_below_the_certified_radius():
    torch.manual_seed(0)
    net = build_model("cnn_tiny", input_shape=(1, 8, 8), num_classes=3, mean=(0.5,), std=(0.3,))
    # non-trivial BatchNorm statistics, then eval mode
    net.train()
    with torch.no_grad():
        net(torch.rand(64, 1, 8, 8))
    net.eval()
    x = torch.rand(40, 1, 8, 8)
    with torch.no_grad():
        y = net(x).argmax(1)
    for method in ("ibp", "crown-ibp"):
        radii, _ = certified_radii(net, x, y, eps_cap=0.5, method=method)
        assert (radii > 0).sum() > 10  # the test is not vacuous
        adv = pgd_min_margin(net, x, y, radii, steps=60)
        with torch.no_grad():
            assert (true_margins(net, adv, y).min(1).values > 0).all()


def test_summary_acr_and_certified_accuracy():
    radii = torch.tensor([0.0, 0.1, 0.2, 0.4])
    preds = torch.tensor([1, 0, 0, 0])
    y = torch.tensor([0, 0, 0, 0])
    s = summarize(radii, preds, y, (0.1, 0.3), max_eps=0.4)
    assert s["clean_acc"] == 0.75
    assert s["acr"] == pytest.approx(0.7 / 4)
    assert s["acr_norm"] == pytest.approx(0.7 / 4 / 0.4)
    assert s["cert_acc"] == {"0.1": 0.75, "0.3": 0.25}


def test_certify_cli_writes_radii_and_summary(tmp_path, capsys):
    net = build_model("mlp_tiny", input_shape=(1, 8, 8), num_classes=4, mean=(0.5,), std=(0.5,))
    ckpt = tmp_path / "model.pt"
    save_checkpoint(
        ckpt,
        net,
        arch="mlp_tiny",
        input_shape=[1, 8, 8],
        num_classes=4,
        mean=[0.5],
        std=[0.5],
        width=None,
        config={"seed": 0, "val_fraction": 0.1, "synthetic_size": 256},
    )
    out = tmp_path / "cert"
    rc = main(
        [
            "--checkpoint",
            str(ckpt),
            "--dataset",
            "synthetic",
            "--output-dir",
            str(out),
            "--limit",
            "20",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    rows = (out / "radii.csv").read_text().splitlines()
    assert rows[0] == "index,label,prediction,certified_radius" and len(rows) == 21
    summary = json.loads((out / "summary.json").read_text())
    assert {"clean_acc", "acr", "cert_acc", "method", "rel_tol"} <= summary.keys()
    radii = [float(r.split(",")[3]) for r in rows[1:]]
    assert summary["acr"] == pytest.approx(sum(radii) / 20, rel=1e-6)


def test_certify_cli_bad_input_exits_2(tmp_path, capsys):
    assert (
        main(["--checkpoint", str(tmp_path / "none.pt"), "--dataset", "synthetic", "--output-dir", "o"]) == 2
    )
    assert "invalid --checkpoint" in capsys.readouterr().err
    assert main(["--checkpoint", "x", "--dataset", "imagenet", "--output-dir", "o"]) == 2
    assert "invalid --dataset 'imagenet'" in capsys.readouterr().err
