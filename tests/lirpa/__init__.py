"""auto_LiRPA as the cross-check of the native bound engine: test tooling, not product code.

``backend.auto_lirpa_margins`` computes the margin bounds of ``trainers.bounds`` with
auto_LiRPA; ``compat`` makes auto_LiRPA 0.3 (PyPI) import on torch 2.x / numpy 2.
"""
