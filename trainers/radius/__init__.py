"""Radius policies: which radius each sample is trained at (one part of a training method, see
``trainers.methods``). The fixed schedule eps_max(t) and ACERT's adaptive certified radii (exact
and warm-started) live here; the root solver they share with certification stays in
``trainers.rootfind`` (certification uses it without any training policy)."""

from __future__ import annotations

from trainers.radius.adaptive import AdaptiveRadius, WarmRadius, adaptive_radii
from trainers.radius.base import FixedRadius, RadiusBase, RadiusPolicy

__all__ = ["AdaptiveRadius", "FixedRadius", "RadiusBase", "RadiusPolicy", "WarmRadius", "adaptive_radii"]
