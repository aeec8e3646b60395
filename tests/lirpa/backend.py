"""auto_LiRPA as a cross-check backend of the native bound engine.

``auto_lirpa_margins(model, x, y, eps, method)`` has the semantics of the native methods of
``trainers.bounds`` (the native engine's ``margin_lower``): lower bounds
[B, K-1] of the margins z_y - z_j, j != y in increasing order, over the l_inf box of
per-sample radius ``eps[b]`` clipped to [0, 1] (pixel units, before ``Normalize``).

How it maps onto auto_LiRPA:

* the input is a ``BoundedTensor(x, PerturbationLpNorm(norm=inf, x_L=lo, x_U=hi))`` with
  (lo, hi) the clipped box of ``trainers.bounds.engine.input_box``, so per-sample radii and
  clipping are exactly the native ones;
* the specification matrix ``C`` [B, K-1, K] has the rows e_y - e_j (j != y, increasing j);
  auto_LiRPA folds it into the last ``Linear`` layer (W' = C W, b' = C b) both in IBP
  (``IBP_general`` merges C into a final ``BoundLinear``) and in the backward (CROWN) pass,
  as the native engine does;
* ``method="ibp"`` -> ``compute_bounds(method="IBP")``; ``"crown-ibp"`` ->
  ``compute_bounds(method="CROWN-IBP")`` (IBP intermediate bounds, one CROWN backward pass
  from the specification) with the ReLU option ``relu="adaptive"``: lower slope 1 where the
  upper slope u / (u - l) > 0.5, i.e. u > -l, else 0, which is the native choice;
  ``"crown-pure"`` -> ``compute_bounds(method="CROWN")`` (CROWN intermediate bounds, same ReLU
  option); ``"crown"`` -> the same with each ReLU input's IBP bounds as ``reference_bounds``
  (auto_LiRPA keeps the tighter of both per neuron: CROWN's and IBP's bounds intersected, the
  native ``"crown"``); ``"best"`` is the element-wise maximum of IBP, CROWN-IBP and CROWN;
* train mode: a clean forward pass on ``x`` first, so BatchNorm uses the clean batch
  statistics for the bound pass (auto_LiRPA's default ``bn`` mode "forward"), as
  ``trainers.bounds.engine.clean_pass`` does.

The model is deep-copied before it is wrapped: building a ``BoundedModule`` runs (and traces)
the model and, in train mode, each forward pass updates BatchNorm running statistics; the
caller's model is never changed. The bounds are computed without autograd and returned
detached: this backend is for checking, not for training.

Compatibility: auto_LiRPA 0.3 (PyPI) works on torch 2.x / numpy 2 with the replacements of
``tests.lirpa.compat``, applied right before the import for versions < 0.5 (or an
unknown version); newer releases (>= 0.5, from the source repository) are imported as they
are, and get the replacements only if that import fails. auto_LiRPA 0.3 also needs two
equivalent rewrites of the (copied) model, see ``_lirpa_friendly``.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from typing import Any

import torch
from torch import Tensor, nn

from trainers.bounds.engine import input_box, layers_of, other_classes

INSTALL_HINT = (
    "install it with `pip install --no-deps auto_LiRPA==0.3 && pip install tqdm appdirs pyyaml packaging` "
    "(or from its source repository, version >= 0.5); see .ci/install_autolirpa.sh"
)
MIN_VERSION = (0, 3)
NATIVE_SUPPORT_VERSION = (0, 5)  # from here on the replacements are a fallback only
METHODS = ("ibp", "crown-ibp", "crown", "crown-pure", "best")

_MODULE: Any = None  # the imported auto_LiRPA module, once loaded
_ERROR: str | None = None  # the reason it cannot be loaded, once known


def _parse_version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or None


def _distribution_version() -> str | None:
    for name in ("auto_LiRPA", "auto-lirpa", "auto_lirpa"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _import_auto_lirpa() -> Any:
    """``import auto_LiRPA`` with the exporter's warnings and cpp_extension's log silenced."""
    from tests.lirpa import compat as _lirpa_compat

    # torch.utils.cpp_extension (imported by auto_LiRPA) logs "No CUDA runtime is found" on
    # CPU-only machines; torch.jit.script deprecation warnings come at import too.
    ext_logger = logging.getLogger("torch.utils.cpp_extension")
    level = ext_logger.level
    ext_logger.setLevel(logging.ERROR)
    try:
        with _lirpa_compat.quiet_exporter():
            return importlib.import_module("auto_LiRPA")
    except BaseException:
        # drop half-imported modules so that a later attempt starts clean
        for name in [n for n in sys.modules if n == "auto_LiRPA" or n.startswith("auto_LiRPA.")]:
            del sys.modules[name]
        raise
    finally:
        ext_logger.setLevel(level)


def _load() -> Any:
    """Import auto_LiRPA, applying the compatibility layer only when needed; cache the outcome.

    Versions < 0.5 (or of unknown version) get the replacements of ``_lirpa_compat`` before
    the import; newer ones are first imported as they are, and only if that fails once more
    with the replacements.
    """
    global _MODULE, _ERROR
    if _MODULE is not None:
        return _MODULE
    if _ERROR is not None:
        raise ImportError(_ERROR)
    try:
        found = importlib.util.find_spec("auto_LiRPA") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        _ERROR = f"auto_LiRPA is not installed: {INSTALL_HINT}"
        raise ImportError(_ERROR)
    dist = _distribution_version()
    version = _parse_version(dist)
    if version is not None and version < MIN_VERSION:
        _ERROR = f"auto_LiRPA {dist} is too old (need >= 0.3): {INSTALL_HINT}"
        raise ImportError(_ERROR)
    from tests.lirpa import compat as _lirpa_compat

    attempts = [False, True] if version is not None and version >= NATIVE_SUPPORT_VERSION else [True]
    first_error: Exception | None = None
    module = None
    for with_compat in attempts:
        if with_compat:
            _lirpa_compat.apply()
        try:
            module = _import_auto_lirpa()
            if with_compat:
                _lirpa_compat.after_import(module)
            break
        except Exception as exc:  # noqa: BLE001 -- any failure means "not usable here"
            first_error = first_error or exc
    if module is None:
        assert first_error is not None
        _ERROR = _one_line(
            f"auto_LiRPA {dist or '(unknown version)'} failed to import under torch {torch.__version__} "
            f"({type(first_error).__name__}: {first_error}); {INSTALL_HINT}"
        )
        raise ImportError(_ERROR) from first_error
    loaded = _parse_version(getattr(module, "__version__", None))
    if loaded is not None and loaded < MIN_VERSION:
        _ERROR = f"auto_LiRPA {module.__version__} is too old (need >= 0.3): {INSTALL_HINT}"
        raise ImportError(_ERROR)
    _MODULE = module
    return module


def auto_lirpa_available() -> tuple[bool, str]:
    """(True, version) when a compatible auto_LiRPA can be used, else (False, reason)."""
    try:
        module = _load()
    except ImportError as exc:
        return False, str(exc)
    return True, f"auto_LiRPA {getattr(module, '__version__', '?')}"


def spec_matrix(y: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """C [B, K-1, K] with rows e_y - e_j for j != y in increasing order."""
    others = other_classes(y, num_classes)  # [B, K-1]
    c = torch.zeros(y.shape[0], num_classes - 1, num_classes, dtype=dtype, device=y.device)
    c.scatter_(2, y.view(-1, 1, 1).expand(-1, num_classes - 1, 1), 1.0)
    c.scatter_(2, others.unsqueeze(-1), -1.0)
    return c


def _lirpa_friendly(model: nn.Sequential) -> nn.Sequential:
    """Rewrite ``model`` (a private copy) into an equivalent form that auto_LiRPA 0.3 handles:

    * an ``affine=False`` BatchNorm gets the identity affine map (weight 1, bias 0): such a
      layer converts, but its backward (CROWN) pass fails (``BoundConstant`` has no ``param``);
    * a bias-free ``Linear`` gets a zero bias: it is traced as ``MatMul`` and
      ``BoundMatMul.interval_propagate`` does not take the specification ``C`` that IBP folds
      into the last layer (TypeError).
    """
    for layer in model:
        if isinstance(layer, nn.Linear) and layer.bias is None:
            w = layer.weight
            layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and not layer.affine:
            ref = layer.running_mean if layer.running_mean is not None else torch.empty(0)
            n = layer.num_features
            layer.weight = nn.Parameter(torch.ones(n, dtype=ref.dtype, device=ref.device))
            layer.bias = nn.Parameter(torch.zeros(n, dtype=ref.dtype, device=ref.device))
            layer.affine = True
    return model


def auto_lirpa_margins(
    model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, method: str = "ibp"
) -> Tensor:
    """Lower bounds [B, K-1] of z_y - z_j (j != y) computed by auto_LiRPA (see module doc).

    Raises ``ImportError`` (with the install command) when no compatible auto_LiRPA is
    importable, ``ValueError`` for an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r} for auto_LiRPA; known: {', '.join(METHODS)}")
    if method == "best":
        each = auto_lirpa_bounds(model, x, y, eps, ("ibp", "crown-ibp", "crown"))
        return torch.maximum(torch.maximum(each["ibp"], each["crown-ibp"]), each["crown"])
    return auto_lirpa_bounds(model, x, y, eps, (method,))[method]


@torch.no_grad()
def auto_lirpa_bounds(
    model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, methods: tuple[str, ...] = ("ibp", "crown-ibp")
) -> dict[str, Tensor]:
    """The margin lower bounds of several methods (any of METHODS but "best") from one
    ``BoundedModule`` build (the build, a trace of the model, costs more than the bounds)."""
    unknown = [m for m in methods if m not in METHODS[:-1]]
    if unknown:
        raise ValueError(f"unknown bound method {unknown[0]!r} for auto_LiRPA; known: {', '.join(METHODS)}")
    lirpa = _load()
    from tests.lirpa import compat as _lirpa_compat

    layers = layers_of(model)  # same model restrictions (and error messages) as the native engine
    if not model.training and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None for m in layers
    ):
        # auto_LiRPA 0.3 fails to convert it (AssertionError in the graph parser)
        raise NotImplementedError(
            "auto_LiRPA backend: BatchNorm with track_running_stats=False is supported only in train mode"
        )
    num_classes = layers[-1].out_features
    lo, hi = input_box(x, eps)

    # Building/forwarding must not touch the caller's model (BatchNorm running statistics).
    # The copy is converted in eval mode and the wrapper then switched to the model's mode:
    # auto_LiRPA 0.3 converts a train-mode model with BatchNorm1d in eval mode anyway
    # (printing "Set model to eval() mode!"), and its BatchNorm nodes then use the running
    # statistics instead of the clean batch ones.
    copy_ = _lirpa_friendly(copy.deepcopy(model).eval())
    with _lirpa_compat.quiet_exporter():
        bounded = lirpa.BoundedModule(
            copy_,
            torch.zeros_like(x),
            bound_opts={"relu": "adaptive", "conv_mode": "matrix"},
            device=x.device,
        )
    bounded.train(model.training)
    # Train mode: BatchNorm takes the statistics of this clean batch (BoundBatchNormalization
    # stores them at forward); eval mode: running statistics. Either way run it first.
    bounded(x)
    ptb = lirpa.PerturbationLpNorm(
        norm=float("inf"), eps=eps.to(x.dtype).view(-1, *([1] * (x.dim() - 1))), x_L=lo, x_U=hi
    )
    bx = lirpa.BoundedTensor(x, ptb)
    c = spec_matrix(y.to(device=x.device, dtype=torch.long), num_classes, dtype=x.dtype)
    names = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN", "crown-pure": "CROWN"}
    out, reference = {}, None
    if "crown" in methods:  # IBP bounds of every ReLU input, from auto_LiRPA's own IBP pass
        bounded.compute_bounds(x=(bx,), C=c, method="IBP", bound_upper=False)
        reference = {
            r.inputs[0].name: (r.inputs[0].lower.clone(), r.inputs[0].upper.clone()) for r in bounded.relus
        }
    for method in methods:
        ref = reference if method == "crown" else None
        lower, _ = bounded.compute_bounds(
            x=(bx,), C=c, method=names[method], bound_upper=False, reference_bounds=ref
        )
        out[method] = lower.detach()
    return out
