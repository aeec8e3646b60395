"""Certification against independent truth: closed-form radii of linear classifiers, and
PGD attacks that must fail inside every certified radius."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.test_bounds import pgd_min_margin, true_margins
from trainers.certify import SAFETY_REL, certified_radii, evaluate, main, summarize
from trainers.models import Normalize, build_model, save_checkpoint


def linear_net(d=16, k=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(Normalize((0.5,), (0.2,)), nn.Flatten(), nn.Linear(d, k)).eval()


@torch.no_grad()
def closed_form_radii(net, x, y, eps_cap):
    """The exact certified radius of a linear classifier (0 if misclassified), capped at eps_cap:
    min_j (margin_j - safety) / ||w_y - w_j||_1 (in pixel units: W / std)."""
    logits = net(x)
    w = net[2].weight / 0.2  # pixel-space weights
    thr = SAFETY_REL * (1 + logits.abs().amax(1))
    expected = torch.full((x.shape[0],), float("inf"))
    for j in range(logits.shape[1]):
        m = logits.gather(1, y[:, None]).squeeze(1) - logits[:, j]
        dist = (w[y] - w[j]).abs().sum(1)
        cand = torch.where(y == j, torch.full_like(m, float("inf")), (m - thr) / dist)
        expected = torch.minimum(expected, cand)
    return torch.where(logits.argmax(1) == y, expected.clamp(0, eps_cap), torch.zeros_like(expected))


def linear_batch(net, n=64, wrong=4):
    x = torch.rand(n, 1, 4, 4) * 0.4 + 0.3  # inside the domain: the box is not clipped
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:wrong] = (y[:wrong] + 1) % 4  # misclassified samples get radius 0
    return x, y


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "best"])
def test_linear_classifier_radius_matches_closed_form(method):
    net = linear_net()
    x, y = linear_batch(net)
    radii, preds = certified_radii(net, x, y, eps_cap=0.3, method=method, rel_tol=1e-3)
    expected = closed_form_radii(net, x, y, 0.3)
    assert (radii[:4] == 0).all()
    assert (radii <= expected * (1 + 1e-5) + 1e-7).all()
    assert (radii >= expected * (1 - 1e-3) - 1e-7).all()


def test_no_pgd_attack_succeeds_below_the_certified_radius():
    net, x, y = _tiny_cnn_batch()
    for method in ("ibp", "crown-ibp"):
        radii, _ = certified_radii(net, x, y, eps_cap=0.5, method=method)
        assert (radii > 0).sum() > 10  # the test is not vacuous
        adv = pgd_min_margin(net, x, y, radii, steps=60)
        with torch.no_grad():
            assert (true_margins(net, adv, y).min(1).values > 0).all()


def test_summary_acr_and_certified_accuracy():
    radii = torch.tensor([0.3, 0.1, 0.2, 0.4])  # the first is misclassified: it counts as 0
    preds = torch.tensor([1, 0, 0, 0])
    y = torch.tensor([0, 0, 0, 0])
    s = summarize(radii, preds, y, (0.1, 0.3), max_eps=0.4)
    assert s["clean_acc"] == 0.75
    assert s["acr"] == pytest.approx(0.7 / 4) and s["acr_uncapped"] == pytest.approx(0.7 / 4)
    assert s["acr_norm"] == pytest.approx(100 * 0.7 / 4 / 0.4)  # in %
    assert s["cert_acc"] == {"0.1": 0.75, "0.3": 0.25}
    # radii above max_eps count as max_eps in the ACR, not in the uncapped figure
    s = summarize(radii, preds, y, (0.1,), max_eps=0.15)
    assert s["acr"] == pytest.approx((0.1 + 0.15 + 0.15) / 4)
    assert s["acr_uncapped"] == pytest.approx(0.7 / 4)
    assert s["acr_norm"] == pytest.approx(100 * 0.4 / 4 / 0.15)
    assert summarize(radii, preds, y, (), max_eps=1e-9)["acr_norm"] == pytest.approx(75.0)  # at most 100
    s = summarize(radii, preds, y, (), max_eps=None)  # nothing to cap at
    assert s["acr"] == s["acr_uncapped"] and "acr_norm" not in s


def test_capped_and_uncapped_acr_match_closed_form():
    """A linear classifier's exact radii: ACR = mean min(r, max_eps), uncapped ACR = mean r."""
    net = linear_net()
    x, y = linear_batch(net, n=128)
    exact = closed_form_radii(net, x, y, eps_cap=0.3).double()
    max_eps = float(exact[exact > 0].median())  # half the certified samples lie above the cap
    res = evaluate(net, x, y, eps_cap=0.3, cert_eps=(max_eps / 2,), max_eps=max_eps, rel_tol=1e-4)
    capped = exact.clamp(max=max_eps).mean().item()
    assert res["acr"] == pytest.approx(capped, rel=2e-4)
    assert res["acr_uncapped"] == pytest.approx(exact.mean().item(), rel=2e-4)
    assert res["acr_uncapped"] > res["acr"] * 1.05  # the cap matters here
    assert res["acr_norm"] == pytest.approx(100 * capped / max_eps, rel=2e-4)
    assert res["max_eps"] == max_eps and res["eps_cap"] == 0.3


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
    assert {"clean_acc", "acr", "acr_norm", "acr_uncapped", "cert_acc", "method", "rel_tol"} <= summary.keys()
    radii = [float(r.split(",")[3]) for r in rows[1:]]
    assert summary["acr_uncapped"] == pytest.approx(sum(radii) / 20, rel=1e-6)
    max_eps = summary["max_eps"]  # the data set's
    assert summary["acr"] == pytest.approx(sum(min(r, max_eps) for r in radii) / 20, rel=1e-6)


def test_certify_cli_bad_input_exits_2(tmp_path, capsys):
    assert (
        main(["--checkpoint", str(tmp_path / "none.pt"), "--dataset", "synthetic", "--output-dir", "o"]) == 2
    )
    assert "invalid --checkpoint" in capsys.readouterr().err
    assert main(["--checkpoint", "x", "--dataset", "imagenet", "--output-dir", "o"]) == 2
    assert "invalid --dataset 'imagenet'" in capsys.readouterr().err


def _tiny_cnn_batch():
    """A small CNN with non-trivial BatchNorm statistics, in eval mode, and 40 inputs labelled
    by its own predictions."""
    torch.manual_seed(0)
    net = build_model("cnn_tiny", input_shape=(1, 8, 8), num_classes=3, mean=(0.5,), std=(0.3,))
    net.train()
    with torch.no_grad():
        net(torch.rand(64, 1, 8, 8))
    net.eval()
    x = torch.rand(40, 1, 8, 8)
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


@pytest.mark.parametrize("method", ["crown", "alpha-crown", "best"])
def test_no_pgd_attack_succeeds_below_a_crown_or_best_radius(method):
    net, x, y = _tiny_cnn_batch()
    radii, _ = certified_radii(net, x, y, eps_cap=0.5, method=method)
    assert (radii > 0).sum() > 10  # the test is not vacuous
    adv = pgd_min_margin(net, x, y, radii, steps=60)
    with torch.no_grad():
        assert (true_margins(net, adv, y).min(1).values > 0).all()


def test_best_radius_is_each_samples_largest_over_ibp_crown_ibp_and_crown():
    from trainers.bounds import BEST_OF

    net, x, y = _tiny_cnn_batch()
    each = torch.stack([certified_radii(net, x, y, eps_cap=0.5, method=m)[0] for m in BEST_OF])
    best, _ = certified_radii(net, x, y, eps_cap=0.5, method="best")
    assert torch.equal(best, each.amax(0))
    assert (each[2] > each[0]).any()  # CROWN certifies more than IBP somewhere: best covers it


def _checkpoint(tmp_path):
    net = build_model("mlp_tiny", input_shape=(1, 8, 8), num_classes=4, mean=(0.5,), std=(0.5,))
    ckpt = tmp_path / "model.pt"
    save_checkpoint(
        ckpt, net, arch="mlp_tiny", input_shape=[1, 8, 8], num_classes=4, mean=[0.5], std=[0.5], width=None,
        config={"seed": 0, "val_fraction": 0.1, "synthetic_size": 256},
    )  # fmt: skip
    return ckpt


@pytest.mark.parametrize("flag", ["--cert-method", "--method"])  # --method: the earlier name, an alias
def test_certify_cli_cert_method(tmp_path, flag):
    ckpt = _checkpoint(tmp_path)
    base = ["--checkpoint", str(ckpt), "--dataset", "synthetic", "--limit", "12", "--device", "cpu"]
    summaries = {}
    for method in ("ibp", "best"):
        out = tmp_path / method
        assert main([*base, "--output-dir", str(out), flag, method]) == 0
        summaries[method] = json.loads((out / "summary.json").read_text())
        assert summaries[method]["method"] == method
    assert summaries["best"]["acr_uncapped"] >= summaries["ibp"]["acr_uncapped"]


def test_certify_cli_bad_cert_method_exits_2_with_one_line(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "cert"
    argv = [
        "--checkpoint",
        str(ckpt),
        "--dataset",
        "synthetic",
        "--output-dir",
        str(out),
        "--cert-method",
        "zonotope",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid --cert-method 'zonotope'" in err and "crown" in err
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("method", ["crown-ibp", "crown", "best"])
def test_a_given_context_gives_the_radii_of_none(method):
    """A clean-pass context (its BatchNorm maps) changes nothing; in particular CROWN-IBP does
    not reuse the pre-activation bounds it recorded for an earlier radius or sub-batch."""
    from trainers.bounds import clean_pass
    from trainers.certify import certified_radii_batch

    net, x, y = _tiny_cnn_batch()
    with torch.no_grad():
        _, ctx = clean_pass(net, x)
    plain, _ = certified_radii_batch(net, x, y, eps_cap=0.5, method=method)
    given, _ = certified_radii_batch(net, x, y, eps_cap=0.5, method=method, ctx=ctx)
    assert (plain > 0).sum() > 10 and torch.equal(plain, given)
