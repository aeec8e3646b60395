"""What k8s/README.md and the Dockerfile state about versions and sizes, checked against the
vendored CRDs, the rendered manifests and the installed torch; the scheduling helpers of
operations_policy.py on small pods."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from . import manifest_schema as ms
from . import operations_policy as op
from .kubectl import render, require_kubectl

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
README = (K8S / "README.md").read_text()
PROSE = " ".join(README.split())  # line breaks of the Markdown source as single spaces


def rendered(overlay: str) -> list[dict]:
    return render(K8S / "overlays" / overlay, require_kubectl())


def test_the_readme_states_the_oldest_and_the_installed_kuberay_that_are_tested():
    oldest, latest = ms.MIN_KUBERAY.lstrip("v"), ms.LATEST_KUBERAY.lstrip("v")
    minor = ".".join(oldest.split(".")[:2])
    assert f"**KubeRay >= {minor}**" in PROSE
    assert f"KubeRay {oldest} and {latest}" in PROSE
    assert set(re.findall(r"kuberay/kuberay-operator --version (\S+)", README)) == {latest}


def test_a_field_of_kuberay_1_7_is_refused_by_the_1_6_crds():
    """Why the oldest release is validated too: a field it does not know passes the newest."""
    (job,) = [o for o in rendered("gpu") if o["kind"] == "RayJob"]
    job = copy.deepcopy(job)
    job["spec"]["rayClusterSpec"]["networkPolicy"] = {"head": {}}  # new in KubeRay 1.7
    assert ms.schema_violations([job], ms.CRD_DIRS["v1.7.0"]) == []
    problems = ms.schema_violations([job], list(ms.CRD_DIRS.values()))
    assert problems and all(m.startswith("[v1.6.2] RayJob/acert-sweep") for _, m in problems)


def test_the_gpu_requirement_stated_is_the_one_of_the_pinned_torch():
    """The README and the Dockerfile say driver >= 580 and Turing or newer because torch 2.14.1
    from PyPI is a CUDA 13.0 build with kernels from sm_75 on; a new torch pin must revisit it."""
    import torch

    cuda = torch.version.cuda
    if cuda is None:
        pytest.skip("this torch is a CPU build: the image's GPU wheel cannot be inspected here")
    archs = [a for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    assert cuda.split(".")[0] == "13", f"torch is built for CUDA {cuda}: update the driver requirement"
    assert min(archs, key=lambda a: int(a[3:])) == "sm_75", f"{archs}: update the GPU requirement"
    assert "NVIDIA driver >= 580" in PROSE and "compute capability >= 7.5" in PROSE
    dockerfile = (K8S / "Dockerfile").read_text()
    assert "CUDA 13.0" in dockerfile and "driver >= 580" in dockerfile and "Turing" in dockerfile


def test_the_cpu_dev_node_is_the_one_the_readme_asks_for_and_its_table_adds_up():
    m = re.search(r"give Docker >= (\d+) CPUs and (\d+) GiB", README)
    assert m and (float(m.group(1)), float(m.group(2))) == (
        op.SINGLE_NODE["cpu"],
        op.SINGLE_NODE["memory"] / op.GiB,
    )
    total = op.single_node_requests(rendered("cpu-dev"))
    row = re.search(
        r"\*\*total\*\* \(of 6 CPUs, 12 GiB\) \| \*\*([\d.]+)\*\* \| \*\*([\d.]+) GiB\*\*", README
    )
    assert row, "k8s/README.md lost the cpu-dev sizing table"
    assert float(row.group(1)) == pytest.approx(total["cpu"])
    assert float(row.group(2)) == pytest.approx(total["memory"] / op.GiB, abs=0.01)


def test_the_readme_reaches_the_head_through_the_rayjobs_stable_service():
    assert "svc/acert-sweep-head-svc" in README and "rayClusterName" not in README
    assert "svc/acert-ray-head-svc" in README  # the long-lived cluster's


def test_pods_have_roles_and_full_scale_counts():
    roles = {(where, role, n) for where, role, _, n in op.pods(rendered("cpu-dev"))}
    assert roles == {
        ("RayJob/acert-sweep submitter", "control", 1),
        ("RayJob/acert-sweep head", "control", 1),
        ("RayJob/acert-sweep worker group cpu", "worker", 2),
        ("Deployment/mlflow", "control", 1),
        ("StatefulSet/postgres", "control", 1),
    }


def test_pod_requests_take_the_largest_init_container_or_the_sum_of_the_containers():
    spec = {
        "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}],
        "containers": [
            {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            {"resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}},
        ],
    }
    assert op.pod_requests(spec) == {"cpu": 2.0, "memory": 1.5 * op.GiB}


def test_on_demand_by_affinity_or_by_node_selector():
    term = [{"key": k, "operator": "NotIn", "values": [v]} for k, v in op.SPOT_LABELS.items()]
    required = {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": term}]}
    }
    assert op._on_demand({"affinity": {"nodeAffinity": required}})
    assert op._on_demand({"nodeSelector": {"karpenter.sh/capacity-type": "on-demand"}})
    assert not op._on_demand({"nodeSelector": {"karpenter.sh/capacity-type": "spot"}})
    assert not op._on_demand({})
    partial = {"nodeSelectorTerms": [{"matchExpressions": term[:-1]}]}
    assert not op._on_demand(
        {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": partial}}}
    )
