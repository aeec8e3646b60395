"""Contract suites over the registries: whatever is registered is tested, with no list to keep.

- every data set spec loads its small fixture (written here) into the shape and classes it states;
- every training method makes a step on every model, without error and with a finite loss
  and gradients, before and during the radius ramp;
- every registered bound method is run by the soundness suite (tests/test_bounds.py
  parametrises over ``BOUND_METHODS``; here only that nothing is left out);
- every search space samples only settings its method accepts (tests/test_search_spaces.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_data import write_cifar, write_mnist, write_tinyimagenet
from tests.test_models import SMALL, small_model
from trainers.config import TrainConfig
from trainers.data import DATASETS, load_splits
from trainers.methods import TRAINING_METHODS, build_method
from trainers.models import MODELS

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
