"""Cross-check of the native bound engine against auto_LiRPA (``tests.lirpa.backend``).

Skipped, with the install command as the reason, when no compatible auto_LiRPA is importable
(``.ci/install_autolirpa.sh`` installs it). Both sides compute the same bounds by construction
(centre/radius IBP with the specification folded into the last layer; CROWN-IBP with the
adaptive lower slope 1 if u > -l else 0), so in float64 they agree to rounding (~1e-14) and in
float32 to ~1e-6 of the bounds' magnitude; the tolerances below are 1e-5 (float32) and 1e-10
(float64) relative to the largest |bound| (at least 1).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.lirpa import backend as autolirpa
from trainers.bounds import BOUND_METHODS, clean_pass, margin_lower
from trainers.bounds.crown import crown_ibp_margins
from trainers.models import Normalize

AVAILABLE, REASON = autolirpa.auto_lirpa_available()
needs_lirpa = pytest.mark.skipif(not AVAILABLE, reason=f"auto_LiRPA backend unavailable: {REASON}")

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
NUM_CLASSES = 7
SHAPE = (3, 9, 9)  # odd size: strided convolutions with padding leave a remainder
BATCH = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The nets are tiny: one intra-op thread is fastest, and on a busy 2-core machine it
    avoids OpenMP threads spinning against each other. Restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def linear_net() -> nn.Sequential:
    return nn.Sequential(Normalize(MEAN, STD), nn.Flatten(), nn.Linear(27 * 9, NUM_CLASSES))


def mlp_net() -> nn.Sequential:
    return nn.Sequential(
        Normalize(MEAN, STD),
        nn.Flatten(),
        nn.Linear(27 * 9, 48),
        nn.ReLU(),
        nn.Linear(48, 32),
        nn.ReLU(),
        nn.Linear(32, NUM_CLASSES),
    )


def conv_net() -> nn.Sequential:
    # spatial size 9 -(k3 s1 p1)-> 9 -(k4 s2 p1)-> 4 -(k3 s2 p1)-> 2
    return nn.Sequential(
        Normalize(MEAN, STD),
        nn.Conv2d(3, 6, 3, stride=1, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 4, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 24),
        nn.BatchNorm1d(24),
        nn.ReLU(),
        nn.Linear(24, NUM_CLASSES),
    )


NETS = {"linear": linear_net, "mlp": mlp_net, "conv": conv_net}


def make_case(name: str, mode: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A randomly initialised net with non-trivial BatchNorm parameters and running statistics,
    a batch, labels and per-sample radii (one 0, one large enough to hit the [0, 1] clipping)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = NETS[name]().to(dtype)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(1 + 0.5 * torch.randn(m.num_features, generator=gen, dtype=dtype))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=gen, dtype=dtype))
        model.train()
        for _ in range(3):  # running statistics != (0, 1)
            model(torch.rand(BATCH, *SHAPE, generator=gen, dtype=dtype))
    model.train(mode == "train")
    x = torch.rand(BATCH, *SHAPE, generator=gen, dtype=dtype)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen)
    eps = torch.rand(BATCH, generator=gen, dtype=dtype) * 0.06
    eps[0], eps[1] = 0.0, 0.3
    return model, x, y, eps


def assert_close(native: torch.Tensor, lirpa: torch.Tensor, rel: float) -> float:
    assert native.shape == lirpa.shape == (BATCH, NUM_CLASSES - 1)
    scale = max(1.0, native.abs().max().item())
    diff = (native - lirpa).abs().max().item()
    assert diff <= rel * scale, f"max |native - auto_LiRPA| = {diff:.3g} > {rel:g} * {scale:.3g}"
    return diff


def _params() -> list:
    """float32: every net, mode and method; float64 (where only rounding can differ, so the
    tolerance is 1e-10): the nets with ReLUs, both modes, IBP and CROWN-IBP."""
    out = []
    for dtype, names, methods in (
        ("float32", tuple(NETS), ("ibp", "crown-ibp", "best")),
        ("float64", ("mlp", "conv"), ("ibp", "crown-ibp")),
    ):
        for name in names:
            for mode in ("eval", "train"):
                for method in methods:
                    out.append(pytest.param(name, mode, method, dtype, id=f"{name}-{mode}-{method}-{dtype}"))
    return out


@needs_lirpa
@pytest.mark.parametrize("name, mode, method, dtype", _params())
def test_native_matches_auto_lirpa(name: str, mode: str, method: str, dtype: str) -> None:
    model, x, y, eps = make_case(name, mode, getattr(torch, dtype))
    lirpa = autolirpa.auto_lirpa_margins(model, x, y, eps, method)
    with torch.no_grad():
        native = margin_lower(model, x, y, eps, method)
    assert_close(native, lirpa, 1e-5 if dtype == "float32" else 1e-10)


@needs_lirpa
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("method", ["crown-ibp", "best"])
def test_linear_net_with_context(mode: str, method: str) -> None:
    """The native side given a clean-pass context (as the trainers call it), on the net without
    ReLU; for a linear model CROWN-IBP and IBP with the folded specification are both exact."""
    model, x, y, eps = make_case("linear", mode)
    lirpa = autolirpa.auto_lirpa_margins(model, x, y, eps, method)
    with torch.no_grad():
        _, ctx = clean_pass(model, x)
        native = BOUND_METHODS[method](model, x, y, eps, ctx)
    assert_close(native, lirpa, 1e-5)
    assert_close(native, autolirpa.auto_lirpa_margins(model, x, y, eps, "ibp"), 1e-5)


@needs_lirpa
def test_crown_ibp_is_not_ibp() -> None:
    """The comparison is not vacuous: on the conv net CROWN-IBP and IBP differ, in both backends."""
    model, x, y, eps = make_case("conv", "eval")
    ibp = autolirpa.auto_lirpa_margins(model, x, y, eps, "ibp")
    crown = autolirpa.auto_lirpa_margins(model, x, y, eps, "crown-ibp")
    assert (ibp - crown).abs().max() > 1e-2
    with torch.no_grad():
        assert_close(crown_ibp_margins(model, x, y, eps), crown, 1e-5)


@needs_lirpa
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_model_state_is_untouched(mode: str) -> None:
    model, x, y, eps = make_case("conv", mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    autolirpa.auto_lirpa_margins(model, x, y, eps, "best")
    assert model.training == (mode == "train")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


@needs_lirpa
def test_bounds_are_sound_eval() -> None:
    """auto_LiRPA's bounds hold at random corners of the (clipped) box; eval mode, where the
    network is a fixed function of each sample."""
    model, x, y, eps = make_case("conv", "eval")
    bounds = autolirpa.auto_lirpa_margins(model, x, y, eps, "best")
    lo, hi = (x - eps.view(-1, 1, 1, 1)).clamp(0, 1), (x + eps.view(-1, 1, 1, 1)).clamp(0, 1)
    gen = torch.Generator().manual_seed(1)
    others = torch.arange(NUM_CLASSES).expand(BATCH, -1)
    others = others[others != y[:, None]].view(BATCH, -1)
    with torch.no_grad():
        for _ in range(32):
            pick = torch.rand(x.shape, generator=gen) < 0.5
            z = model(torch.where(pick, lo, hi))
            margins = z.gather(1, y[:, None]) - z.gather(1, others)
            assert (margins >= bounds - 1e-5).all()


@needs_lirpa
def test_registered_models() -> None:
    """Every registered model small enough to build at (3, 9, 9) / width 2, in both modes."""
    from trainers.models import MODELS, build_model

    checked = []
    for name in sorted(MODELS):
        try:
            model = build_model(name, input_shape=SHAPE, num_classes=NUM_CLASSES, mean=MEAN, std=STD, width=2)
        except ValueError:  # e.g. input too small for this architecture
            continue
        if sum(p.numel() for p in model.parameters()) > 200_000:
            continue
        _, x, y, eps = make_case("mlp", "eval")
        for mode in (True, False):
            model.train(mode)
            lirpa = autolirpa.auto_lirpa_bounds(model, x, y, eps, ("ibp", "crown-ibp"))
            for method in ("ibp", "crown-ibp"):
                with torch.no_grad():
                    native = margin_lower(model, x, y, eps, method)
                assert_close(native, lirpa[method], 1e-5)
        checked.append(name)
    assert checked, "no registered model could be built at the test size"


@needs_lirpa
def test_unknown_method() -> None:
    model, x, y, eps = make_case("mlp", "eval")
    with pytest.raises(ValueError, match="unknown bound method"):
        autolirpa.auto_lirpa_margins(model, x, y, eps, "no-such-bound")


def test_missing_auto_lirpa_raises_import_error_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs with or without auto_LiRPA: a missing package gives a one-line ImportError."""
    _forget_loaded(monkeypatch)
    monkeypatch.setattr(autolirpa.importlib.util, "find_spec", lambda name, *a, **k: None)
    ok, reason = autolirpa.auto_lirpa_available()
    assert not ok and "pip install --no-deps auto_LiRPA==0.3" in reason and "\n" not in reason
    model, x, y, eps = make_case("mlp", "eval")
    with pytest.raises(ImportError, match="auto_LiRPA is not installed"):
        autolirpa.auto_lirpa_margins(model, x, y, eps, "ibp")


def _forget_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autolirpa, "_MODULE", None)
    monkeypatch.setattr(autolirpa, "_ERROR", None)


def test_failing_import_raises_one_line_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _forget_loaded(monkeypatch)
    monkeypatch.setattr(autolirpa.importlib.util, "find_spec", lambda name, *a, **k: object())
    monkeypatch.setattr(autolirpa, "_distribution_version", lambda: "0.3")

    def broken():
        raise ModuleNotFoundError("No module named 'numpy.lib.arraysetops'\n(more)")

    monkeypatch.setattr(autolirpa, "_import_auto_lirpa", broken)
    ok, reason = autolirpa.auto_lirpa_available()
    assert not ok and "failed to import" in reason and "arraysetops" in reason and "\n" not in reason
    assert "pip install --no-deps auto_LiRPA==0.3" in reason


def test_too_old_auto_lirpa_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    _forget_loaded(monkeypatch)
    monkeypatch.setattr(autolirpa.importlib.util, "find_spec", lambda name, *a, **k: object())
    monkeypatch.setattr(autolirpa, "_distribution_version", lambda: "0.2.1")
    with pytest.raises(ImportError, match="too old"):
        autolirpa._load()


def test_compat_layer_is_lazy_and_idempotent() -> None:
    """Importing the project (bounds + this backend) installs no replacement; apply() twice
    installs each one once. In a subprocess: this process may have loaded auto_LiRPA already."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "import trainers.bounds, tests.lirpa.backend\n"
        "assert 'auto_LiRPA' not in sys.modules\n"
        "stub = sys.modules.get('numpy.lib.arraysetops')\n"
        "assert stub is None or stub.__spec__ is not None  # not our stub\n"
        "had = hasattr(torch._C.Node, '__getitem__')\n"
        "from tests.lirpa import compat as _lirpa_compat\n"
        "first = _lirpa_compat.apply(); getitem = getattr(torch._C.Node, '__getitem__', None)\n"
        "second = _lirpa_compat.apply()\n"
        "assert first == second, (first, second)\n"
        "assert getattr(torch._C.Node, '__getitem__', None) is getitem\n"
        "assert had or 'torch._C.Node.__getitem__' in first\n"
        "from numpy.lib.arraysetops import isin\n"
        "assert isin(1, [1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _fusion_params() -> list:
    out = []
    for dtype, rel in (("float32", 1e-5), ("float64", 1e-10)):
        for name in ("linear", "mlp", "conv"):
            for mode in ("eval", "train"):
                out.append(pytest.param(name, mode, dtype, rel, id=f"{name}-{mode}-{dtype}"))
    return out


@needs_lirpa
@pytest.mark.parametrize("name, mode, dtype, rel", _fusion_params())
def test_loss_fusion_matches_auto_lirpa(name: str, mode: str, dtype: str, rel: float) -> None:
    """``crown_ibp_ce_upper`` against auto_LiRPA's loss fusion (``tests.lirpa.fusion``): the same
    IBP intervals of z_j - z_y (specification folded into the last layer), the same chords of
    exp, the same ReLU slopes, the same beta mixing of the bounds of sum_j exp(z_j - z_y). The
    tolerance is relative to the largest bound (at least 1), as above."""
    from tests.lirpa.fusion import auto_lirpa_fused_ce_upper
    from trainers.bounds.fusion import crown_ibp_ce_upper

    model, x, y, eps = make_case(name, mode, getattr(torch, dtype))
    betas = (0.0, 0.5, 1.0)
    lirpa = auto_lirpa_fused_ce_upper(model, x, y, eps, betas)
    with torch.no_grad():
        _, ctx = clean_pass(model, x)
        for beta in betas:
            native = crown_ibp_ce_upper(model, x, y, eps, ctx, beta=beta)
            assert native.shape == lirpa[beta].shape == (BATCH,)
            scale = max(1.0, native.abs().max().item())
            diff = (native - lirpa[beta]).abs().max().item()
            assert diff <= rel * scale, f"beta={beta}: max |native - auto_LiRPA| = {diff:.3g}"
    if name != "linear":  # not vacuous: the CROWN-IBP and IBP bounds differ
        assert (lirpa[0.0] - lirpa[1.0]).abs().max() > 1e-3
