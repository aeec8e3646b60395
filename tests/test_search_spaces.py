"""Contract suite run over every registered search space."""

import optuna
import pytest

from search_spaces import PROTOCOLS, SPACES, SpaceContext, get_space, register_space, with_fixed
from trainers.config import ConfigError, TrainConfig
from trainers.methods import certified_methods

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", sorted(SPACES))
@pytest.mark.parametrize("max_epochs", [1, 2, 7, 30])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_suggestion_is_a_valid_training_config(name, max_epochs, protocol):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    ctx = SpaceContext(max_epochs=max_epochs, ref_eps=0.1, protocol=protocol)
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
    assert {"beta_start", "beta_end", "one_minus_kappa", "max_eps"} <= set(t.params)
    t = study.ask()
    get_space("acert")(t, SpaceContext(5, 0.1))
    assert {"one_minus_kappa", "kappa_schedule", "lr", "ramp_frac", "std_frac", "max_eps"} <= set(t.params)
    assert not {"epochs", "min_eps_frac"} & set(t.params)


def test_acert_keeps_the_published_radius_floor_and_kappa_schedules():
    """The radius floor min_eps keeps its 1e-6 default, and kappa is constant or moves to
    kappa_final (sampled only then, over kappa's range)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    schedules = set()
    for _ in range(40):
        trial = study.ask()
        out = get_space("acert")(trial, SpaceContext(6, 0.1))
        cfg = TrainConfig.from_dict({"dataset": "synthetic", **out})
        assert cfg.params.min_eps == 1e-6
        schedules.add(trial.params["kappa_schedule"])
        if trial.params["kappa_schedule"] == "constant":
            assert cfg.kappa_final == cfg.kappa and "one_minus_kappa_final" not in trial.params
        else:
            assert cfg.kappa_final == pytest.approx(1 - trial.params["one_minus_kappa_final"])
        study.tell(trial, 0.0)
    assert schedules == {"constant", "linear"}


def test_fixed_settings_are_not_searched():
    """--fixed: a fixed name is never suggested (Optuna does not model it), a derived setting is
    replaced in the output, and the rest is searched as before."""
    space = with_fixed(get_space("acert"), {"lr": 2e-3, "batch_size": 128, "std_epochs": 1, "max_eps": 0.05})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        out = space(trial, SpaceContext(8, 0.1))
        assert (out["lr"], out["batch_size"], out["std_epochs"], out["max_eps"]) == (2e-3, 128, 1, 0.05)
        assert not {"lr", "batch_size", "max_eps"} & set(trial.params) and "one_minus_kappa" in trial.params
        study.tell(trial, 0.0)
    assert with_fixed(get_space("ibp"), {}) is get_space("ibp")


def test_a_fixed_space_survives_a_pickle_round_trip():
    """Tune pickles its searcher, and the space with it, at every experiment save: a space with
    --fixed settings must pickle and come back suggesting the same values."""
    import pickle

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


# The project's spaces; every one draws its trade-off knobs from search_spaces.common.
PROJECT_SPACES = ("acert", "crown-ibp", "ibp", "mtl-ibp", "sabr")
KAPPA_GAP = optuna.distributions.FloatDistribution(0.01, 1.0, log=True)


def _extreme(name: str, ctx: SpaceContext, **params) -> tuple[TrainConfig, optuna.trial.FrozenTrial]:
    """The space's output for a trial Optuna is told to start at ``params`` (the rest sampled)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(params)
    trial = study.ask()
    out = get_space(name)(trial, ctx)
    study.tell(trial, 0.0)
    return TrainConfig.from_dict({"dataset": "synthetic", **out}), study.trials[-1]


@pytest.mark.parametrize("name", PROJECT_SPACES)
def test_tuned_protocol_searches_kappa_to_099_and_the_cap_from_an_eighth_to_twice(name):
    """--protocol tuned: every method searches 1 - kappa log-uniformly on [0.01, 1] (kappa up to
    0.99, also kappa_final) and its training cap log-uniformly on [1/8, 2] x the radius."""
    ctx = SpaceContext(8, 0.3, protocol="tuned")
    high, frozen = _extreme(
        name, ctx, one_minus_kappa=0.01, kappa_schedule="linear", one_minus_kappa_final=0.01, max_eps=0.6
    )
    assert high.kappa == pytest.approx(0.99) and high.kappa_final == pytest.approx(0.99)
    assert high.max_eps == pytest.approx(0.6)
    dists = frozen.distributions
    assert dists["one_minus_kappa"] == KAPPA_GAP and dists["one_minus_kappa_final"] == KAPPA_GAP
    assert dists["max_eps"] == optuna.distributions.FloatDistribution(0.3 / 8, 0.6, log=True)
    low, _ = _extreme(name, ctx, one_minus_kappa=1.0, kappa_schedule="constant", max_eps=0.3 / 8)
    assert (low.kappa, low.kappa_final) == (0.0, 0.0) and low.max_eps == pytest.approx(0.3 / 8)


@pytest.mark.parametrize("name", PROJECT_SPACES)
def test_paper_protocol_fixes_the_cap_at_the_data_sets_radius_and_searches_kappa(name):
    cfg, frozen = _extreme(name, SpaceContext(8, 0.3, protocol="paper"), one_minus_kappa=0.01)
    assert cfg.max_eps == 0.3 and "max_eps" not in frozen.distributions
    assert cfg.kappa == pytest.approx(0.99) and frozen.distributions["one_minus_kappa"] == KAPPA_GAP


def test_a_fixed_kappa_is_not_searched_through_its_complement():
    """--fixed kappa=0.4: Optuna never sees one_minus_kappa, and a constant schedule follows it."""
    space = with_fixed(get_space("ibp"), {"kappa": 0.4})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"kappa_schedule": "constant"})
    for _ in range(6):
        trial = study.ask()
        out = space(trial, SpaceContext(8, 0.1))
        assert out["kappa"] == 0.4 and "one_minus_kappa" not in trial.params
        if trial.params["kappa_schedule"] == "constant":
            assert out["kappa_final"] == pytest.approx(0.4)
        study.tell(trial, 0.0)


def test_a_bad_protocol_is_refused():
    with pytest.raises(ValueError, match="invalid protocol='exact'"):
        SpaceContext(8, 0.1, protocol="exact")
