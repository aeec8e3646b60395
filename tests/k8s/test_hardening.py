"""What k8s/README.md promises about the image and the hardening, beyond the policy rules of
test_policy.py: the README's commands run in the image (every path they name is copied), images
pinned by digest with the README's own block still pass every check, /health is open under
MLflow's basic-auth (the probes and wait-for-mlflow need no login), and the egress rule's
address arithmetic."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from . import network_policy as netp
from .check_manifests import all_violations
from .kubectl import render, require_kubectl
from .manifest_policy import containers
from .manifest_schema import CRD_DIRS
from .ray_policy import dockerfile_copies, pinned_versions

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DOCS = (REPO / "README.md", K8S / "README.md")
# Run from a checkout with the dev extras (k8s/README.md, "Checking without a cluster"), not in
# the image: the test suite is not copied into it.
CHECKOUT_ONLY = {"tests"}


def readme_commands() -> list[tuple[str, list[str]]]:
    """(document, words) of every ``python -m ...`` command line of README.md and k8s/README.md,
    continuation lines joined."""
    out = []
    for doc in DOCS:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        for m in re.finditer(r"(?:^|`|\$ )\s*(python -m [^`\n#]+)", text, re.M):
            out.append((doc.name, m.group(1).split()))
    return out


def test_every_path_that_a_readme_command_names_is_in_the_image():
    copies = dockerfile_copies(K8S / "Dockerfile")
    checked: list[str] = []
    for doc, words in readme_commands():
        package = words[2].split(".")[0]
        if package in CHECKOUT_ONLY or not (REPO / package).is_dir():
            continue  # a checkout-only command, or another package's module (mlflow, pip)
        assert package in copies, f"{doc}: `{' '.join(words)}` runs {package}, which the image lacks"
        for word in words[3:]:
            path = word.split("=", 1)[-1]
            relative = "/" in path and not path.startswith(("/", "$", "~")) and "://" not in path
            if relative and (REPO / path.split("/")[0]).exists():
                assert (REPO / path).exists(), f"{doc}: `{' '.join(words)}` names a missing {path}"
                assert path.split("/")[0] in copies, f"{doc}: {path} is not copied into the image"
                checked.append(path)
    assert any(p.startswith("configs/") for p in checked), checked  # README's --config presets


def test_readme_commands_are_found():
    commands = [" ".join(w) for _, w in readme_commands()]
    assert any(c.startswith("python -m orchestrator.sweep --config configs/") for c in commands)
    assert any(c.startswith("python -m tests.k8s.check_manifests") for c in commands)


def digest_block() -> dict:
    """The `images:` block of k8s/README.md's "Pin the images by digest"."""
    readme = (K8S / "README.md").read_text()
    section = readme[readme.index("### Pin the images by digest") :]
    (block,) = re.findall(r"```yaml\n(.*?)```", section[: section.index("\n## ")], re.S)
    return yaml.safe_load(block)


def test_the_readmes_digest_block_pins_every_image_and_passes_every_check(tmp_path):
    kubectl = require_kubectl()
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("__pycache__"))
    overlay = tree / "overlays" / "gpu"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kustomization.update(digest_block())  # the README: replace the overlay's `images:` with it
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objects = render(overlay, kubectl)
    images = {c["image"] for o in objects for _, c, _ in containers(o) if "image" in c}
    assert images and all(re.search(r"@sha256:[0-9a-f]{64}$", i) for i in images), images
    problems = all_violations(
        objects, crd_dirs=list(CRD_DIRS.values()), pins=pinned_versions(REPO / "pyproject.toml")
    )
    assert problems == []


def test_health_is_open_and_the_api_is_not_under_basic_auth():
    """Why the probes and wait-for-mlflow stay as they are: MLflow's basic-auth app exempts
    /health; the REST API needs the login (tests/cluster shows the 401 on a running server)."""
    pytest.importorskip("flask_wtf", reason="mlflow[auth] is not installed")
    from mlflow.server.auth import is_unprotected_route

    assert is_unprotected_route("/health")
    assert not is_unprotected_route("/api/2.0/mlflow/experiments/search")


@pytest.mark.parametrize(
    "block, reaches",
    [
        ({"cidr": "0.0.0.0/0"}, True),
        ({"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}, False),
        ({"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}, False),
        ({"cidr": "169.254.0.0/16", "except": ["169.254.20.10/32"]}, True),
        ({"cidr": "10.0.0.0/8"}, False),
        ({"cidr": "not-an-address"}, True),
    ],
)
def test_an_ip_block_reaches_the_metadata_address_unless_excepted(block, reaches):
    assert netp._reaches_metadata(block) is reaches
