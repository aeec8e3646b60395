"""Rules for the KubeRay objects and the image (the sweep command and MLflow: sweep_policy.py).

- ``ray-version``: every cluster's rayVersion and every Ray image tag carry the ray version that
  pyproject.toml pins (Ray refuses to connect processes of different versions);
- ``ray-auth``: token authentication on (authOptions.mode: token, the token from a named Secret),
  never switched off with RAY_AUTH_MODE;
- ``ray-head``: the head runs the driver only: num-cpus / num-gpus "0", no GPU, requests = limits;
- ``autoscaling``: in-tree autoscaler on, worker groups with 0 <= minReplicas <= maxReplicas,
  restartPolicy Never (or unset) under autoscaler v2 (an operator rule);
- ``rayjob-lifecycle``: a RayJob that creates its cluster shuts it down, has a TTL, a deadline and
  retries; one with a clusterSelector names a RayCluster of the manifests and sets none of those
  (KubeRay rejects backoffLimit and a TTL there); every RayJob has a preRunningDeadlineSeconds
  below its activeDeadlineSeconds (both count per attempt), so an attempt whose head never runs
  the job fails and is retried instead of waiting out the whole deadline;
- ``shared-storage``: a claim mounted by pods of several Ray groups is ReadWriteMany (unless the
  overlay is single-node);
- ``dockerfile``: FROM the official rayproject/ray GPU image of the pinned ray, pinned torch /
  torchvision, mlflow's ``auth`` extra, the packages and ``configs/`` copied, and a final
  non-root USER.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath

import yaml

from .manifest_policy import (
    Violation,
    containers,
    name_of,
    quantity_or_none,
    ray_cluster_specs,
    split_image,
)

DNS1035_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def pinned_versions(pyproject: Path) -> dict[str, str]:
    """{'ray': '2.60.0', 'torch': ..., ...}: the ``==`` pins of pyproject.toml's dependencies."""
    deps = tomllib.loads(Path(pyproject).read_text())["project"]["dependencies"]
    pins = (re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*", d) for d in deps)
    return {m.group(1).lower(): m.group(2) for m in pins if m}


def has_version(tag: str | None, version: str) -> bool:
    return bool(tag) and re.search(rf"(?<![0-9.]){re.escape(version)}(?![0-9.])", tag) is not None


def namespace_of(obj: dict) -> str | None:
    return (obj.get("metadata") or {}).get("namespace")


def ray_groups(cluster: dict) -> list[tuple[str, dict, dict]]:
    """(group name, group spec, pod spec) for the head ('head') and each worker group."""
    head = cluster.get("headGroupSpec") or {}
    out = [("head", head, (head.get("template") or {}).get("spec") or {})]
    for g in cluster.get("workerGroupSpecs") or []:
        out.append((str(g.get("groupName")), g, (g.get("template") or {}).get("spec") or {}))
    return out


def ray_container(pod_spec: dict) -> dict:
    return (pod_spec.get("containers") or [{}])[0]  # KubeRay: the Ray container comes first


def claim_mounts(pod_spec: dict, container: dict) -> list[tuple[str, str, bool]]:
    """(mountPath, claimName, readOnly) of the container's mounts backed by a PVC."""
    claims = {
        v.get("name"): (v.get("persistentVolumeClaim") or {}).get("claimName")
        for v in pod_spec.get("volumes") or []
    }
    return [
        (m["mountPath"], claims[m["name"]], bool(m.get("readOnly")))
        for m in container.get("volumeMounts") or []
        if claims.get(m.get("name"))
    ]


def is_mounted(path: str, mounts: list[tuple[str, str, bool]], writable: bool) -> bool:
    p = PurePosixPath(path)
    return any(
        p == PurePosixPath(m) or PurePosixPath(m) in p.parents for m, _, ro in mounts if not (writable and ro)
    )


# --- KubeRay objects -------------------------------------------------------------------------------
def check_ray_version(objects: list[dict], version: str) -> list[Violation]:
    out = []
    for obj in objects:
        for where, cluster in ray_cluster_specs(obj):
            if str(cluster.get("rayVersion")) != version:
                out.append(
                    (
                        "ray-version",
                        f"{where}: rayVersion {cluster.get('rayVersion')!r} != pinned ray {version}",
                    )
                )
        if str(obj.get("apiVersion", "")).startswith("ray.io/"):
            for where, c, _ in containers(obj):
                if "image" in c and not has_version(split_image(str(c["image"]))[1], version):
                    out.append(("ray-version", f"{where}: image {c['image']!r} does not carry ray {version}"))
    return out


def check_ray_auth(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, cluster in ray_cluster_specs(obj):
            auth = cluster.get("authOptions") or {}
            if auth.get("mode") != "token" or not auth.get("secretName"):
                out.append(("ray-auth", f"{where}: authOptions needs mode: token and a secretName"))
            if auth.get("enableK8sTokenAuth") and obj.get("kind") == "RayJob":
                out.append(("ray-auth", f"{where}: KubeRay does not support enableK8sTokenAuth in a RayJob"))
        if str(obj.get("apiVersion", "")).startswith("ray.io/"):
            for where, c, _ in containers(obj):
                for env in c.get("env") or []:
                    if env.get("name") == "RAY_AUTH_MODE" and env.get("value") != "token":
                        out.append(
                            ("ray-auth", f"{where}: RAY_AUTH_MODE={env.get('value')!r} turns token auth off")
                        )
    return out


def check_ray_head(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, cluster in ray_cluster_specs(obj):
            _, head, spec = ray_groups(cluster)[0]
            params = head.get("rayStartParams") or {}
            for key in ("num-cpus", "num-gpus"):
                if str(params.get(key)) != "0":
                    out.append(
                        ("ray-head", f'{where}: head rayStartParams {key} must be "0" (trials stay off it)')
                    )
            for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
                res = c.get("resources") or {}
                if any(k.endswith("/gpu") for part in res.values() for k in (part or {})):
                    out.append(("ray-head", f"{where}: head container {c.get('name')} asks for a GPU"))
            res = ray_container(spec).get("resources") or {}
            for kind in ("cpu", "memory"):
                req, lim = (res.get("requests") or {}).get(kind), (res.get("limits") or {}).get(kind)
                if req is None or lim is None or quantity_or_none(req) != quantity_or_none(lim):
                    out.append(("ray-head", f"{where}: head {kind} request {req} != limit {lim}"))
    return out


def check_autoscaling(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, cluster in ray_cluster_specs(obj):
            if cluster.get("enableInTreeAutoscaling") is not True:
                out.append(("autoscaling", f"{where}: enableInTreeAutoscaling is not true"))
            opts = cluster.get("autoscalerOptions") or {}
            groups = ray_groups(cluster)
            if len(groups) < 2:
                out.append(("autoscaling", f"{where}: no worker group"))
            for name, g, _ in groups[1:]:
                lo, hi, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas")
                if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1):
                    out.append(
                        (
                            "autoscaling",
                            f"{where}: group {name} needs 0 <= minReplicas <= maxReplicas, maxReplicas >= 1",
                        )
                    )
                elif n is not None and not lo <= n <= hi:
                    out.append(("autoscaling", f"{where}: group {name} replicas {n} outside [{lo}, {hi}]"))
            if opts.get("version", "v2") == "v2":
                for name, _, spec in groups:
                    if spec.get("restartPolicy") not in (None, "Never"):
                        out.append(
                            (
                                "autoscaling",
                                f"{where}: {name} restartPolicy must be Never or unset (autoscaler v2)",
                            )
                        )
    return out


def check_rayjob_lifecycle(objects: list[dict]) -> list[Violation]:
    out = []
    clusters = {(namespace_of(o), o["metadata"]["name"]) for o in objects if o.get("kind") == "RayCluster"}
    for obj in objects:
        if obj.get("kind") in ("RayJob", "RayCluster") and not DNS1035_RE.fullmatch(obj["metadata"]["name"]):
            out.append(("rayjob-lifecycle", f"{name_of(obj)}: the name must be a DNS-1035 label"))
        if obj.get("kind") != "RayJob":
            continue
        spec, where = obj.get("spec") or {}, name_of(obj)
        selector = spec.get("clusterSelector") or {}
        if bool(selector) == bool(spec.get("rayClusterSpec")):
            out.append(
                ("rayjob-lifecycle", f"{where}: set exactly one of rayClusterSpec and clusterSelector")
            )
        active = spec.get("activeDeadlineSeconds")
        if not (isinstance(active, int) and active > 0):
            out.append(("rayjob-lifecycle", f"{where}: activeDeadlineSeconds must be a positive integer"))
        pre = spec.get("preRunningDeadlineSeconds")
        if not (isinstance(pre, int) and 0 < pre < (active if isinstance(active, int) else pre + 1)):
            out.append(
                (
                    "rayjob-lifecycle",
                    f"{where}: preRunningDeadlineSeconds {pre!r} must be a positive integer below "
                    f"activeDeadlineSeconds (a head that never runs the job fails the attempt early)",
                )
            )
        if spec.get("runtimeEnvYAML") is not None and not isinstance(
            yaml.safe_load(spec["runtimeEnvYAML"]), dict
        ):
            out.append(("rayjob-lifecycle", f"{where}: runtimeEnvYAML is not a YAML mapping"))
        if selector:
            if (namespace_of(obj), selector.get("ray.io/cluster")) not in clusters:
                out.append(
                    ("rayjob-lifecycle", f"{where}: clusterSelector ray.io/cluster names no RayCluster here")
                )
            if (
                spec.get("backoffLimit")
                or spec.get("shutdownAfterJobFinishes")
                or spec.get("ttlSecondsAfterFinished")
            ):
                out.append(
                    (
                        "rayjob-lifecycle",
                        f"{where}: backoffLimit / shutdownAfterJobFinishes / "
                        "ttlSecondsAfterFinished are not allowed with a clusterSelector",
                    )
                )
        elif spec.get("rayClusterSpec"):
            if spec.get("shutdownAfterJobFinishes") is not True:
                out.append(
                    ("rayjob-lifecycle", f"{where}: shutdownAfterJobFinishes must be true (free the GPUs)")
                )
            if not (
                isinstance(spec.get("ttlSecondsAfterFinished"), int) and spec["ttlSecondsAfterFinished"] >= 0
            ):
                out.append(("rayjob-lifecycle", f"{where}: ttlSecondsAfterFinished must be set (>= 0)"))
            if not (isinstance(spec.get("backoffLimit"), int) and spec["backoffLimit"] >= 1):
                out.append(
                    ("rayjob-lifecycle", f"{where}: backoffLimit >= 1, so a failed attempt resumes the sweep")
                )
    return out


# --- storage and image --------------------------------------------------------------------------------
def check_shared_storage(objects: list[dict], single_node: bool = False) -> list[Violation]:
    if single_node:
        return []
    out = []
    modes = {
        (namespace_of(o), o["metadata"]["name"]): o["spec"].get("accessModes") or []
        for o in objects
        if o.get("kind") == "PersistentVolumeClaim"
    }
    for obj in objects:
        for where, cluster in ray_cluster_specs(obj):
            users: dict[str, set[str]] = {}
            for name, _, spec in ray_groups(cluster):
                for v in spec.get("volumes") or []:
                    claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
                    if claim:
                        users.setdefault(claim, set()).add(name)
            for claim, groups in sorted(users.items()):
                if len(groups) > 1 and "ReadWriteMany" not in modes.get((namespace_of(obj), claim), []):
                    out.append(
                        (
                            "shared-storage",
                            f"{where}: claim {claim} is used by {sorted(groups)} "
                            "on different nodes: it needs ReadWriteMany",
                        )
                    )
    return out


def dockerfile_copies(path: Path) -> set[str]:
    """The sources (repository paths, no trailing slash) that the Dockerfile's COPY lines take
    from the build context."""
    text = re.sub(r"\\\n", " ", Path(path).read_text())
    out = set()
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            sources = [w for w in words[1:] if not w.startswith("--")][:-1]
            out |= {w.rstrip("/").removeprefix("./") for w in sources}
    return out


# What the image must hold beyond the packages: the presets that README.md's commands name.
DOCKERFILE_COPIES = {"pyproject.toml", "trainers", "search_spaces", "orchestrator", "bench", "configs"}


def dockerfile_violations(path: Path, pins: dict[str, str]) -> list[Violation]:
    """FROM the official rayproject/ray GPU image of the pinned ray, pinned torch/torchvision,
    mlflow's auth extra (the server's --app-name basic-auth), the packages and configs/ copied,
    a non-root USER."""
    text = re.sub(r"\\\n", " ", Path(path).read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", "\n".join(lines), re.M))
    expand = lambda s: re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), s)  # noqa: E731
    froms = [expand(ln.split()[1]) for ln in lines if ln.upper().startswith("FROM ")]
    users = [expand(ln.split()[1]) for ln in lines if ln.upper().startswith("USER ")]
    out = []
    name, tag, _ = split_image(froms[-1]) if froms else ("", None, None)
    if (
        name not in ("rayproject/ray", "docker.io/rayproject/ray")
        or not has_version(tag, pins["ray"])
        or not re.search(r"-(gpu|cu\d+)", tag or "")
    ):
        out.append(
            ("dockerfile", f"FROM {froms[-1] if froms else None}: want rayproject/ray:{pins['ray']}-...-gpu")
        )
    for pkg in ("torch", "torchvision"):
        if not re.search(rf"(?<![\w-]){pkg}=={re.escape(pins.get(pkg, '?'))}(?![\w.])", text):
            out.append(("dockerfile", f"{pkg} is not installed pinned to {pkg}=={pins.get(pkg)}"))
    if not re.search(r"mlflow\[auth\]", "\n".join(lines)):
        out.append(
            ("dockerfile", "mlflow[auth] is not installed: `mlflow server --app-name basic-auth` needs it")
        )
    missing = DOCKERFILE_COPIES - dockerfile_copies(path)
    if missing:
        out.append(("dockerfile", f"not copied into the image: {sorted(missing)}"))
    if not users or users[-1].split(":")[0] in ("root", "0"):
        out.append(
            ("dockerfile", f"final USER {users[-1] if users else None!r}: run as the non-root ray user")
        )
    return out


def ray_violations(objects: list[dict], *, ray_version: str, single_node: bool = False) -> list[Violation]:
    return (
        check_ray_version(objects, ray_version)
        + check_ray_auth(objects)
        + check_ray_head(objects)
        + check_autoscaling(objects)
        + check_rayjob_lifecycle(objects)
        + check_shared_storage(objects, single_node)
    )
