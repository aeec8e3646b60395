"""Who may log in where (issue #19, "A hardened cluster"): scoped credentials, MLflow's login,
no password in a process's arguments.

- ``database-roles``: PostgreSQL's superuser (the Secret of the StatefulSet's POSTGRES_USER) is
  given to no ``mlflow server`` / ``mlflow db upgrade`` container and to no Ray pod; MLflow's
  containers and the sweep's driver (the head's PGUSER) log in with different Secrets; every
  database they use is created by the ``create-databases`` step with its owner role
  (``DATABASE=PREFIX``: role and password from $PREFIX_USER / $PREFIX_PASSWORD, secretKeyRefs);
- ``minio-user``: no container but MinIO's own has MinIO's root keys (the Secret of
  MINIO_ROOT_USER / MINIO_ROOT_PASSWORD);
- ``mlflow-auth``: ``mlflow server`` runs ``--app-name basic-auth`` with MLFLOW_AUTH_CONFIG_PATH
  in a mounted ConfigMap of the manifests whose ini has ``default_permission`` and a
  ``database_uri`` on PostgreSQL without credentials, in a database of its own created by
  ``create-databases``; the admin login and MLFLOW_FLASK_SERVER_SECRET_KEY come from
  secretKeyRefs; the Ray container of the head and of every worker group has
  MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD from secretKeyRefs (driver and trials log in);
- ``secret-argv``: no command, argument or RayJob entrypoint expands a variable that holds a
  Secret's value (``$(VAR)`` in Kubernetes, ``$VAR`` / ``${VAR}`` in a shell): arguments are
  visible to every process of the node (``ps``, /proc/PID/cmdline).
"""

from __future__ import annotations

import configparser
import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from .manifest_policy import Violation, containers, pod_templates
from .ray_policy import namespace_of, ray_container, ray_groups
from .sweep_policy import DB_SCHEME, _job_cluster, created_databases, mlflow_server_args

BASIC_AUTH = "basic-auth"


def _secret_of(c: dict, var: str) -> str | None:
    for e in c.get("env") or []:
        if e.get("name") == var:
            return ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
    return None


def _all_containers(objects: list[dict]):
    return [(where, c, pod, obj) for obj in objects for where, c, pod in containers(obj)]


def _mlflow_db_containers(objects: list[dict]):
    """(where, container) of every `mlflow server` and `mlflow db upgrade` container."""
    out = []
    for where, c, _, _ in _all_containers(objects):
        argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
        if mlflow_server_args(c) is not None or any(
            a.endswith("mlflow") and argv[i + 1 : i + 3] == ["db", "upgrade"] for i, a in enumerate(argv)
        ):
            out.append((where, c))
    return out


def check_database_roles(objects: list[dict]) -> list[Violation]:
    out = []
    superuser = {
        _secret_of(c, "POSTGRES_USER")
        for _, c, _, _ in _all_containers(objects)
        if _secret_of(c, "POSTGRES_USER")
    }
    mlflow_secrets = set()
    for where, c in _mlflow_db_containers(objects):
        secret = _secret_of(c, "PGUSER")
        mlflow_secrets.add(secret)
        if secret is None or secret in superuser:
            out.append(("database-roles", f"{where}: PGUSER must be MLflow's own role, not {secret!r}"))
    for obj in objects:
        for where, cluster in _clusters(obj, objects):
            secret = _secret_of(ray_container(ray_groups(cluster)[0][2]), "PGUSER")
            if secret is not None and (secret in superuser or secret in mlflow_secrets):
                out.append(("database-roles", f"{where}: the driver logs in to PostgreSQL as {secret!r}"))
    for where, c, _, _ in _all_containers(objects):
        if c.get("name") != "create-databases":
            continue
        for spec in [str(a) for a in (c.get("args") or [])[1:]]:
            name, _, prefix = spec.partition("=")
            refs = [_secret_of(c, f"{prefix}_USER"), _secret_of(c, f"{prefix}_PASSWORD")]
            if not prefix or None in refs or set(refs) & superuser:
                out.append(
                    (
                        "database-roles",
                        f"{where}: database {name!r} needs an owner role DATABASE=PREFIX with "
                        "PREFIX_USER / PREFIX_PASSWORD from a Secret other than the superuser's",
                    )
                )
    return out


def _clusters(obj: dict, objects: list[dict]):
    if obj.get("kind") == "RayCluster":
        return [(f"RayCluster/{obj['metadata']['name']}", obj.get("spec") or {})]
    if obj.get("kind") == "RayJob" and (obj.get("spec") or {}).get("rayClusterSpec"):
        return [(f"RayJob/{obj['metadata']['name']}", _job_cluster(obj, objects))]
    return []


def check_minio_user(objects: list[dict]) -> list[Violation]:
    root = set()
    for _, c, _, _ in _all_containers(objects):
        root |= {_secret_of(c, v) for v in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")} - {None}
    out = []
    for where, c, _, _ in _all_containers(objects):
        if _secret_of(c, "MINIO_ROOT_USER") or _secret_of(c, "MINIO_ROOT_PASSWORD"):
            continue  # MinIO itself
        used = {_secret_of(c, e.get("name")) for e in c.get("env") or []} & root
        if used:
            out.append(("minio-user", f"{where}: has MinIO's root keys ({sorted(used)}); use its own user"))
    return out


def _config_map_file(path: str, pod_spec: dict, c: dict, objects: list[dict], ns) -> str | None:
    """The text of ``path`` when it lies in a ConfigMap volume that ``c`` mounts."""
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        mount = PurePosixPath(m.get("mountPath", "/"))
        cm = (volumes.get(m.get("name")) or {}).get("configMap")
        if cm and PurePosixPath(path).parent == mount:
            for o in objects:
                if o.get("kind") == "ConfigMap" and o["metadata"]["name"] == cm.get("name"):
                    if namespace_of(o) == ns:
                        return (o.get("data") or {}).get(PurePosixPath(path).name)
    return None


def _auth_problems(args: list[str], c: dict, pod_spec: dict, objects: list[dict], ns) -> list[str]:
    if BASIC_AUTH not in [v for f, v in zip(args, args[1:]) if f == "--app-name"]:
        return [f"mlflow server runs without --app-name {BASIC_AUTH}: anyone who reaches it can write"]
    env = {e.get("name"): e for e in c.get("env") or []}
    problems = [
        f"{var} must come from a Secret (secretKeyRef)"
        for var in (
            "MLFLOW_AUTH_ADMIN_USERNAME",
            "MLFLOW_AUTH_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY",
        )
        if "secretKeyRef" not in ((env.get(var) or {}).get("valueFrom") or {})
    ]
    path = (env.get("MLFLOW_AUTH_CONFIG_PATH") or {}).get("value")
    text = _config_map_file(path, pod_spec, c, objects, ns) if path else None
    if text is None:
        return [*problems, "MLFLOW_AUTH_CONFIG_PATH is not a file of a mounted ConfigMap of the manifests"]
    ini = configparser.ConfigParser()
    try:
        ini.read_string(text)
        section = ini["mlflow"]
        permission, uri = section["default_permission"], urlsplit(section["database_uri"])
    except (configparser.Error, KeyError) as e:
        return [*problems, f"the auth config does not parse or lacks a setting: {e}"]
    backend = [urlsplit(v).path for f, v in zip(args, args[1:]) if f == "--backend-store-uri"]
    if uri.scheme != DB_SCHEME or uri.username or uri.password:
        problems.append(f"auth database_uri must be {DB_SCHEME}:// without credentials (libpq's env)")
    elif uri.path in backend:
        problems.append("auth database_uri is MLflow's own database (both keep an alembic_version table)")
    elif uri.path.lstrip("/") not in created_databases(objects):
        problems.append(f"auth database {uri.path.lstrip('/')!r} is not created by create-databases")
    if permission not in ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS"):
        problems.append(f"default_permission {permission!r} is not an MLflow permission")
    return problems


def check_mlflow_auth(objects: list[dict]) -> list[Violation]:
    out = []
    servers = 0
    for obj in objects:
        for where, template in pod_templates(obj):
            spec = template.get("spec") or {}
            for c in spec.get("containers") or []:
                args = mlflow_server_args(c)
                if args is not None:
                    servers += 1
                    problems = _auth_problems(args, c, spec, objects, namespace_of(obj))
                    out += [("mlflow-auth", f"{where}: {p}") for p in problems]
    for obj in objects:
        for where, cluster in _clusters(obj, objects):
            for name, _, spec in ray_groups(cluster) if servers else []:
                c = ray_container(spec)
                for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                    if _secret_of(c, var) is None:
                        out.append(("mlflow-auth", f"{where} group {name}: {var} must come from a Secret"))
    return out


def check_secret_argv(objects: list[dict]) -> list[Violation]:
    out = []
    for where, c, _, _ in _all_containers(objects):
        secret_vars = [
            e.get("name") for e in c.get("env") or [] if "secretKeyRef" in (e.get("valueFrom") or {})
        ]
        argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
        for var in secret_vars:
            if any(re.search(rf"\$\({var}\)", a) for a in argv):
                out.append(
                    ("secret-argv", f"{where}: $({var}) puts a Secret's value in the process arguments")
                )
    for obj in objects:
        entrypoint = (
            str((obj.get("spec") or {}).get("entrypoint") or "") if obj.get("kind") == "RayJob" else ""
        )
        for ref in re.findall(r"\$\(?\{?([A-Za-z_][A-Za-z0-9_]*)", entrypoint):
            out.append(("secret-argv", f"RayJob/{obj['metadata']['name']}: the entrypoint expands ${ref}"))
    return out


def access_violations(objects: list[dict]) -> list[Violation]:
    return (
        check_database_roles(objects)
        + check_minio_user(objects)
        + check_mlflow_auth(objects)
        + check_secret_argv(objects)
    )
