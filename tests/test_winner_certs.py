"""The sweep's ``--cert-method``: the winners' test evaluation adds a second set of
certificates (e.g. ``best``) beside the trials' own IBP ones, the frontier table shows both,
and a bad value is refused up front (one line, exit code 2, nothing written)."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch

from orchestrator import evaluation as ev
from orchestrator import sweep
from orchestrator.cli import SweepConfig, parse_sweep_args
from trainers import metrics as M
from trainers.models import build_model, save_checkpoint

BASE = ["--dataset", "synthetic", "--accs", "0.5", "--methods", "ibp"]


def test_bad_cert_method_exits_2_with_one_line_before_anything_runs(in_tmp, capsys):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(sweep.main([*BASE, "--name", "s", "--cert-method", "zonotope"]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "invalid --cert-method 'zonotope'" in err
    assert list(in_tmp.iterdir()) == []  # nothing written


def test_cert_method_is_a_recorded_sweep_setting_defaulting_to_ibp(in_tmp):
    assert parse_sweep_args(BASE).test_cert_method == "ibp"
    cfg = parse_sweep_args([*BASE, "--cert-method", "best"])
    assert cfg.to_dict()["test_cert_method"] == "best"  # sweep.json and the parent run's params
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg
    # the trials keep their own (validation) bound: certifying every epoch with CROWN would cost too much
    assert cfg.trial({}).cert_method == "ibp"


class _Checkpoint:
    """What the evaluation needs of a Ray checkpoint: ``as_directory``."""

    def __init__(self, path):
        self.path = path

    @contextlib.contextmanager
    def as_directory(self):
        yield str(self.path)


def _winner(tmp_path):
    torch.manual_seed(0)
    net = build_model("cnn_tiny", input_shape=(1, 8, 8), num_classes=4, mean=(0.5,), std=(0.5,))
    net.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net(torch.rand(32, 1, 8, 8))
    net.eval()
    save_checkpoint(
        tmp_path / "model.pt", net, arch="cnn_tiny", input_shape=[1, 8, 8], num_classes=4, mean=[0.5],
        std=[0.5], width=None, config={"seed": 0, "val_fraction": 0.1, "synthetic_size": 256},
    )  # fmt: skip
    return _Checkpoint(tmp_path)


def test_winner_gets_best_certificates_beside_the_ibp_ones(in_tmp):
    cfg = parse_sweep_args(
        [*BASE, "--cert-method", "best", "--synthetic-size", "256", "--test-samples", "24"]
    )
    train = cfg.trial({"model": "cnn_tiny"})
    assert ev.second_method(cfg, train) == "best"
    out = ev.evaluate_checkpoint(_winner(in_tmp), train, "cpu", ev.second_method(cfg, train))
    assert out["test_n"] == 24.0
    # best takes each sample's largest radius, IBP's among them: never below IBP
    assert (
        out["test_acr_best"] >= out[M.TEST_ACR] and out["test_acr_uncapped_best"] >= out[M.TEST_ACR_UNCAPPED]
    )
    for key in [k for k in out if M.is_cert_acc(k)]:
        eps = key.split("@")[1]
        assert out[f"test_cert_acc_best@{eps}"] >= out[key]
    row = {"dataset": "synthetic", "method": "ibp", "target": 0.5, "status": "ok", "trial_id": "t1"}
    head = ev.format_table([{**row, M.VAL_ACC: 0.6, **out}]).splitlines()[0].split()
    assert head.index(M.TEST_ACR) < head.index("test_acr_best") < head.index("trial_id")
    assert "test_acr_norm_best" not in head and any(h.startswith("test_cert_acc_best@") for h in head)


def test_cached_entries_without_the_second_figures_are_redone(in_tmp, monkeypatch):
    """A winner evaluated before --cert-method best was given (resumed sweep) is evaluated
    again; one that has the figures is not."""
    cfg = parse_sweep_args([*BASE, "--cert-method", "best", "--storage", str(in_tmp), "--name", "s"])
    sweep_dir = in_tmp / "s"
    sweep_dir.mkdir()
    cached = {"old": {M.TEST_ACR: 0.1}, "new": {M.TEST_ACR: 0.2, "test_acr_best": 0.3}}
    (sweep_dir / ev.TEST_CACHE).write_text(json.dumps(cached))
    calls, threads = [], []

    def fake(ck, train, device, second=None):
        calls.append((ck, second))
        threads.append(train.threads)
        return {M.TEST_ACR: 0.1, "test_acr_best": 0.4}

    monkeypatch.setattr(ev, "evaluate_checkpoint", fake)
    out = ev.evaluate_winners(
        cfg, {"old": ("ck-old", {"method": "ibp"}), "new": ("ck-new", {"method": "ibp"})}
    )
    assert calls == [("ck-old", "best")]
    # the driver evaluates with the threads of the trials that ran at once (the search is over)
    assert threads == [ev.local_eval_threads(cfg)] == [min(os.cpu_count() or 1, cfg.max_concurrent)]
    assert out["old"]["test_acr_best"] == 0.4 and out["new"]["test_acr_best"] == 0.3
    assert json.loads((sweep_dir / ev.TEST_CACHE).read_text())["old"]["test_acr_best"] == 0.4
