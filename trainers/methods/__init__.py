"""Training methods by name. A new method (SABR, MTL-IBP) is one file here plus its import
below (or a plugin module that calls ``register_method``): see ``trainers.methods.base``."""

from __future__ import annotations

from trainers.methods import acert, crown_ibp, ibp, mtl_ibp, sabr, standard  # noqa: F401  (register the methods)
from trainers.methods.base import (
    TRAINING_METHODS,
    MethodSpec,
    StepOutput,
    TrainingMethod,
    build_method,
    certified_methods,
    register_method,
)

__all__ = [
    "TRAINING_METHODS",
    "MethodSpec",
    "StepOutput",
    "TrainingMethod",
    "build_method",
    "certified_methods",
    "register_method",
]
