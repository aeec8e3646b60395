"""Contract suites over the registries: whatever is registered is tested, with no list to keep.

- every data set spec loads its small fixture (written here) into the shape and classes it states;
- every training method makes a step on every model, without error and with a finite loss
  and gradients, before and during the radius ramp, and declares its checkpoint hooks;
  a plugin method (tests/toy_method.py: one file, one register line) is among them;
- every registered bound method is run by the soundness suite (tests/test_bounds.py
  parametrises over ``BOUND_METHODS``; here only that nothing is left out);
- every search space samples only settings its method accepts (tests/test_search_spaces.py).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests import toy_method  # a plugin method: imported, it is registered like the built-in ones
from tests.test_data import write_cifar, write_mnist, write_tinyimagenet
from tests.test_models import SMALL, small_model
from trainers.bounds import ibp_margins, joint_ibp
from trainers.config import TrainConfig
from trainers.data import DATASETS, load_splits
from trainers.methods import TRAINING_METHODS, build_method
from trainers.methods.base import mixed_loss, robust_ce
from trainers.methods.certified import CertifiedTraining
from trainers.methods.losses import KappaMixing, LossBase, LossInput, LossOutput
from trainers.models import MODELS
from trainers.radius import FixedRadius
from trainers.train import run_training

FIXTURES = {  # data set -> writer of its small on-disk fixture (None: generated in code)
    "mnist": lambda root: write_mnist(root, "MNIST", gz=False),
    "fashion-mnist": lambda root: write_mnist(root, "FashionMNIST", gz=True),
    "cifar10": write_cifar,
    "tinyimagenet": write_tinyimagenet,
    "synthetic": None,
    "synthetic-tradeoff": None,
}


def test_every_data_set_has_a_fixture():
    assert set(FIXTURES) == set(DATASETS.names())


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_data_set_spec_loads_its_fixture(name, tmp_path):
    spec = DATASETS[name]
    if FIXTURES[name] is not None:
        FIXTURES[name](tmp_path)
    s = load_splits(name, data_dir=str(tmp_path), download=False, val_fraction=0.2, synthetic_size=64)
    for x, y in ((s.x_train, s.y_train), (s.x_val, s.y_val), (s.x_test, s.y_test)):
        assert tuple(x.shape[1:]) == spec.input_shape and len(x) == len(y) > 0
        assert int(y.min()) >= 0 and int(y.max()) < spec.num_classes
    assert spec.default_model in MODELS
    assert 0 < spec.max_eps <= spec.eps_cap and all(0 < e <= spec.eps_cap for e in spec.cert_eps)


def test_every_model_is_in_the_method_suite():
    assert set(SMALL) == set(MODELS.names())


@pytest.mark.parametrize("model_name", MODELS.names())
@pytest.mark.parametrize("method", TRAINING_METHODS.names())
def test_every_method_steps_on_every_model(method, model_name):
    torch.manual_seed(0)
    shape, k = (3, 8, 8), 5
    model = small_model(model_name, shape=shape, num_classes=k).train()
    cfg = TrainConfig(
        dataset="synthetic",
        method=method,
        epochs=4,
        std_epochs=1,
        ramp_epochs=2,
        max_eps=0.05,
        kappa=0.25,
        reg_weight=0.5,
    )
    m = build_method(cfg, steps_per_epoch=2)
    x, y = torch.rand(6, *shape), torch.arange(6) % k
    for step in (0, 3, 7):  # standard epoch, mid-ramp (regulariser on), after the ramp
        out = m.step(model, x, y, step)
        assert out.logits.shape == (6, k) and math.isfinite(out.loss.item())
        model.zero_grad()
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert 0.0 <= float(out.mean_radius) <= out.eps_max + 1e-6


@pytest.mark.parametrize("method", TRAINING_METHODS.names())
def test_every_method_declares_its_checkpoint_hooks(method):
    """The loop calls them on every method (no probing): a method without state returns {}."""
    m = build_method(TrainConfig(dataset="synthetic", method=method), steps_per_epoch=2)
    state = m.state_dict()
    assert isinstance(state, dict)
    m.load_state_dict(state)


def test_the_suites_run_the_built_in_methods_and_a_plugin():
    assert {"acert", "crown-ibp", "ibp", "mtl-ibp", "sabr", "standard"} <= set(TRAINING_METHODS.names())
    assert toy_method.NAME in TRAINING_METHODS.names()


def test_a_plugin_method_trains_with_its_own_radius_policy(tmp_path):
    """tests/toy_method.py is one file with one register line: it trains through the loop, at
    its own radius (a fraction of eps_max(t)), with nothing else changed."""
    cfg = TrainConfig(
        dataset="synthetic",
        method=toy_method.NAME,
        synthetic_size=256,
        epochs=2,
        std_epochs=0,
        ramp_epochs=1,
        batch_size=64,
        val_acr_samples=32,
        device="cpu",
        threads=1,
    ).replace(fraction=0.25)
    final = run_training(cfg, output_dir=tmp_path, log=lambda _msg: None)
    assert final["done"] and final["eps_max"] == pytest.approx(cfg.train_max_eps)
    assert final["mean_radius"] == pytest.approx(0.25 * cfg.train_max_eps, rel=1e-5)


@pytest.mark.parametrize("step", [3, 7])
def test_the_standard_loss_is_the_mixed_loss_of_the_ibp_margins(step):
    """The composed step (radius x IBP x kappa mixing) gives the loss ``mixed_loss`` defines."""
    torch.manual_seed(0)
    model = small_model("cnn7").train()
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6) % 5
    cfg = TrainConfig(
        dataset="synthetic", method="ibp", epochs=4, std_epochs=1, ramp_epochs=2, kappa=0.25, reg_weight=0.0
    )
    m = build_method(cfg, steps_per_epoch=2)
    out = m.step(model, x, y, step)
    eps = torch.full((6,), m.schedule.eps_max(step))
    logits, lb, _ = joint_ibp(model, x, y, eps)
    assert torch.equal(out.loss, mixed_loss(lb, logits, y, m.schedule.kappa(step)))


class OwnBoundCE(LossBase):
    """A loss that asks the step for no IBP pass and bounds what it needs itself from
    (model, x, y, eps, ctx), as SABR's and a loss-fusion CROWN-IBP's do: here plain IBP."""

    def wants_ibp(self, regularising: bool) -> bool:
        return False

    def __call__(self, inp: LossInput) -> LossOutput:
        assert inp.lb is None
        lb = ibp_margins(inp.model, inp.x, inp.y, inp.eps, inp.ctx, record_preact=inp.record_preact)
        return LossOutput(robust_ce(lb))


@pytest.mark.parametrize("step", [3, 7])  # regulariser on, off
def test_a_loss_may_replace_the_step_bound_by_its_own(step):
    torch.manual_seed(0)
    model = small_model("cnn7").train()
    twin = copy.deepcopy(model)
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6) % 5
    cfg = TrainConfig(
        dataset="synthetic", method="ibp", epochs=4, std_epochs=1, ramp_epochs=2, kappa=0.25, reg_weight=0.5
    )
    ref = build_method(cfg, steps_per_epoch=2).step(model, x, y, step)
    own = CertifiedTraining(cfg, 2, radius=FixedRadius(), loss=KappaMixing(OwnBoundCE()))
    assert torch.equal(own.step(twin, x, y, step).loss, ref.loss)
