"""Rules for how the pods are scheduled and kept alive (the KubeRay details of issue #12).

The *control plane* of a sweep is every pod that is not a Ray worker: the Ray head (the driver
runs there), the RayJob submitter, and every Deployment / StatefulSet (MLflow, PostgreSQL, MinIO).
Losing one of them stops or restarts the sweep; losing a worker costs its trials an epoch or so
(they resume from their checkpoints).

- ``scheduling``: every pod names a PriorityClass of the manifests; every control-plane class is
  above every worker class; control-plane pods require on-demand nodes: each term of their
  required node affinity excludes the spot label of every provider in ``SPOT_LABELS`` (NotIn), or
  their nodeSelector pins one of those labels to a value that is not spot;
- ``disruption``: every Deployment / StatefulSet has a PodDisruptionBudget that allows no
  voluntary eviction (a drain or the cluster autoscaler) of its pods;
- ``network-policy``: the pods behind every Service of a Deployment / StatefulSet accept traffic
  only from pods of their own namespace (NetworkPolicies are additive: every ingress rule of
  every policy selecting them must name only podSelector peers); MLflow has no authentication;
- ``single-node-fit`` (single-node overlays only): the requests of every pod at full scale (worker
  groups at maxReplicas), plus what kind's control plane and the KubeRay operator request, fit
  the node that k8s/README.md asks for (``SINGLE_NODE``).
"""

from __future__ import annotations

from typing import Any

from .manifest_policy import (
    WORKLOAD_TEMPLATE_PATHS,
    Violation,
    name_of,
    pod_templates,
    quantity_or_none,
    ray_cluster_specs,
)
from .ray_policy import namespace_of

SPOT_LABELS = {  # node label -> its value on spot / preemptible capacity
    "karpenter.sh/capacity-type": "spot",
    "eks.amazonaws.com/capacityType": "SPOT",
    "cloud.google.com/gke-spot": "true",
    "cloud.google.com/gke-preemptible": "true",
    "kubernetes.azure.com/scalesetpriority": "spot",
}
GiB = 2.0**30
# k8s/README.md, step 7: "give Docker >= 6 CPUs and 12 GiB" (a test keeps the two equal).
SINGLE_NODE = {"cpu": 6.0, "memory": 12 * GiB}
# What runs besides the sweep: kind's control plane (apiserver 250m, controller-manager 200m,
# scheduler 100m, etcd 100m/100Mi, 2 x coredns 100m/70Mi, kindnet 100m/50Mi) and the KubeRay
# operator's helm chart defaults (100m/512Mi).
SINGLE_NODE_OVERHEAD = {"cpu": 1.05, "memory": 0.85 * GiB}


def pods(objects: list[dict]) -> list[tuple[str, str, dict, int]]:
    """(where, role, pod spec, how many at most) of every pod the manifests make; role is
    'worker' for a Ray worker group and 'control' for everything else."""
    out = []
    for obj in objects:
        spec = obj.get("spec") or {}
        if obj.get("kind") == "RayJob" and spec.get("submitterPodTemplate"):
            out.append(
                (f"{name_of(obj)} submitter", "control", spec["submitterPodTemplate"].get("spec") or {}, 1)
            )
        for where, cluster in ray_cluster_specs(obj):
            head = (cluster.get("headGroupSpec") or {}).get("template") or {}
            out.append((f"{where} head", "control", _with_autoscaler(head.get("spec") or {}, cluster), 1))
            for g in cluster.get("workerGroupSpecs") or []:
                n = g.get("maxReplicas") if isinstance(g.get("maxReplicas"), int) else 1
                template = g.get("template") or {}
                out.append(
                    (f"{where} worker group {g.get('groupName')}", "worker", template.get("spec") or {}, n)
                )
        if obj.get("kind") in WORKLOAD_TEMPLATE_PATHS:
            n = spec.get("replicas") if isinstance(spec.get("replicas"), int) else 1
            out += [(where, "control", t.get("spec") or {}, n) for where, t in pod_templates(obj)]
    return out


def _with_autoscaler(head_spec: dict, cluster: dict) -> dict:
    """The head pod as KubeRay makes it: with the autoscaler sidecar when autoscaling is on."""
    if not cluster.get("enableInTreeAutoscaling"):
        return head_spec
    sidecar = {"name": "autoscaler", "resources": (cluster.get("autoscalerOptions") or {}).get("resources")}
    return {**head_spec, "containers": [*(head_spec.get("containers") or []), sidecar]}


# --- scheduling ------------------------------------------------------------------------------------
def _on_demand(spec: dict) -> bool:
    selector = spec.get("nodeSelector") or {}
    if any(k in selector and str(selector[k]) != v for k, v in SPOT_LABELS.items()):
        return True
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    return bool(terms) and all(
        all(
            any(
                e.get("key") == key and e.get("operator") == "NotIn" and value in (e.get("values") or [])
                for e in term.get("matchExpressions") or []
            )
            for key, value in SPOT_LABELS.items()
        )
        for term in terms
    )


def check_scheduling(objects: list[dict]) -> list[Violation]:
    classes = {o["metadata"]["name"]: o.get("value") for o in objects if o.get("kind") == "PriorityClass"}
    out, values = [], {"control": [], "worker": []}
    for where, role, spec, _ in pods(objects):
        name = spec.get("priorityClassName")
        if name is None:
            out.append(("scheduling", f"{where}: no priorityClassName"))
        elif not isinstance(classes.get(name), int):
            out.append(
                ("scheduling", f"{where}: priorityClassName {name!r} is no PriorityClass of the manifests")
            )
        else:
            values[role].append((classes[name], where, name))
        if role == "control" and not _on_demand(spec):
            out.append(
                (
                    "scheduling",
                    f"{where}: must avoid spot nodes (required node affinity NotIn for each of "
                    f"{', '.join(SPOT_LABELS)})",
                )
            )
    if values["control"] and values["worker"]:
        low, where, name = min(values["control"])
        high, worker, worker_class = max(values["worker"])
        if low <= high:
            out.append(
                (
                    "scheduling",
                    f"{where}: priority {low} ({name}) is not above the workers' {high} "
                    f"({worker_class}, {worker})",
                )
            )
    return out


# --- disruption and network ---------------------------------------------------------------------------
def _selects(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector (matchLabels only; matchExpressions are not used here) against pod labels."""
    if selector is None:
        return False
    return (selector.get("matchLabels") or {}).items() <= labels.items() and not selector.get(
        "matchExpressions"
    )


def _workloads(objects: list[dict]) -> list[tuple[dict, dict, int]]:
    """(object, pod labels, replicas) of every Deployment / StatefulSet."""
    out = []
    for obj in objects:
        if obj.get("kind") in ("Deployment", "StatefulSet"):
            labels = (((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
                "labels"
            ) or {}
            n = obj["spec"].get("replicas") if isinstance(obj["spec"].get("replicas"), int) else 1
            out.append((obj, labels, n))
    return out


def _blocks_eviction(pdb: dict, replicas: int) -> bool:
    spec = pdb.get("spec") or {}
    if "maxUnavailable" in spec:
        return str(spec["maxUnavailable"]) in ("0", "0%")
    low = spec.get("minAvailable")
    return low == "100%" or (isinstance(low, int) and low >= replicas)


def check_disruption(objects: list[dict]) -> list[Violation]:
    out = []
    for obj, labels, n in _workloads(objects):
        budgets = [
            o
            for o in objects
            if o.get("kind") == "PodDisruptionBudget"
            and namespace_of(o) == namespace_of(obj)
            and _selects((o.get("spec") or {}).get("selector"), labels)
        ]
        if not any(_blocks_eviction(b, n) for b in budgets):
            out.append(
                (
                    "disruption",
                    f"{name_of(obj)}: no PodDisruptionBudget that blocks voluntary evictions of its pods",
                )
            )
    return out


def _ingress_rules_open(policy: dict) -> list[str]:
    """Why an ingress rule of ``policy`` lets in more than the pods of its namespace."""
    why = []
    for i, rule in enumerate((policy.get("spec") or {}).get("ingress") or []):
        peers = rule.get("from")
        if not peers:
            why.append(f"ingress[{i}] has no 'from' (anyone)")
        for peer in peers or []:
            if set(peer) != {"podSelector"}:
                why.append(f"ingress[{i}] admits {sorted(set(peer) - {'podSelector'})} peers")
    return why


def check_network_policy(objects: list[dict]) -> list[Violation]:
    out = []
    services = [o for o in objects if o.get("kind") == "Service" and (o.get("spec") or {}).get("selector")]
    for obj, labels, _ in _workloads(objects):
        ns = namespace_of(obj)
        if not any(
            namespace_of(s) == ns and s["spec"]["selector"].items() <= labels.items() for s in services
        ):
            continue
        policies = [
            p
            for p in objects
            if p.get("kind") == "NetworkPolicy"
            and namespace_of(p) == ns
            and _selects((p.get("spec") or {}).get("podSelector"), labels)
        ]
        isolating = [p for p in policies if "Ingress" in (p["spec"].get("policyTypes") or ["Ingress"])]
        if not isolating:
            out.append(
                ("network-policy", f"{name_of(obj)}: no NetworkPolicy restricts ingress to its Service")
            )
        for p in policies:
            out += [
                ("network-policy", f"{name_of(obj)}: {name_of(p)} {why}") for why in _ingress_rules_open(p)
            ]
    return out


# --- one small node ---------------------------------------------------------------------------------
def pod_requests(spec: dict) -> dict[str, float]:
    """What the scheduler reserves for a pod: per resource, the larger of the largest init
    container's request and the sum of the containers' requests."""
    out = {}
    for kind in ("cpu", "memory"):

        def req(c: dict[str, Any], kind: str = kind) -> float:
            value = ((c.get("resources") or {}).get("requests") or {}).get(kind, 0)
            return quantity_or_none(value) or 0.0

        init = max((req(c) for c in spec.get("initContainers") or []), default=0.0)
        out[kind] = max(init, sum(req(c) for c in spec.get("containers") or []))
    return out


def single_node_requests(objects: list[dict]) -> dict[str, float]:
    """The requests of every pod at full scale, plus kind's and the operator's."""
    total = dict(SINGLE_NODE_OVERHEAD)
    for _, _, spec, n in pods(objects):
        for kind, value in pod_requests(spec).items():
            total[kind] += n * value
    return total


def check_single_node_fit(objects: list[dict]) -> list[Violation]:
    total = single_node_requests(objects)
    if total["cpu"] <= SINGLE_NODE["cpu"] and total["memory"] <= SINGLE_NODE["memory"]:
        return []
    return [
        (
            "single-node-fit",
            f"requests at full scale {total['cpu']:.2f} CPU / {total['memory'] / GiB:.2f} GiB (with kind and "
            f"the operator) exceed the node of {SINGLE_NODE['cpu']:g} CPUs / {SINGLE_NODE['memory'] / GiB:g} GiB",
        )
    ]


def operations_violations(objects: list[dict], *, single_node: bool = False) -> list[Violation]:
    return (
        check_scheduling(objects)
        + check_disruption(objects)
        + check_network_policy(objects)
        + (check_single_node_fit(objects) if single_node else [])
    )
