"""Compatibility replacements that let auto_LiRPA 0.3 (the only PyPI release, 2022) import and
run under torch 2.x / numpy 2 (checked with torch 2.14 and numpy 2; the replacements are listed
below).

Nothing here runs at import of the project: :func:`apply` is called by
``trainers.bounds.autolirpa`` right before ``import auto_LiRPA``, i.e. only when the
auto_LiRPA backend is requested. Each replacement is installed only where the name it
provides is missing, so ``apply()`` is idempotent and a no-op on the stacks auto_LiRPA
supports natively (old torch/numpy, or auto_LiRPA >= 0.5 from its source repository, which
does not use these names).

The four replacements (and one fix after the import, :func:`after_import`):

1. ``numpy.lib.arraysetops`` (removed in numpy 2): a module whose ``isin`` is ``numpy.isin``
   (``auto_LiRPA/operators/base.py`` imports it).
2. ``torch.onnx.symbolic_helper._set_opset_version`` (removed): sets the opset of the
   TorchScript exporter's globals (``auto_LiRPA/parse_graph.py`` calls it with 12).
3. ``torch.onnx.utils._optimize_graph``: the TorchScript exporter's ``_optimize_graph``
   (present as a re-export in torch 2.14; installed only if missing).
4. ``torch._C.Node.__getitem__`` (removed in torch 2.x): attribute lookup by kind, used by
   ``parse_graph`` as ``n[k]`` for each attribute name ``k``.
5. ``BoundedModule._named_members`` of 0.3 lacks the ``remove_duplicate`` argument that
   ``nn.Module.parameters()`` passes in torch 2.x; CROWN's intermediate bounds call
   ``parameters()`` (``get_sparse_C``). The override gets the argument and ignores it (it
   de-duplicates anyway).
"""

from __future__ import annotations

import contextlib
import sys
import types
import warnings
from collections.abc import Iterator

_APPLIED: list[str] = []  # names of the replacements installed by this process (for reports/tests)


def _numpy_arraysetops() -> None:
    try:
        import numpy.lib.arraysetops  # noqa: F401  (numpy < 2: nothing to do)

        return
    except (ImportError, AttributeError):
        pass
    import numpy

    mod = types.ModuleType("numpy.lib.arraysetops")
    mod.isin = numpy.isin
    sys.modules["numpy.lib.arraysetops"] = mod
    _APPLIED.append("numpy.lib.arraysetops")


def _torch_onnx() -> None:
    import torch.onnx.symbolic_helper as symbolic_helper
    import torch.onnx.utils as onnx_utils

    if not hasattr(symbolic_helper, "_set_opset_version"):
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        def _set_opset_version(opset_version: int) -> None:
            GLOBALS.export_onnx_opset_version = opset_version

        symbolic_helper._set_opset_version = _set_opset_version
        _APPLIED.append("torch.onnx.symbolic_helper._set_opset_version")
    if not hasattr(onnx_utils, "_optimize_graph"):
        from torch.onnx._internal.torchscript_exporter.utils import _optimize_graph

        onnx_utils._optimize_graph = _optimize_graph
        _APPLIED.append("torch.onnx.utils._optimize_graph")


def _torch_node_getitem() -> None:
    import torch

    if not hasattr(torch._C.Node, "__getitem__"):
        # n[k] -> getattr(n, n.kindOf(k))(k): kind "i" -> n.i("axis"), "is" -> the int-list
        # getter named "is" ("pads"), "f" -> n.f("epsilon"), "t" -> n.t("value"), ...
        torch._C.Node.__getitem__ = lambda self, k: getattr(self, self.kindOf(k))(k)
        _APPLIED.append("torch._C.Node.__getitem__")


def apply() -> list[str]:
    """Install the replacements that this torch/numpy needs (idempotent). Returns the names
    installed so far by this process."""
    _numpy_arraysetops()
    _torch_onnx()
    _torch_node_getitem()
    return list(_APPLIED)


def after_import(module: types.ModuleType) -> None:
    """Replacement 5 on an imported auto_LiRPA (idempotent; a no-op where it is not needed)."""
    import inspect

    cls = module.BoundedModule
    original = cls._named_members
    if "remove_duplicate" in inspect.signature(original).parameters:
        return

    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        return original(self, get_members_fn, prefix, recurse)

    cls._named_members = _named_members
    _APPLIED.append("auto_LiRPA.BoundedModule._named_members")


_QUIET = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)


def _is_exporter_noise(w: warnings.WarningMessage) -> bool:
    import torch

    if issubclass(w.category, _QUIET):
        return True
    # e.g. "ONNX export mode is set to TrainingMode.EVAL, but operator 'batch_norm' is set to
    # train=True": auto_LiRPA traces through the exporter; its export modes do not apply here.
    if issubclass(w.category, UserWarning) and "/torch/onnx/" in w.filename.replace("\\", "/"):
        return True
    tracer = getattr(torch.jit, "TracerWarning", None)
    return tracer is not None and issubclass(w.category, tracer)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Drop, locally, the deprecation warnings that the TorchScript exporter/tracer (and
    ``torch.jit.script`` at auto_LiRPA's import) print on every ``BoundedModule`` build.

    The warnings are recorded rather than filtered because auto_LiRPA calls
    ``warnings.simplefilter("once")`` at import, which would override an "ignore" filter;
    ``catch_warnings`` also undoes that global change on exit. Recorded warnings of other
    categories are re-issued afterwards, so nothing else is hidden.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if not _is_exporter_noise(w):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
