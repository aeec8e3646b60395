"""Metric names, defined once: the training loop reports them, and the searcher, scheduler,
MLflow callbacks, frontier and plots read them under the same names.

Names are ``<split>_<figure>``: ``val_acc``, ``val_acr``, ``test_acc``, ``test_acr``,
``test_cert_acc@0.1``. The certified accuracy at radius eps is ``cert_acc@<eps>`` with eps
written by :func:`eps_key` (``%.6g``), so a key written by certification is found again by
anyone who knows the radius.
"""

from __future__ import annotations

EPOCH = "epoch"  # epochs completed (Tune's time attribute for early stopping)
DONE = "done"  # True on the result of the last epoch: a trial without it was stopped early
# A trial that ended without finishing its epochs, for a reason of its own, reports a last
# result with one of these set to 1, the worst figures (val_acc = val_acr = 0) and the reason
# as text under END_REASON; it is finished, not failed, so it is not retried.
DIVERGED = "diverged"  # its loss became NaN or infinite
TIMED_OUT = "timed_out"  # no epoch finished within the sweep's --trial-timeout
END_REASON = "end_reason"
ENDED = (DIVERGED, TIMED_OUT)

ACC = "acc"  # clean accuracy
# ACR as published (the ACERT authors' evaluation, docs/method.md): each radius counted up to the data set's
# max_eps, mean(min(r_i, max_eps)), 0 for misclassified samples. Sound: a certificate at r holds
# for every smaller box, which is nested in the checked one. Selection and the frontier use it.
ACR = "acr"
ACR_NORM = "acr_norm"  # ACR in % of the data set's max_eps (at most 100)
# The ACR over the radii as certified, up to the data set's eps_cap (a second, named figure).
ACR_UNCAPPED = "acr_uncapped"
CERT_ACC = "cert_acc"  # certified accuracy at a radius: cert_acc@<eps>

VAL_ACC, VAL_ACR = "val_acc", "val_acr"
TEST_ACC, TEST_ACR = "test_acc", "test_acr"
TEST_ACR_NORM = "test_acr_norm"
VAL_ACR_UNCAPPED, TEST_ACR_UNCAPPED = "val_acr_uncapped", "test_acr_uncapped"


def eps_key(eps: float) -> str:
    """The canonical text of a radius in metric names (0.1 -> '0.1', 8/255 -> '0.0313725')."""
    return f"{eps:.6g}"


def cert_acc_key(eps: float | str, split: str | None = None) -> str:
    """``cert_acc@0.1`` or, with a split, ``val_cert_acc@0.1``."""
    text = eps if isinstance(eps, str) else eps_key(eps)
    name = f"{CERT_ACC}@{text}"
    return f"{split}_{name}" if split else name


def split_key(split: str, figure: str) -> str:
    """``split_key('val', ACR) == 'val_acr'``."""
    return f"{split}_{figure}"


def is_cert_acc(key: str) -> bool:
    return key.split("_", 1)[-1].startswith(f"{CERT_ACC}@") or key.startswith(f"{CERT_ACC}@")


def cert_eps_of(key: str) -> float:
    """The radius of a ``[split_]cert_acc@<eps>`` key."""
    return float(key.rsplit("@", 1)[1])
