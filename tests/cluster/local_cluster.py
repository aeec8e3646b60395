"""The pods of a rendered overlay, started as processes on 127.0.0.1 (the cluster rehearsal).

``Rehearsal(objects, root, pg_bin)`` stands up what ``kubectl apply -k`` would, one process (or
init step) per container, each from its manifest through ``translate.py``:

- PostgreSQL: ``initdb`` + ``postgres`` from Debian's package, with the user, password and database
  that the StatefulSet's env gives the official image (it runs as the ``postgres`` user when the
  tests run as root: ``initdb`` refuses root);
- MLflow: the Deployment's init containers (``create-databases``: the database roles of the
  Secrets; ``db-upgrade``), then its ``mlflow server`` container, with the exact arguments of
  the manifest (``--app-name basic-auth``: a login on every request but /health) and its
  ConfigMap files (the auth config) written under the rehearsal's root;
- Ray: the head's init containers, then ``ray start --head --block`` with the head group's
  ``rayStartParams``, and one ``ray start --address ... --block`` worker with the CPUs of the
  worker group at its maxReplicas; token authentication as the operator sets it up for
  ``authOptions`` (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN from the Secret), the container's env
  (the head's PGUSER/PGPASSWORD of the sweep's database role, MLflow's login for the driver and
  the trials: MLFLOW_TRACKING_USERNAME/PASSWORD);
- the RayJob submitter: KubeRay's K8sJobMode command, ``ray job status`` / ``ray job submit
  --no-wait --submission-id`` / ``ray job logs --follow``.

The Secrets are made up per run. The test's own MLflow client logs in as the manifests' MLflow
admin: ``start_mlflow`` sets MLFLOW_TRACKING_USERNAME/PASSWORD in this process (``close()``
restores them), and ``mlflow_api_code(login=False)`` is what a request without them gets. Every
process carries a pod marker (processes.py), so a pod can be killed whole and nothing is left
behind by ``close()``.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from . import processes as ps
from .translate import (
    Endpoints,
    config_map_files,
    container_env,
    local_argv,
    ray_start_params,
    sweep_argv,
)

SUBMIT_ATTEMPTS = 12  # the submitter Job's tries at a head that refuses the submission

NODE_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--metrics-export-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
)


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if len(hits) != 1:
        raise LookupError(f"{kind}/{name}: {len(hits)} objects in the rendered overlay")
    return hits[0]


class Rehearsal:
    def __init__(self, objects: list[dict], root: Path, pg_bin: Path) -> None:
        self.objects, self.root, self.pg_bin = objects, Path(root), Path(pg_bin)
        self.run = uuid.uuid4().hex[:12]
        self.secrets = {
            "acert-postgres": {"username": "postgres", "password": secrets.token_hex(16)},
            "acert-postgres-mlflow": {"username": "mlflow", "password": secrets.token_hex(16)},
            "acert-postgres-optuna": {"username": "optuna", "password": secrets.token_hex(16)},
            "acert-mlflow": {
                "username": "sweep",
                "password": secrets.token_hex(16),
                "flask-secret-key": secrets.token_hex(32),
            },
            "acert-ray-token": {"auth_token": secrets.token_hex(32)},
        }
        self._saved_env: dict[str, str | None] = {}
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # Short paths: Ray's Unix sockets live under its temp dir (107 bytes at most).
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="acr-", dir="/tmp"))
        self.pg_dir = Path(tempfile.mkdtemp(prefix="acpg-", dir="/tmp"))
        ports = ps.free_ports(4 + 2 * len(NODE_PORT_FLAGS))
        self.pg_port, self.mlflow_port, self.gcs_port, self.dashboard_port = ports[:4]
        self.node_ports = {"head": ports[4:10], "worker": ports[10:16]}
        self.endpoints = Endpoints(self.root)
        self.endpoints.add("postgres", 5432, self.pg_port)
        self.endpoints.add("mlflow", 5000, self.mlflow_port)
        self.generation: dict[str, int] = {}
        self.job = find(objects, "RayJob")
        self.cluster = self.job["spec"]["rayClusterSpec"]

    # --- bookkeeping ------------------------------------------------------------------------------
    def __enter__(self) -> Rehearsal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process of this run (all pods), then remove the temporary folders."""
        try:
            ps.kill_marked(f"{self.run}/")
        finally:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
            shutil.rmtree(self.pg_dir, ignore_errors=True)
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def new_pod(self, role: str) -> str:
        self.generation[role] = self.generation.get(role, 0) + 1
        return f"{role}-{self.generation[role]}"

    def env(self, pod: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The machine's environment without Ray / MLflow / libpq settings, the test's python
        first on the PATH (as the image's is), the pod marker, then ``extra``."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "PG"))}
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
        base["PYTHONUNBUFFERED"] = "1"
        base[ps.MARKER] = f"{self.run}/{pod}"
        return {**base, **(extra or {})}

    def run_init(self, container: dict, pod: str, timeout_s: float = 300) -> None:
        """Run one init container to completion (its argv and env from the manifest)."""
        env = self.endpoints.libpq(container_env(container, self.secrets))
        argv = local_argv(container, env, self.endpoints)
        log = self.logs / f"{pod}.{container['name']}.log"
        with open(log, "ab") as out:
            done = subprocess.run(
                argv, env=self.env(pod, env), stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s
            )
        if done.returncode != 0:
            raise RuntimeError(f"init container {container['name']} of {pod} failed:\n{ps.tail(log)}")

    # --- PostgreSQL -------------------------------------------------------------------------------
    def start_postgres(self) -> None:
        """initdb + postgres as the official image's entrypoint would, then its POSTGRES_DB."""

        sts = find(self.objects, "StatefulSet", "postgres")
        env = container_env(sts["spec"]["template"]["spec"]["containers"][0], self.secrets)
        data, pwfile = self.pg_dir / "data", self.pg_dir / "pwfile"
        pwfile.write_text(env["POSTGRES_PASSWORD"])
        owner = {}
        if os.geteuid() == 0:  # initdb refuses root: run the server as Debian's postgres user
            pw = pwd.getpwnam("postgres")
            for path in (self.pg_dir, pwfile):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            owner = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        pod = self.new_pod("postgres")
        initdb = [
            str(self.pg_bin / "initdb"),
            "-D",
            str(data),
            "-U",
            env["POSTGRES_USER"],
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
        with open(self.logs / f"{pod}.initdb.log", "ab") as out:
            subprocess.run(
                initdb, env=self.env(pod), stdout=out, stderr=out, check=True, timeout=300, **owner
            )
        server = [
            str(self.pg_bin / "postgres"),
            "-D",
            str(data),
            "-p",
            str(self.pg_port),
            "-k",
            str(self.pg_dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",  # an OS crash may lose data; a killed server (stop_postgres) may not
        ]
        self._pg_server = (server, owner, env)  # what restart_postgres starts again
        log = self.logs / f"{pod}.log"
        with open(log, "ab") as out:
            subprocess.Popen(
                server, env=self.env(pod), stdout=out, stderr=out, start_new_session=True, **owner
            )

        conn = ps.wait_until(
            "PostgreSQL accepts connections", lambda: self._pg_connect(env), 120, why=lambda: ps.tail(log)
        )
        conn.autocommit = True
        try:  # not `with conn`: psycopg2 opens a transaction there, which CREATE DATABASE refuses
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{env["POSTGRES_DB"]}"')
        finally:
            conn.close()

    def _pg_connect(self, env: dict[str, str]):
        """A connection to the server as its superuser, or None while it does not accept one."""
        import psycopg2

        try:
            return psycopg2.connect(
                host="127.0.0.1",
                port=self.pg_port,
                user=env["POSTGRES_USER"],
                password=env["POSTGRES_PASSWORD"],
                dbname="postgres",
                connect_timeout=5,
            )
        except psycopg2.OperationalError:
            return None

    # --- MLflow -----------------------------------------------------------------------------------
    def start_mlflow(self, init: bool = True) -> None:
        """The MLflow pod: its init steps, then the server. ``init=False`` is the server
        container restarted in its pod (after a crash), which Kubernetes does without the init
        steps."""
        spec = find(self.objects, "Deployment", "mlflow")["spec"]["template"]["spec"]
        pod = self.new_pod("mlflow")
        for init_container in (spec.get("initContainers") or []) if init else []:
            self.run_init(init_container, pod)
        c = spec["containers"][0]
        folder = self.root / "configmaps" / pod
        env = config_map_files(spec, c, container_env(c, self.secrets), self.objects, folder, self.endpoints)
        argv = local_argv(c, env, self.endpoints)
        argv[argv.index("--host") + 1] = "127.0.0.1"  # the rehearsal listens on loopback only
        argv[argv.index("--port") + 1] = str(self.mlflow_port)
        Path(argv[argv.index("--artifacts-destination") + 1]).mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{pod}.log"
        ps.start(argv, env=self.env(pod, env), log=log)
        ps.wait_until(
            "MLflow answers /health",
            lambda: self.http_ok(f"{self.tracking_uri}/health"),
            300,
            why=lambda: ps.tail(log),
        )
        # This process's MLflow client (the test's checks) logs in as the server's admin.
        for key, var in (
            ("USERNAME", "MLFLOW_AUTH_ADMIN_USERNAME"),
            ("PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"),
        ):
            self._saved_env.setdefault(f"MLFLOW_TRACKING_{key}", os.environ.get(f"MLFLOW_TRACKING_{key}"))
            os.environ[f"MLFLOW_TRACKING_{key}"] = env[var]

    def mlflow_api_code(self, login: bool = False) -> int | None:
        """The HTTP code of an MLflow API request (search experiments), without credentials
        (401 when the server asks for a login) or with the manifests' MLflow admin login."""
        url = f"{self.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
        if not login:
            return self.http_code(url)
        user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {basic}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    # --- Ray --------------------------------------------------------------------------------------
    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def ray_env(self, pod: str, container: dict, extra: dict[str, str] | None = None) -> dict[str, str]:
        """What KubeRay gives a Ray container for ``authOptions: {mode: token, secretName}``,
        plus the container's own env."""
        auth = self.cluster["authOptions"]
        token = self.secrets[auth["secretName"]]["auth_token"]
        own = container_env(container, self.secrets)
        return self.env(pod, {**own, "RAY_AUTH_MODE": auth["mode"], "RAY_AUTH_TOKEN": token, **(extra or {})})

    def _node_flags(self, role: str) -> list[str]:
        ports = self.node_ports[role]
        common = [
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            str(self.ray_tmp),
            "--disable-usage-stats",
        ]
        return common + [w for flag, port in zip(NODE_PORT_FLAGS, ports) for w in (flag, str(port))]

    def start_head(self) -> str:
        """The head pod: its init containers, then ``ray start --head``; returns the pod name."""
        head = self.cluster["headGroupSpec"]
        spec = head["template"]["spec"]
        pod = self.new_pod("head")
        for init in spec.get("initContainers") or []:
            self.run_init(init, pod)
        argv = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--port",
            str(self.gcs_port),
            "--dashboard-port",
            str(self.dashboard_port),
            *self._node_flags("head"),
            *ray_start_params(head.get("rayStartParams") or {}, self.endpoints),
        ]
        log = self.logs / f"{pod}.log"
        ps.start(argv, env=self.ray_env(pod, spec["containers"][0]), log=log)
        ps.wait_until(
            "the Ray dashboard answers",
            lambda: self.http_ok(f"{self.dashboard}/api/version", token=True),
            180,
            why=lambda: ps.tail(log),
        )
        return pod

    def worker_cpus(self) -> int:
        """The CPUs of the first worker group at its maxReplicas (KubeRay: num-cpus = CPU limit)."""
        from tests.k8s.manifest_policy import quantity

        group = self.cluster["workerGroupSpecs"][0]
        limit = group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
        return int(quantity(limit) * group["maxReplicas"])

    def start_worker(self, gcs_reconnect_timeout_s: int = 10) -> str:
        """One worker node for the whole group. ``gcs_reconnect_timeout_s`` (Ray's default: 60)
        is how long it survives a dead head before its raylet exits, as a worker pod then does."""
        group = self.cluster["workerGroupSpecs"][0]
        pod = self.new_pod("worker")
        argv = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--address",
            f"127.0.0.1:{self.gcs_port}",
            "--num-cpus",
            str(self.worker_cpus()),
            "--num-gpus",
            "0",
            *self._node_flags("worker"),
            *ray_start_params(group.get("rayStartParams") or {}, self.endpoints),
        ]
        extra = {"RAY_gcs_rpc_server_reconnect_timeout_s": str(gcs_reconnect_timeout_s)}
        ps.start(
            argv,
            env=self.ray_env(pod, group["template"]["spec"]["containers"][0], extra),
            log=self.logs / f"{pod}.log",
        )
        return pod

    def kill_pod(self, pod: str) -> int:
        """SIGKILL every process of ``pod`` (a lost node); returns how many there were."""
        return ps.kill_marked(f"{self.run}/{pod}")

    def pod_alive(self, pod: str) -> bool:
        return bool(ps.marked(f"{self.run}/{pod}"))

    # --- the RayJob -------------------------------------------------------------------------------
    def sweep_command(self) -> list[str]:
        return sweep_argv(self.job["spec"]["entrypoint"], {}, self.endpoints)

    def submit(self, submission_id: str) -> tuple[str, ps.LogWatch]:
        """The submitter Job's command (KubeRay, K8sJobMode): submit unless the head knows the
        job already, then follow its logs. Returns (pod, its log).

        A submission the head refuses (a restarted head whose dashboard agent has not registered
        yet: "No available agent to submit job") is tried again, up to ``SUBMIT_ATTEMPTS``
        times, as Kubernetes retries the failed submitter Job (its ``backoffLimit``)."""
        ray = shlex.quote(str(Path(sys.executable).parent / "ray"))
        address = shlex.quote(self.dashboard)
        entrypoint = shlex.join(self.sweep_command())
        submit = (
            f"{ray} job submit --address {address} --no-wait --submission-id {submission_id} -- {entrypoint}"
        )
        script = (
            f"if ! {ray} job status --address {address} {submission_id} >/dev/null 2>&1 ; then "
            f"for attempt in $(seq {SUBMIT_ATTEMPTS}) ; do {submit} && break ; sleep 5 ; done ; "
            f"fi ; {ray} job logs --address {address} --follow {submission_id}"
        )
        pod = self.new_pod("submitter")
        token = self.secrets[self.cluster["authOptions"]["secretName"]]["auth_token"]
        log = self.logs / f"{pod}.log"
        ps.start(
            ["bash", "-c", script],
            env=self.env(pod, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}),
            log=log,
        )
        return pod, ps.LogWatch(log)

    def job_status(self, submission_id: str) -> str | None:
        body = self.http_json(f"{self.dashboard}/api/jobs/{submission_id}")
        return None if body is None else body.get("status")

    # --- HTTP -------------------------------------------------------------------------------------
    def _request(self, url: str, token: bool) -> urllib.request.Request:
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {self.secrets['acert-ray-token']['auth_token']}"
        return urllib.request.Request(url, headers=headers)

    def http_ok(self, url: str, token: bool = False) -> bool:
        return self.http_code(url, token) == 200

    def http_code(self, url: str, token: bool = False) -> int | None:
        try:
            with urllib.request.urlopen(self._request(url, token), timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def http_json(self, url: str) -> dict | None:
        try:
            with urllib.request.urlopen(self._request(url, True), timeout=10) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    # --- faults (tests/cluster/test_rehearsal.py) -------------------------------------------------
    def stop_postgres(self) -> int:
        """The PostgreSQL pod lost: SIGKILL its server (no shutdown, no checkpoint; its backends,
        whose process titles overwrite the marker, exit on losing it); returns how many processes
        were killed."""
        return self.kill_pod(f"postgres-{self.generation['postgres']}")

    def restart_postgres(self) -> None:
        """The StatefulSet's replacement pod: the same server on the same data folder and port
        (it runs crash recovery first); returns once it accepts connections."""

        server, owner, env = self._pg_server
        pod = self.new_pod("postgres")
        log = self.logs / f"{pod}.log"
        with open(log, "ab") as out:
            subprocess.Popen(
                server, env=self.env(pod), stdout=out, stderr=out, start_new_session=True, **owner
            )

        conn = ps.wait_until(
            "PostgreSQL accepts connections again",
            lambda: self._pg_connect(env),
            120,
            why=lambda: ps.tail(log),
        )
        conn.close()


def wait_for_exit(check, timeout_s: float) -> float | None:
    """Seconds until ``check()`` is false (a process gone), or None if it is still true."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if not check():
            return time.monotonic() - t0
        time.sleep(0.5)
    return None
