"""Contract suite run over every registered search space."""

import optuna
import pytest

from search_spaces import SPACES, SpaceContext, get_space, register_space
from trainers.config import ConfigError, TrainConfig
from trainers.methods import certified_methods

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", sorted(SPACES))
@pytest.mark.parametrize("max_epochs", [1, 2, 7, 30])
def test_every_suggestion_is_a_valid_training_config(name, max_epochs):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    ctx = SpaceContext(max_epochs=max_epochs, ref_eps=0.1)
    for _ in range(40):
        trial = study.ask()
        out = get_space(name)(trial, ctx)
        # only keys the method accepts: from_dict raises ConfigError on any other
        cfg = TrainConfig.from_dict({"dataset": "synthetic", **out})
        assert cfg.method == name and set(out) <= set(cfg.to_dict())
        assert 1 <= cfg.epochs <= max_epochs
        assert cfg.std_epochs + cfg.ramp_epochs <= cfg.epochs
        assert cfg.std_epochs < cfg.epochs  # at least one certified-training epoch
        assert 0.1 / 8 <= cfg.train_max_eps <= 0.2
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_distributions_do_not_depend_on_the_trial(name):
    """TPE models one distribution per parameter name: a space must not move its ranges."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {}
    for _ in range(30):
        trial = study.ask()
        get_space(name)(trial, SpaceContext(max_epochs=10, ref_eps=0.3))
        for k, d in trial.distributions.items():
            assert seen.setdefault(k, d) == d
        study.tell(trial, 1.0)


def test_baselines_tune_their_own_knobs():
    study = optuna.create_study()
    t = study.ask()
    get_space("crown-ibp")(t, SpaceContext(5, 0.1))
    assert {"beta_start", "beta_end", "kappa", "max_eps"} <= set(t.params)
    t = study.ask()
    get_space("acert")(t, SpaceContext(5, 0.1))
    assert {"kappa", "kappa_final", "max_eps", "lr", "ramp_frac", "std_frac"} <= set(t.params)


def test_unknown_space_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown search space 'sabr'.*acert, crown-ibp, ibp"):
        get_space("sabr")
    with pytest.raises(ValueError, match="already registered"):
        register_space("acert")(lambda trial, ctx: {})


@pytest.mark.parametrize("kwargs", [{"max_epochs": 0, "ref_eps": 0.1}, {"max_epochs": 3, "ref_eps": 0.0}])
def test_context_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="invalid"):
        SpaceContext(**kwargs)


def test_every_searchable_method_has_a_space_and_every_space_a_method():
    assert set(SPACES.names()) == set(certified_methods())


def test_a_space_returning_a_foreign_key_is_caught():
    """The contract above is not vacuous: a key of another method is refused by name."""
    study = optuna.create_study()
    out = get_space("ibp")(study.ask(), SpaceContext(5, 0.1))
    with pytest.raises(ConfigError, match="'beta_start' for method 'ibp'"):
        TrainConfig.from_dict({**out, "beta_start": 0.5})
