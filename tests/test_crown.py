"""The CROWN bound method (``trainers.bounds.crown_full``) beyond the soundness suite of
tests/test_bounds.py (which picks it up from the registry): auto_LiRPA's CROWN gives the same
bounds in float64, on the test nets and on every registered model at a small size; the row
chunking does not change them; ``best`` includes it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.lirpa import backend as autolirpa
from tests.test_autolirpa import NETS, make_case
from tests.test_bounds import conv_net, frozen_bn_copy, pgd_min_margin, sample_box, true_margins
from trainers.bounds import BEST_OF, BOUND_METHODS, clean_pass, crown_full, margin_lower
from trainers.bounds.crown_full import crown_margins
from trainers.models import MODELS, build_model

AVAILABLE, REASON = autolirpa.auto_lirpa_available()
needs_lirpa = pytest.mark.skipif(not AVAILABLE, reason=f"auto_LiRPA backend unavailable: {REASON}")
REL64 = 1e-10  # float64: only rounding differs (as for IBP and CROWN-IBP in tests/test_autolirpa.py)
ATOL = 1e-4  # float32 rounding slack of tests/test_bounds.py


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _close(native: torch.Tensor, lirpa: torch.Tensor, rel: float) -> None:
    assert native.shape == lirpa.shape
    scale = max(1.0, native.abs().max().item())
    diff = (native - lirpa).abs().max().item()
    assert diff <= rel * scale, f"max |native - auto_LiRPA| = {diff:.3g} > {rel:g} * {scale:.3g}"


@needs_lirpa
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", list(NETS))
def test_crown_matches_auto_lirpa_in_float64(name: str, mode: str) -> None:
    """Pure CROWN against compute_bounds(method="CROWN"); the registered (IBP-intersected)
    CROWN against the same with IBP reference bounds; float32 to 1e-5 as well."""
    model, x, y, eps = make_case(name, mode, torch.float64)
    lirpa = autolirpa.auto_lirpa_bounds(model, x, y, eps, ("crown", "crown-pure"))
    with torch.no_grad():
        _close(crown_margins(model, x, y, eps, intersect=False), lirpa["crown-pure"], REL64)
        _close(margin_lower(model, x, y, eps, "crown"), lirpa["crown"], REL64)
    model, x, y, eps = make_case(name, mode, torch.float32)
    with torch.no_grad():
        _close(
            margin_lower(model, x, y, eps, "crown"),
            autolirpa.auto_lirpa_margins(model, x, y, eps, "crown"),
            1e-5,
        )


def _registered(name: str, dtype: torch.dtype, seed: int = 0):
    """A registered model at a small width and input size, with BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    shape = (2, 12, 12)
    model = build_model(name, input_shape=shape, num_classes=5, mean=(0.4, 0.5), std=(0.3, 0.2), width=3)
    model = model.to(dtype).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(16, *shape, dtype=dtype))
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(6, *shape, generator=gen, dtype=dtype)
    y = torch.randint(0, 5, (6,), generator=gen)
    eps = torch.rand(6, generator=gen, dtype=dtype) * 0.05
    return model, x, y, eps


@needs_lirpa
@pytest.mark.parametrize("name", MODELS.names())  # every registered architecture
def test_crown_matches_auto_lirpa_on_registered_models(name: str) -> None:
    model, x, y, eps = _registered(name, torch.float64)
    lirpa = autolirpa.auto_lirpa_bounds(model, x, y, eps, ("crown", "crown-pure"))
    with torch.no_grad():
        _close(crown_margins(model, x, y, eps, intersect=False), lirpa["crown-pure"], REL64)
        _close(margin_lower(model, x, y, eps, "crown"), lirpa["crown"], REL64)


@pytest.mark.parametrize("intersect", [True, False])
def test_row_chunks_do_not_change_the_bounds(monkeypatch: pytest.MonkeyPatch, intersect: bool) -> None:
    """Chunks of a few rows (samples with fewer unstable neurons than the widest get padded
    rows) give the bounds of one chunk, up to float64 rounding."""
    model, x, y, eps = make_case("conv", "eval", torch.float64)
    with torch.no_grad():
        whole = crown_margins(model, x, y, eps, intersect=intersect)
        monkeypatch.setattr(crown_full, "CHUNK_ELEMENTS", 1)  # one row pair per chunk
        chunked = crown_margins(model, x, y, eps, intersect=intersect)
    assert torch.allclose(whole, chunked, rtol=0, atol=1e-12)


def test_pure_crown_sound_against_sampled_and_attacked_points_float32() -> None:
    """The registered (intersected) CROWN is in the suite of tests/test_bounds.py; here pure
    CROWN too, with BatchNorm in train mode (the truth: the net with BatchNorm frozen at the
    clean batch's statistics, as there) and padding, at radii where many neurons are unstable."""
    net = conv_net(seed=3).train()
    torch.manual_seed(3)
    x, y = torch.rand(8, 2, 8, 8), torch.randint(0, 5, (8,))
    eps = torch.linspace(0.0, 0.1, 8)
    with torch.no_grad():
        _, ctx = clean_pass(net, x)
        bound = crown_margins(net, x, y, eps, ctx, intersect=False)
    assert bound.dtype == torch.float32
    truth = frozen_bn_copy(net, ctx)
    with torch.no_grad():
        margins = [true_margins(truth, p, y) for p in sample_box(x, eps, 64)]
    adv = pgd_min_margin(truth, x, y, eps)
    with torch.no_grad():
        margins.append(true_margins(truth, adv, y))
    assert (bound <= torch.stack(margins).min(0).values + ATOL).all()


def test_best_is_at_least_each_method_it_combines() -> None:
    model, x, y, eps = make_case("conv", "eval", torch.float32)
    with torch.no_grad():
        best = margin_lower(model, x, y, eps, "best")
        for name in BEST_OF:
            assert (best >= BOUND_METHODS.get(name)(model, x, y, eps)).all()
    assert "crown" in BEST_OF and "crown" in BOUND_METHODS


def test_crown_leaves_the_context_of_crown_ibp_alone() -> None:
    """A shared context keeps CROWN-IBP's IBP pre-activation bounds: CROWN neither reads nor
    overwrites them, so CROWN-IBP after CROWN (as in ``best``) is still CROWN-IBP."""
    from trainers.bounds import BoundContext, crown_ibp_margins

    model, x, y, eps = make_case("conv", "eval", torch.float64)
    with torch.no_grad():
        ctx = BoundContext()
        before = crown_ibp_margins(model, x, y, eps, ctx)
        recorded = {i: (lo.clone(), hi.clone()) for i, (lo, hi) in ctx.preact.items()}
        crown_margins(model, x, y, eps, ctx)
        assert ctx.preact.keys() == recorded.keys()
        for i, (lo, hi) in recorded.items():
            assert torch.equal(ctx.preact[i][0], lo) and torch.equal(ctx.preact[i][1], hi)
        assert torch.equal(crown_ibp_margins(model, x, y, eps, ctx), before)
    assert isinstance(model[-1], nn.Linear)


def test_alpha_crown_is_never_below_crown_and_tighter_somewhere() -> None:
    """Optimised slopes start at CROWN's and keep each margin's best iterate: never below CROWN
    with the same intermediate bounds (soundness: the suite of tests/test_bounds.py)."""
    model, x, y, eps = make_case("conv", "train", torch.float32)
    eps = eps * 2  # more unstable neurons
    with torch.no_grad():
        _, ctx = clean_pass(model, x)
        crown = BOUND_METHODS.get("crown")(model, x, y, eps, ctx)
        alpha = BOUND_METHODS.get("alpha-crown")(model, x, y, eps, ctx)
    assert (alpha >= crown).all()
    assert (alpha > crown + 1e-3).any()
    assert not alpha.requires_grad
