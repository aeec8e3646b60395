"""What k8s/README.md promises about the image and the hardening, beyond the policy rules of
test_policy.py: the README's commands run in the image (every path they name is copied), images
pinned by digest with the README's own block still pass every check, /health is open under
MLflow's basic-auth (the probes and wait-for-mlflow need no login), MinIO's postStart hook keeps
the keys out of process arguments (run against a stand-in ``mc``), and the egress rule's address
arithmetic."""

from __future__ import annotations

import re
import shutil
import subprocess
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


FAKE_MC = r"""#!/bin/bash
# Records each call (its arguments, one per line, then its standard input) and plays MinIO:
# `admin policy attach` fails when $ATTACHED says the policy is attached already.
{ printf 'ARGV'; printf ' %s' "$@"; printf '\n'; } >> "$MC_CALLS"
case "$1 $2 $3" in
  "admin user add") IFS= read -r secret; printf 'STDIN %s\n' "$secret" >> "$MC_CALLS" ;;
  "admin policy attach") [ -z "$ATTACHED" ] || exit 1 ;;
  "admin user info") echo "PolicyName: ${ATTACHED:-readwrite}" ;;
esac
exit 0
"""


def minio_hook() -> tuple[list[str], dict]:
    """The MinIO container's postStart command and its env (the gpu overlay)."""
    (sts,) = [
        o
        for o in render(K8S / "overlays" / "gpu", require_kubectl())
        if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "minio"
    ]
    c = sts["spec"]["template"]["spec"]["containers"][0]
    return c["lifecycle"]["postStart"]["exec"]["command"], c


@pytest.mark.parametrize("attached, succeeds", [("", True), ("mlflow-artifacts", True), ("other", False)])
def test_the_minio_hook_passes_no_key_in_arguments(tmp_path, attached, succeeds):
    """The hook with a stand-in ``mc``: the new user's secret key goes on ``mc admin user add``'s
    standard input, no key is in any argument, and a second start (policy attached already)
    succeeds while a user without the policy fails the hook."""
    command, container = minio_hook()
    (tmp_path / "mc").write_text(FAKE_MC)
    (tmp_path / "mc").chmod(0o755)
    calls = tmp_path / "calls"
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "MC_CALLS": str(calls),
        "ATTACHED": attached,
        "MLFLOW_ACCESS_KEY": "mlflow-user",
        "MLFLOW_SECRET_KEY": "s3cr3t-of-mlflow",
    }
    assert {"MLFLOW_ACCESS_KEY", "MLFLOW_SECRET_KEY", "MC_HOST_local"} <= {
        e["name"] for e in container["env"]
    }
    done = subprocess.run(command, env=env, cwd=tmp_path, timeout=60, capture_output=True, text=True)
    assert (done.returncode == 0) is succeeds, done.stderr
    lines = calls.read_text().splitlines()
    assert "ARGV admin user add local mlflow-user" in lines
    assert "STDIN s3cr3t-of-mlflow" in lines
    assert not any("s3cr3t" in ln for ln in lines if ln.startswith("ARGV"))
