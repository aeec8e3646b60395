"""Training methods by name. A new method (SABR, MTL-IBP) is a new file and one line here."""

from __future__ import annotations

from trainers.methods.acert import ACERT
from trainers.methods.base import Method, StepOutput
from trainers.methods.crown_ibp import CrownIBP
from trainers.methods.ibp import IBP
from trainers.methods.standard import Standard

TRAINING_METHODS: dict[str, type[Method]] = {m.name: m for m in (Standard, IBP, CrownIBP, ACERT)}


def get_method(name: str) -> type[Method]:
    if name not in TRAINING_METHODS:
        raise ValueError(f"unknown training method {name!r}; known: {', '.join(TRAINING_METHODS)}")
    return TRAINING_METHODS[name]


__all__ = ["TRAINING_METHODS", "Method", "StepOutput", "get_method"]
