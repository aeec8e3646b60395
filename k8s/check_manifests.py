"""Render an overlay and run every offline check on it: the checks of tests/test_k8s_policy.py.

    python k8s/check_manifests.py k8s/overlays/gpu
    python k8s/check_manifests.py k8s/overlays/cpu-dev --single-node

Prints one line per problem ("rule: message") and exits 1 if there is any, so it can run before
``kubectl apply -k``. The CRDs come from ../shared/k8s/crds unless --crd-dir is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kustomize_lite import render  # noqa: E402
from manifest_policy import policy_violations  # noqa: E402
from manifest_schema import DEFAULT_CRD_DIR, schema_violations  # noqa: E402
from ray_policy import dockerfile_violations, pinned_versions, ray_violations  # noqa: E402
from sweep_policy import sweep_violations  # noqa: E402


def all_violations(
    objects: list[dict], *, crd_dir: Path | None, pins: dict[str, str], single_node: bool = False
) -> list[tuple[str, str]]:
    return (
        schema_violations(objects, crd_dir)
        + policy_violations(objects)
        + ray_violations(objects, ray_version=pins["ray"], single_node=single_node)
        + sweep_violations(objects)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overlay", help="a folder with a kustomization.yaml")
    p.add_argument("--single-node", action="store_true", help="allow ReadWriteOnce shared volumes (kind)")
    p.add_argument("--crd-dir", type=Path, default=DEFAULT_CRD_DIR)
    args = p.parse_args(argv)
    pins = pinned_versions(HERE.parent / "pyproject.toml")
    problems = all_violations(
        render(args.overlay), crd_dir=args.crd_dir, pins=pins, single_node=args.single_node
    )
    problems += dockerfile_violations(HERE / "Dockerfile", pins)
    for rule, message in problems:
        print(f"{rule}: {message}")
    print(f"{len(problems)} problem(s) in {args.overlay}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
