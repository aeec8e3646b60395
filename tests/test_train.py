"""The training loop, the methods and ACERT's adaptive radii, on the synthetic data set."""

from __future__ import annotations

import copy

import pytest
import torch

from trainers.certify import certified_radii
from trainers.config import ConfigError, TrainConfig
from trainers.methods import TRAINING_METHODS, build_method
from trainers.models import build_model, load_model
from trainers.radius import adaptive_radii
from trainers.train import (
    DivergedError,
    StopRequested,
    build_optimizer,
    l1_norm,
    main,
    parse_train_args,
    run_training,
    train_step,
)

QUICK = {
    "dataset": "synthetic",
    "synthetic_size": 512,
    "epochs": 3,
    "std_epochs": 1,
    "ramp_epochs": 1,
    "batch_size": 64,
    "val_acr_samples": 64,
    "device": "cpu",
    "threads": 1,
    "lr": 1e-2,
}


def quiet(_msg: str) -> None:
    pass


@pytest.mark.parametrize("method", sorted(TRAINING_METHODS))
def test_every_method_trains_and_writes_a_reloadable_checkpoint(method, tmp_path):
    cfg = TrainConfig(method=method, **QUICK)
    seen = []
    final = run_training(cfg, output_dir=tmp_path, on_epoch=lambda m, out: seen.append(m), log=quiet)
    assert [m["epoch"] for m in seen] == [1, 2, 3] and final["done"] is True
    for key in (
        "train_loss",
        "train_acc",
        "mean_radius",
        "eps_max",
        "val_acc",
        "val_acr",
        "val_acr_norm",
        "test_acc",
        "test_acr",
        "epoch_time_s",
    ):
        assert key in final
    assert final["val_acc"] > 0.5  # separable data: every method learns something
    model, meta = load_model(tmp_path / "model.pt")
    assert meta["config"]["method"] == method and not model.training
    if method != "standard":
        assert final["eps_max"] == pytest.approx(cfg.train_max_eps)


def test_training_is_deterministic_and_resume_reproduces_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(method="acert", **QUICK)
    ref = run_training(cfg, output_dir=tmp_path / "a", log=quiet)
    assert run_training(cfg, output_dir=tmp_path / "b", log=quiet)["val_acr"] == ref["val_acr"]

    class Stop(Exception):
        pass

    def stop_after_two(m, out):
        if m["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run_training(cfg, output_dir=tmp_path / "c", on_epoch=stop_after_two, log=quiet)
    epochs = []
    resumed = run_training(
        cfg, output_dir=tmp_path / "c", on_epoch=lambda m, o: epochs.append(m["epoch"]), log=quiet
    )
    assert epochs == [3]
    for key in ("train_loss", "val_acc", "val_acr", "test_acr"):
        assert resumed[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7)


def test_a_stop_request_drops_the_epoch_in_progress_and_resume_reproduces_the_run(tmp_path):
    """should_stop (a trial's SIGTERM) ends the loop between two steps; output_dir keeps the last
    finished epoch, and training on from it gives the uninterrupted run's figures."""
    cfg = TrainConfig(method="acert", **QUICK)
    ref = run_training(cfg, output_dir=tmp_path / "a", log=quiet)
    steps_per_epoch = 512 // 64 - (512 // 64) // 10  # a lower bound: the training split is < 512
    asked = []

    def stop_in_epoch_two():
        asked.append(1)
        return len(asked) > steps_per_epoch + 2  # a few steps into the second epoch

    reported = []
    with pytest.raises(StopRequested) as e:
        run_training(
            cfg,
            output_dir=tmp_path / "b",
            on_epoch=lambda m, o: reported.append(m["epoch"]),
            should_stop=stop_in_epoch_two,
            log=quiet,
        )
    assert e.value.epoch == 1 and reported == [1]
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["epoch"] == 1
    epochs = []
    splits = cfg.load_splits()  # handed in, as a reused trial process does
    resumed = run_training(
        cfg,
        output_dir=tmp_path / "b",
        on_epoch=lambda m, o: epochs.append(m["epoch"]),
        splits=splits,
        log=quiet,
    )
    assert epochs == [2, 3]
    for key in ("train_loss", "val_acc", "val_acr", "test_acr"):
        assert resumed[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7)


_UNPICKLED: list[str] = []


def _ran_from_a_pickle(what: str) -> str:
    _UNPICKLED.append(what)
    return what


class _Payload:
    """What a tampered file may hold: unpickling it calls a function of the writer's choice."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __reduce__(self):
        return (_ran_from_a_pickle, (self.what,))


def test_state_and_model_files_holding_code_are_refused_not_run(tmp_path):
    """Checkpoints lie on storage every worker can write: loading them (resume, evaluation)
    accepts tensors and plain types only, never an object whose unpickling runs code."""
    import pickle

    cfg = TrainConfig(method="ibp", **{**QUICK, "epochs": 2})
    run_training(cfg, output_dir=tmp_path, log=quiet)
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # what the loop writes loads
    torch.save(
        {**state, "epoch": 1, "history": [*state["history"][:1], _Payload("state")]}, tmp_path / "state.pt"
    )
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        run_training(cfg, output_dir=tmp_path, log=quiet)
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.save({**ckpt, "config": _Payload("model")}, tmp_path / "model.pt")
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        load_model(tmp_path / "model.pt")
    assert _UNPICKLED == []


def test_nan_loss_raises_diverged(tmp_path):
    cfg = TrainConfig(method="ibp", **{**QUICK, "lr": 1e30, "grad_clip": 0.0, "std_epochs": 0})
    with pytest.raises(DivergedError, match="loss is nan|loss is inf"):
        run_training(cfg, output_dir=tmp_path, log=quiet)


def test_adaptive_radii_are_capped_certified_radii_and_zero_when_misclassified():
    torch.manual_seed(0)
    net = build_model("cnn_tiny", input_shape=(1, 8, 8), num_classes=3, mean=(0.5,), std=(0.3,)).eval()
    x = torch.rand(48, 1, 8, 8)
    with torch.no_grad():
        pred = net(x).argmax(1)
    y = pred.clone()
    y[:8] = (y[:8] + 1) % 3
    cert, _ = certified_radii(net, x, y, eps_cap=1.0, rel_tol=1e-6)
    cap = float(cert[8:].median())  # half of the correct samples reach the cap
    radii = adaptive_radii(net, x, y, cap, iters=60, rel_tol=1e-6)
    assert (radii[:8] == 0).all()
    assert (radii <= cap).all() and (radii == cap).sum() >= 15
    # below the cap the adaptive radius is the certified radius (safety margin aside)
    below = cert[8:] < cap * 0.99
    torch.testing.assert_close(radii[8:][below], cert[8:][below], rtol=1e-3, atol=1e-6)


def test_acert_trains_samples_at_their_own_radius(tmp_path):
    cfg = TrainConfig(method="acert", **{**QUICK, "epochs": 4, "ramp_epochs": 2})
    hist = []
    run_training(cfg, output_dir=tmp_path, on_epoch=lambda m, o: hist.append(m), log=quiet)
    # during the ramp the mean adaptive radius is positive and never exceeds the cap
    assert all(0.0 <= m["mean_radius"] <= m["eps_max"] * (1 + 1e-6) for m in hist)  # float32 cap
    assert hist[-1]["mean_radius"] > 0


def test_config_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match="dataset='imagenet'"):
        TrainConfig(dataset="imagenet")
    with pytest.raises(ValueError, match="kappa=1.5"):
        TrainConfig(kappa=1.5)
    with pytest.raises(ValueError, match="method='no-such-method'"):
        TrainConfig(method="no-such-method")
    # a key neither the run nor its method knows is an error naming the key and the method
    with pytest.raises(ConfigError, match="'target' for method 'acert'"):
        TrainConfig.from_dict({"dataset": "synthetic", "lr": 0.01, "target": 0.9})
    with pytest.raises(ConfigError, match="'beta_start' for method 'ibp'"):
        TrainConfig.from_dict({"method": "ibp", "beta_start": 0.5})
    with pytest.raises(ConfigError, match="root_iters=0"):
        TrainConfig.from_dict({"method": "acert", "root_iters": 0})
    cfg = TrainConfig.from_dict({"dataset": "synthetic", "lr": 0.01, "method": "crown-ibp", "beta_end": 0.25})
    assert cfg.lr == 0.01 and cfg.params.beta_end == 0.25 and cfg.params.beta_start == 1.0
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(method="acert").params == TrainConfig(method="acert").params


def test_cli_bad_input_exits_2_and_runs(tmp_path, capsys):
    assert main(["--dataset", "nope", "--output-dir", str(tmp_path)]) == 2
    assert "dataset='nope'" in capsys.readouterr().err
    assert main(["--method", "ibp", "--min-eps", "0.1", "--output-dir", str(tmp_path)]) == 2
    assert "'min_eps' for method 'ibp'" in capsys.readouterr().err
    assert main(["--epochs", "three", "--output-dir", str(tmp_path)]) == 2
    assert "--epochs" in capsys.readouterr().err
    missing = tmp_path / "empty"
    assert (
        main(
            [
                "--dataset",
                "mnist",
                "--no-download",
                "--data-dir",
                str(missing),
                "--output-dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert str(missing) in capsys.readouterr().err
    rc = main(
        [
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "256",
            "--epochs",
            "2",
            "--method",
            "ibp",
            "--output-dir",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and "final:" in capsys.readouterr().out
    assert (tmp_path / "run" / "model.pt").exists()


def test_one_cycle_schedule_is_the_papers():
    """Linear, three phases (the authors' configs; docs/method.md): lr/25 -> lr over the first 30 % of
    the steps, back to lr/25 by 60 %, then to lr/25/100 at the end."""
    lr = 2e-3
    net = torch.nn.Linear(2, 2)
    opt, sched = build_optimizer(net, TrainConfig(lr=lr), 99)  # 99 updates
    lrs = [sched.get_last_lr()[0]]
    for _ in range(99):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] == pytest.approx(lr / 25)  # start
    assert max(lrs) == pytest.approx(lr) and lrs.index(max(lrs)) == 29  # peak
    assert lrs[58] == pytest.approx(lr / 25)  # end of the second phase
    assert lrs[-1] == pytest.approx(lr / 2500)  # end
    steps = [b - a for a, b in zip(lrs[:29], lrs[1:30])]
    assert steps == pytest.approx([steps[0]] * 29)  # linear, not cosine


def test_a_run_ends_at_the_final_learning_rate(tmp_path):
    cfg = TrainConfig(method="ibp", **QUICK)
    seen = []
    run_training(cfg, output_dir=tmp_path, on_epoch=lambda m, out: seen.append(m["lr"]), log=quiet)
    assert all(v > 0 for v in seen)
    assert seen[-1] == pytest.approx(cfg.lr / 2500)


def test_l1_weight_decay_adds_lambda_sign_w_to_the_gradient():
    """l1 * sum |w| over conv and linear weights only (the paper's code): with SGD at lr 1 the
    update differs from the plain one by exactly l1 * sign(w) on those weights, 0 elsewhere."""
    torch.manual_seed(0)
    net = build_model("cnn_tiny", input_shape=(1, 8, 8), num_classes=3, mean=(0.5,), std=(0.3,))
    w = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert l1_norm(net).item() == pytest.approx(sum(float(p.detach().abs().sum()) for p in w), rel=1e-6)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    method = build_method(TrainConfig(method="standard"), steps_per_epoch=1)
    lam = 1e-2
    after, losses = [], []
    for l1 in (0.0, lam):
        model = copy.deepcopy(net)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        _, loss = train_step(model, method, opt, None, x, y, 0, grad_clip=0.0, l1=l1)
        after.append(dict(model.named_parameters()))
        losses.append(loss)
    assert losses[1] - losses[0] == pytest.approx(lam * l1_norm(net).item(), rel=1e-4)
    penalised = {n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)}
    for name, p in net.named_parameters():
        diff = (after[0][name] - after[1][name]).detach()
        owner, kind = name.rsplit(".", 1)
        want = lam * p.detach().sign() if owner in penalised and kind == "weight" else torch.zeros_like(p)
        torch.testing.assert_close(diff, want, rtol=1e-4, atol=1e-6)


def test_l1_setting_is_checked_and_has_a_flag(tmp_path):
    with pytest.raises(ConfigError, match="l1=-0.1"):
        TrainConfig(l1=-0.1)
    cfg, _ = parse_train_args(["--l1", "1e-4", "--output-dir", str(tmp_path)])
    assert cfg.l1 == 1e-4 and TrainConfig().l1 == 0.0
    assert TrainConfig.from_dict(cfg.to_dict()).l1 == 1e-4
