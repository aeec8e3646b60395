"""NetworkPolicy rules for the Ray pods and for egress (issue #19, "A hardened cluster").

NetworkPolicies add up: a pod may receive (send) what any policy selecting it for Ingress
(Egress) allows, and everything while none does. So each rule looks at every policy that selects
a pod, by its template's labels:

- ``ray-network``: every Ray pod (head, workers, the RayJob submitter) is selected by an Ingress
  policy, and every ingress rule of those policies admits only pods of its namespace
  (``podSelector`` peers) or the KubeRay operator's namespace (a ``namespaceSelector`` on
  ``kubernetes.io/metadata.name: OPERATOR_NAMESPACE``, on the dashboard port only);
- ``egress``: every pod is selected by an Egress policy; every egress rule names its peers (none
  = anywhere), a peer of another namespace is DNS only (port 53), an ``ipBlock`` never contains
  the cloud metadata address without excepting it, and only the Ray head (the autoscaler's API
  calls, the data set download) has an ``ipBlock`` at all: the pods that run trial code reach the
  namespace and DNS, nothing else.
"""

from __future__ import annotations

import ipaddress

from .manifest_policy import Violation, pod_templates
from .operations_policy import _selects
from .ray_policy import namespace_of

OPERATOR_NAMESPACE = "kuberay-system"  # k8s/README.md installs the operator there
DASHBOARD_PORT = 8265
METADATA = ipaddress.ip_address("169.254.169.254")
HEAD_COMPONENT = "ray-head"


def _pods(objects: list[dict]) -> list[tuple[str, str | None, dict, bool]]:
    """(where, namespace, labels, is a Ray pod) of every pod template."""
    out = []
    for obj in objects:
        ray = str(obj.get("apiVersion", "")).startswith("ray.io/")
        for where, template in pod_templates(obj):
            labels = (template.get("metadata") or {}).get("labels") or {}
            out.append((where, namespace_of(obj), labels, ray))
    return out


def _policies(objects: list[dict], ns: str | None, labels: dict, direction: str) -> list[dict]:
    return [
        p
        for p in objects
        if p.get("kind") == "NetworkPolicy"
        and namespace_of(p) == ns
        and _selects((p.get("spec") or {}).get("podSelector"), labels)
        and direction in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])
    ]


def _ports(rule: dict) -> set:
    return {p.get("port") for p in rule.get("ports") or []}


def _ingress_problems(policy: dict) -> list[str]:
    why = []
    name = policy["metadata"]["name"]
    for i, rule in enumerate((policy.get("spec") or {}).get("ingress") or []):
        peers = rule.get("from")
        if not peers:
            why.append(f"{name} ingress[{i}] has no 'from' (anyone)")
        for peer in peers or []:
            if set(peer) == {"podSelector"}:
                continue
            operator = {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}
            ns_sel = peer.get("namespaceSelector") or {}
            if set(peer) != {"namespaceSelector"} or ns_sel != {"matchLabels": operator}:
                why.append(f"{name} ingress[{i}] admits {peer} (not this namespace or {OPERATOR_NAMESPACE})")
            elif _ports(rule) != {DASHBOARD_PORT}:
                why.append(f"{name} ingress[{i}] lets the operator reach more than port {DASHBOARD_PORT}")
    return why


def check_ray_network(objects: list[dict]) -> list[Violation]:
    out = []
    for where, ns, labels, ray in _pods(objects):
        if not ray:
            continue
        policies = _policies(objects, ns, labels, "Ingress")
        if not policies:
            out.append(("ray-network", f"{where}: no NetworkPolicy restricts its ingress"))
        for p in policies:
            out += [("ray-network", f"{where}: {why}") for why in _ingress_problems(p)]
    return out


def _reaches_metadata(block: dict) -> bool:
    try:
        net = ipaddress.ip_network(block.get("cidr", ""), strict=False)
        excepted = [ipaddress.ip_network(e, strict=False) for e in block.get("except") or []]
    except ValueError:
        return True  # unparseable: assume the worst
    return METADATA in net and not any(METADATA in e for e in excepted)


def _egress_problems(policy: dict, is_head: bool) -> list[str]:
    why = []
    name = policy["metadata"]["name"]
    for i, rule in enumerate((policy.get("spec") or {}).get("egress") or []):
        peers = rule.get("to")
        if not peers:
            why.append(f"{name} egress[{i}] has no 'to' (anywhere)")
        for peer in peers or []:
            if "ipBlock" in peer:
                if _reaches_metadata(peer["ipBlock"]):
                    why.append(f"{name} egress[{i}] reaches the metadata address {METADATA}")
                if not is_head:
                    why.append(f"{name} egress[{i}] leaves the cluster (ipBlock): only the Ray head may")
            elif "namespaceSelector" in peer and (not _ports(rule) or _ports(rule) - {53}):
                why.append(f"{name} egress[{i}] reaches other namespaces beyond DNS (port 53)")
    return why


def check_egress(objects: list[dict]) -> list[Violation]:
    out = []
    for where, ns, labels, ray in _pods(objects):
        policies = _policies(objects, ns, labels, "Egress")
        if not policies:
            out.append(("egress", f"{where}: no NetworkPolicy restricts its egress"))
        is_head = ray and labels.get("app.kubernetes.io/component") == HEAD_COMPONENT
        for p in policies:
            out += [("egress", f"{where}: {why}") for why in _egress_problems(p, is_head)]
    return out


def network_violations(objects: list[dict]) -> list[Violation]:
    return check_ray_network(objects) + check_egress(objects)
