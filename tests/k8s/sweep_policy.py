"""Rules for what runs inside the pods: the sweep command of each RayJob and the MLflow server.

- ``sweep-entrypoint``: the entrypoint is ``python -m orchestrator.sweep`` with flags accepted by
  the project's own parser (orchestrator.cli), joining the cluster (--address auto), under a fixed
  --name (what a restarted job resumes), logging to an MLflow Service of the manifests, with
  --storage and --data-dir on volume claims of every Ray pod and, with --no-download, a prefetch
  init container on the head for the same dataset; the Optuna studies in a PostgreSQL database
  of the manifests (--optuna-storage postgresql+psycopg2://<Service>:<port>/<db>: SQLite on a
  shared volume is unreliable with several writers), not MLflow's database (both keep an
  ``alembic_version`` table), created by an init step (``create-databases``), with no credentials
  in the URL: the head's Ray container gets PGUSER / PGPASSWORD from a Secret;
- ``trial-fit``: one trial (--cpus-per-trial, --gpus-per-trial) fits a worker group, a GPU group
  tolerates the nvidia.com/gpu taint, and --device agrees with the GPU request;
- ``mlflow-server``: ``mlflow server`` arguments parse with mlflow's own CLI; a PostgreSQL backend
  with no credentials in its URL (libpq's PGUSER / PGPASSWORD from secretKeyRefs), --host 0.0.0.0, proxied artifacts on a claim
  or a bucket, and --allowed-hosts naming its Service (else in-cluster requests get 403); an init
  container runs ``mlflow db upgrade`` on the same database first (the server refuses an old
  schema), and a startupProbe covers a slow start.

Database URLs name their driver, ``postgresql+psycopg2://``: SQLAlchemy 2.1 reads a bare
``postgresql://`` as psycopg 3, which the image does not install (it has psycopg2-binary).
"""

from __future__ import annotations

import io
import shlex
from contextlib import redirect_stderr
from urllib.parse import urlsplit

from .manifest_policy import Violation, name_of, pod_templates, quantity_or_none
from .ray_policy import claim_mounts, is_mounted, namespace_of, ray_container, ray_groups

SWEEP_PREFIX = ["python", "-m", "orchestrator.sweep"]
DB_SCHEME = "postgresql+psycopg2"  # the driver k8s/Dockerfile installs (psycopg2-binary)


def sweep_argv(entrypoint: str) -> list[str] | None:
    """The flags of a ``python -m orchestrator.sweep ...`` entrypoint (None for another command)."""
    words = shlex.split(entrypoint or "")
    return words[len(SWEEP_PREFIX) :] if words[: len(SWEEP_PREFIX)] == SWEEP_PREFIX else None


def parse_entrypoint(entrypoint: str):
    """(argparse namespace, error): the entrypoint parsed by orchestrator.cli's own parser, then
    validated by ``parse_sweep_args`` unless it resumes by name. Bad input either exits 2 with
    a line on stderr, or raises ``SweepInputError`` (a ValueError) with the line as message:
    both are accepted, so the check does not depend on which the parser does."""
    from orchestrator.cli import build_parser, parse_sweep_args  # the project under test

    argv = sweep_argv(entrypoint)
    if argv is None:
        return None, f"entrypoint does not start with {' '.join(SWEEP_PREFIX)!r}"
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            ns = build_parser().parse_args(argv)
            if not ns.resume:  # --resume reads the saved sweep from storage: not available offline
                parse_sweep_args(argv)
    except (SystemExit, ValueError) as e:
        message = str(e) if isinstance(e, ValueError) else err.getvalue().strip()
        return None, f"rejected by orchestrator.cli: {message or type(e).__name__}"
    return ns, None


def downloads(ns) -> bool:
    """Whether the sweep may download its data set: ``--no-download`` sets ``no_download`` in a
    hand-written parser and ``download = False`` in one generated from SweepConfig's fields."""
    return bool(ns.download) if hasattr(ns, "download") else not ns.no_download


def _job_cluster(job: dict, objects: list[dict]) -> dict | None:
    spec = job.get("spec") or {}
    if spec.get("rayClusterSpec"):
        return spec["rayClusterSpec"]
    wanted = (spec.get("clusterSelector") or {}).get("ray.io/cluster")
    return next(
        (
            o.get("spec")
            for o in objects
            if o.get("kind") == "RayCluster"
            and o["metadata"]["name"] == wanted
            and namespace_of(o) == namespace_of(job)
        ),
        None,
    )


def _service_port_ok(url: str, objects: list[dict], ns: str | None) -> bool:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return _is_service(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), objects, ns)


def _is_service(hostname: str, port: int, objects: list[dict], ns: str | None) -> bool:
    host = hostname.split(".")
    if len(host) > 1 and host[1] != ns:
        return False
    return any(
        o.get("kind") == "Service"
        and o["metadata"]["name"] == host[0]
        and namespace_of(o) == ns
        and port in [p.get("port") for p in o["spec"].get("ports") or []]
        for o in objects
    )


def check_sweep_entrypoint(objects: list[dict]) -> list[Violation]:
    out = []
    for job in (o for o in objects if o.get("kind") == "RayJob"):
        where = name_of(job)
        ns, error = parse_entrypoint((job.get("spec") or {}).get("entrypoint", ""))
        if error:
            out.append(("sweep-entrypoint", f"{where}: {error}"))
            continue
        problems = []
        if ns.address != "auto":
            problems.append(f"--address {ns.address!r}: use 'auto' to join the job's Ray cluster")
        if not (ns.name or ns.resume):
            problems.append("--name is required: a restarted job resumes the sweep by name")
        elif not (ns.resume or ns.resume_if_exists):
            problems.append("--resume-if-exists is required: a restarted job must continue its sweep")
        if not _service_port_ok(ns.tracking_uri or "", objects, namespace_of(job)):
            problems.append(
                f"--tracking-uri {ns.tracking_uri!r} is not http://<Service>:<port> of these manifests"
            )
        cluster = _job_cluster(job, objects)
        if cluster is not None and ns.resume:  # dataset, devices...: from the saved sweep.json
            problems += _storage_problems(ns, cluster)
        elif cluster is not None:  # a missing cluster is a rayjob-lifecycle problem
            problems += _storage_problems(ns, cluster) + _data_problems(ns, cluster)
            problems += _optuna_problems(ns, cluster, objects, namespace_of(job))
            out += [("trial-fit", f"{where}: {p}") for p in _fit_problems(ns, cluster)]
        out += [("sweep-entrypoint", f"{where}: {p}") for p in problems]
    return out


def _storage_problems(ns, cluster: dict) -> list[str]:
    """--storage on a writable claim of every Ray pod; the head waits for the --tracking-uri."""
    problems = [
        f"init container wait-for-mlflow waits for {c.get('args')}, not [{ns.tracking_uri}]"
        for c in ray_groups(cluster)[0][2].get("initContainers") or []
        if c.get("name") == "wait-for-mlflow" and c.get("args") != [ns.tracking_uri]
    ]
    if not ns.storage:
        return [*problems, "--storage is required (shared storage for the experiment state)"]
    if "://" in ns.storage:  # s3://... : shared by nature
        return problems
    return problems + [
        f"--storage {ns.storage} is not on a writable volume claim in group {name}"
        for name, _, spec in ray_groups(cluster)
        if not is_mounted(ns.storage, claim_mounts(spec, ray_container(spec)), writable=True)
    ]


def _data_problems(ns, cluster: dict) -> list[str]:
    problems = [
        f"--data-dir {ns.data_dir} is not on a volume claim in group {name}"
        for name, _, spec in ray_groups(cluster)
        if not is_mounted(ns.data_dir, claim_mounts(spec, ray_container(spec)), writable=(name == "head"))
    ]
    if not downloads(ns):
        head = ray_groups(cluster)[0][2]
        prefetch = [
            c
            for c in head.get("initContainers") or []
            if c.get("args") == [ns.dataset, ns.data_dir]
            and is_mounted(ns.data_dir, claim_mounts(head, c), writable=True)
        ]
        if not prefetch:
            problems.append(
                f"--no-download needs a head init container with args [{ns.dataset}, {ns.data_dir}] "
                "writing to the data volume (prefetch)"
            )
    return problems


def _argv(c: dict) -> list[str]:
    return [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]


def _mlflow_databases(objects: list[dict]) -> set[str]:
    """The databases of the --backend-store-uri of every ``mlflow server`` in the manifests."""
    out = set()
    for obj in objects:
        for _, template in pod_templates(obj):
            for c in (template.get("spec") or {}).get("containers") or []:
                args = mlflow_server_args(c) or []
                for flag, value in zip(args, args[1:]):
                    if flag == "--backend-store-uri":
                        out.add(urlsplit(value).path.lstrip("/"))
    return out


def created_databases(objects: list[dict]) -> set[str]:
    """The databases that the ``create-databases`` init steps create: their args after the first,
    ``DATABASE=PREFIX`` (the owner role's variables) or a bare ``DATABASE``."""
    return {
        str(a).partition("=")[0]
        for obj in objects
        for _, template in pod_templates(obj)
        for c in (template.get("spec") or {}).get("initContainers") or []
        if c.get("name") == "create-databases"
        for a in (c.get("args") or [])[1:]
    }


def _optuna_problems(ns, cluster: dict, objects: list[dict], namespace: str | None) -> list[str]:
    url = getattr(ns, "optuna_storage", "") or ""
    if not url:
        return ["--optuna-storage is required: its default, SQLite in the shared sweep folder, is unreliable "
                "with several writers; use postgresql+psycopg2://postgres:5432/optuna"]  # fmt: skip
    parts = urlsplit(url)
    if parts.scheme != DB_SCHEME:
        return [
            f"--optuna-storage {url!r}: use {DB_SCHEME}://<Service>:<port>/<database> (the image's driver)"
        ]
    problems = []
    if not parts.hostname or not _is_service(parts.hostname, parts.port or 5432, objects, namespace):
        problems.append(f"--optuna-storage {url!r}: the host is no Service (and port) of these manifests")
    if parts.username or parts.password:
        problems.append(
            f"--optuna-storage {url!r}: no credentials in the URL; the head's PGUSER/PGPASSWORD give them"
        )
    database = parts.path.lstrip("/")
    if database in _mlflow_databases(objects):
        problems.append(
            f"--optuna-storage database {database!r} is MLflow's (both keep an alembic_version table)"
        )
    elif database not in created_databases(objects):
        problems.append(
            f"--optuna-storage database {database!r} is not created by a create-databases init step"
        )
    env = {e.get("name"): e for e in ray_container(ray_groups(cluster)[0][2]).get("env") or []}
    for var in ("PGUSER", "PGPASSWORD"):
        if "secretKeyRef" not in ((env.get(var) or {}).get("valueFrom") or {}):
            problems.append(
                f"the head's Ray container needs {var} from a Secret (secretKeyRef) for --optuna-storage"
            )
    return problems


def _fit_problems(ns, cluster: dict) -> list[str]:
    problems = []
    gpus, cpus = ns.gpus_per_trial, ns.cpus_per_trial
    if gpus > 0 and ns.device == "cpu":
        problems.append(f"--device cpu with --gpus-per-trial {gpus}")
    if gpus == 0 and ns.device == "cuda":
        problems.append("--device cuda with --gpus-per-trial 0")
    fits = []
    for name, _, spec in ray_groups(cluster)[1:]:
        limits = (ray_container(spec).get("resources") or {}).get("limits") or {}
        group_gpus = quantity_or_none(limits.get("nvidia.com/gpu", 0)) or 0.0
        if (quantity_or_none(limits.get("cpu", 0)) or 0.0) >= cpus and group_gpus >= gpus:
            fits.append((name, spec, group_gpus))
    if not fits:
        problems.append(f"no worker group fits one trial ({cpus} CPU, {gpus} GPU)")
    for name, spec, group_gpus in fits:
        tolerated = any(
            t.get("key") == "nvidia.com/gpu" or (t.get("operator") == "Exists" and not t.get("key"))
            for t in spec.get("tolerations") or []
        )
        if group_gpus > 0 and not tolerated:
            problems.append(f"GPU group {name} does not tolerate the nvidia.com/gpu taint")
    return problems


# --- MLflow ----------------------------------------------------------------------------------------
def mlflow_server_args(container: dict) -> list[str] | None:
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    for i in range(len(argv) - 1):
        if argv[i].endswith("mlflow") and argv[i + 1] == "server":
            return argv[i + 2 :]
    return None


def check_mlflow_server(objects: list[dict]) -> list[Violation]:
    from mlflow.cli import server  # late: importing mlflow takes seconds

    out = []
    for obj in objects:
        for where, template in pod_templates(obj):
            for c in (template.get("spec") or {}).get("containers") or []:
                args = mlflow_server_args(c)
                if args is not None:
                    out += _check_one_mlflow(server, where, args, c, template, obj, objects)
    return out


def _check_one_mlflow(
    server, where: str, args: list[str], c: dict, template: dict, obj: dict, objects: list[dict]
) -> list[Violation]:
    import click

    try:
        params = server.make_context("mlflow server", list(args)).params
    except click.ClickException as e:
        return [("mlflow-server", f"{where}: mlflow server rejects its arguments: {e.format_message()}")]
    return [("mlflow-server", f"{where}: {p}") for p in _mlflow_problems(params, c, template, obj, objects)]


def _mlflow_problems(params: dict, c: dict, template: dict, obj: dict, objects: list[dict]) -> list[str]:
    problems = []
    raw_uri = params.get("backend_store_uri") or ""
    uri = urlsplit(raw_uri)
    if not uri.scheme.startswith("postgresql"):
        problems.append(
            f"--backend-store-uri {uri.scheme or 'default'}: a shared server needs {DB_SCHEME}://"
        )
    elif uri.scheme != DB_SCHEME:
        problems.append(f"--backend-store-uri {uri.scheme}://: name the image's driver, {DB_SCHEME}://")
    if [raw_uri] not in _db_upgrades(template):
        problems.append("no init container runs `mlflow db upgrade` on its --backend-store-uri first")
    if not c.get("startupProbe"):
        problems.append("no startupProbe: a slow start would be restarted by the liveness probe")
    env = {e.get("name"): e for e in c.get("env") or []}
    if uri.username or uri.password:
        problems.append("--backend-store-uri holds credentials: give them as libpq's PGUSER / PGPASSWORD")
    for var in ("PGUSER", "PGPASSWORD"):
        if "secretKeyRef" not in ((env.get(var) or {}).get("valueFrom") or {}):
            problems.append(f"{var} must come from a Secret (secretKeyRef): the database login")
    if params.get("host") != "0.0.0.0":
        problems.append(f"--host {params.get('host')!r}: bind 0.0.0.0 to be reachable through the Service")
    if not params.get("serve_artifacts") or not params.get("artifacts_destination"):
        problems.append("artifacts must be proxied (--serve-artifacts with --artifacts-destination)")
    elif "://" not in params["artifacts_destination"] and not is_mounted(
        params["artifacts_destination"], claim_mounts(template.get("spec") or {}, c), writable=True
    ):
        problems.append(f"--artifacts-destination {params['artifacts_destination']} is not on a volume claim")
    allowed = set((params.get("allowed_hosts") or "").split(","))
    labels = (template.get("metadata") or {}).get("labels") or {}
    for svc in objects:
        sel = (svc.get("spec") or {}).get("selector") or {}
        if (
            svc.get("kind") == "Service"
            and namespace_of(svc) == namespace_of(obj)
            and sel
            and sel.items() <= labels.items()
        ):
            for host in (
                svc["metadata"]["name"],
                f"{svc['metadata']['name']}.{namespace_of(obj)}.svc.cluster.local",
            ):
                if f"{host}:*" not in allowed:
                    problems.append(f"--allowed-hosts lacks {host}:* (requests to it would get 403)")
    return problems


def _db_upgrades(template: dict) -> list[list[str]]:
    """The arguments after ``mlflow db upgrade`` of every init container that runs it."""
    out = []
    for c in (template.get("spec") or {}).get("initContainers") or []:
        argv = _argv(c)
        for i in range(len(argv) - 2):
            if argv[i].endswith("mlflow") and argv[i + 1 : i + 3] == ["db", "upgrade"]:
                out.append(argv[i + 3 :])
    return out


def sweep_violations(objects: list[dict]) -> list[Violation]:
    return check_sweep_entrypoint(objects) + check_mlflow_server(objects)
