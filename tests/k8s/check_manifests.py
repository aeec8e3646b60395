"""Every offline check of tests/k8s/test_policy.py on one kustomization, from the command line.

    python -m tests.k8s.check_manifests k8s/overlays/gpu          # from the repository root
    python -m tests.k8s.check_manifests k8s/overlays/cpu-dev --single-node

Renders the folder with ``kubectl kustomize`` (tests/k8s/kubectl.py finds one), then prints one
line per problem ("rule: message") and exits 1 if there is any, so a changed or new overlay can be
checked before ``kubectl apply -k``. ``python -m pytest tests/k8s`` runs the same checks on the
shipped overlays, and shows that each rule rejects the broken manifests of tests/fixtures/k8s/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .access_policy import access_violations
from .hardening_policy import hardening_violations
from .kubectl import KubectlNotFound, render
from .manifest_policy import policy_violations
from .manifest_schema import CRD_DIRS, schema_violations
from .network_policy import network_violations
from .operations_policy import operations_violations
from .ray_policy import dockerfile_violations, pinned_versions, ray_violations
from .sweep_policy import sweep_violations

REPO = Path(__file__).resolve().parents[2]


def all_violations(
    objects: list[dict],
    *,
    crd_dirs: list[Path] | None,
    pins: dict[str, str],
    single_node: bool = False,
) -> list[tuple[str, str]]:
    """Every problem of the rendered ``objects``; the ray.io objects are validated against the
    CRDs of every folder in ``crd_dirs`` (each supported KubeRay release)."""
    return (
        schema_violations(objects, crd_dirs)
        + policy_violations(objects)
        + operations_violations(objects, single_node=single_node)
        + ray_violations(objects, ray_version=pins["ray"], single_node=single_node)
        + sweep_violations(objects)
        + hardening_violations(objects)
        + network_violations(objects)
        + access_violations(objects)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.k8s.check_manifests", description=__doc__.splitlines()[0]
    )
    p.add_argument("overlay", help="a folder with a kustomization.yaml")
    p.add_argument(
        "--single-node",
        action="store_true",
        help="one node (kind): allow ReadWriteOnce shared volumes, check that every pod fits the node",
    )
    p.add_argument(
        "--crd-dir",
        type=Path,
        action="append",
        help="a folder of KubeRay CRDs (repeatable; default: every release in tests/fixtures/kuberay-crds)",
    )
    args = p.parse_args(argv)
    try:
        objects = render(args.overlay)
    except (KubectlNotFound, RuntimeError) as e:
        print(e, file=sys.stderr)
        return 2
    pins = pinned_versions(REPO / "pyproject.toml")
    crd_dirs = args.crd_dir or list(CRD_DIRS.values())
    problems = all_violations(objects, crd_dirs=crd_dirs, pins=pins, single_node=args.single_node)
    problems += dockerfile_violations(REPO / "k8s" / "Dockerfile", pins)
    for rule, message in problems:
        print(f"{rule}: {message}")
    print(f"{len(problems)} problem(s) in {args.overlay}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
