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
        assert cfg.epochs == max_epochs  # epochs are the sweep's budget, not searched
        assert 5e-4 <= cfg.lr <= 5e-3  # around the published 1e-3 and 2e-3
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
    assert {"kappa", "kappa_schedule", "lr", "ramp_frac", "std_frac"} <= set(t.params)
    assert not {"epochs", "max_eps", "min_eps_frac"} & set(t.params)


def test_acert_trains_at_the_data_sets_radius_with_the_published_defaults():
    """As published: max_eps is the data set's (where the evaluation caps the radii too), the
    radius floor min_eps its 1e-6 default, and kappa constant or moving to kappa_final."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    schedules = set()
    for _ in range(40):
        trial = study.ask()
        out = get_space("acert")(trial, SpaceContext(6, 0.1))
        cfg = TrainConfig.from_dict({"dataset": "synthetic", **out})
        assert cfg.max_eps == 0.1 and cfg.params.min_eps == 1e-6
        schedules.add(trial.params["kappa_schedule"])
        if trial.params["kappa_schedule"] == "constant":
            assert cfg.kappa_final == cfg.kappa and "kappa_final" not in trial.params
        else:
            assert cfg.kappa_final == trial.params["kappa_final"]
        study.tell(trial, 0.0)
    assert schedules == {"constant", "linear"}


def test_fixed_settings_are_not_searched():
    """--fixed: a fixed name is never suggested (Optuna does not model it), a derived setting is
    replaced in the output, and the rest is searched as before."""
    from search_spaces import with_fixed

    space = with_fixed(get_space("acert"), {"lr": 2e-3, "batch_size": 128, "std_epochs": 1, "max_eps": 0.05})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        out = space(trial, SpaceContext(8, 0.1))
        assert (out["lr"], out["batch_size"], out["std_epochs"], out["max_eps"]) == (2e-3, 128, 1, 0.05)
        assert not {"lr", "batch_size"} & set(trial.params) and "kappa" in trial.params
        study.tell(trial, 0.0)
    assert with_fixed(get_space("ibp"), {}) is get_space("ibp")


def test_a_fixed_space_survives_a_pickle_round_trip():
    """Tune pickles its searcher, and the space with it, at every experiment save: a space with
    --fixed settings must pickle and come back suggesting the same values."""
    import pickle

    from search_spaces import with_fixed

    space = pickle.loads(pickle.dumps(with_fixed(get_space("acert"), {"lr": 2e-3, "batch_size": 128})))
    out = space(optuna.create_study().ask(), SpaceContext(8, 0.1))
    assert (out["lr"], out["batch_size"]) == (2e-3, 128)


def test_unknown_space_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown search space 'no-such-method'; known search spaces: "
    ) as e:
        get_space("no-such-method")
    # every project space is named, sorted (earlier tests may have registered plugins' spaces too)
    known = str(e.value).split("known search spaces: ")[1].split(", ")
    assert known == sorted(known) and {"acert", "crown-ibp", "ibp", "mtl-ibp", "sabr"} <= set(known)
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
