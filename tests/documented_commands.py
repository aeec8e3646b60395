"""The command lines the documentation shows, found in the files themselves, and their small variants.

Sources: the fenced shell blocks of README.md, docs/*.md and k8s/README.md (backslash continuations
joined, ``#`` comments and ``cmd && cmd`` chains split), the presets ``configs/*.json`` (each as
``python -m orchestrator.sweep --config configs/X.json``, as README shows it) and the RayJob
entrypoints of every kustomization under k8s/ (rendered by the test). A command is a ``python -m
MODULE`` line; those of this project's packages (``RUN_PREFIXES``) are run, the others are
skipped for the reasons in ``SKIPPED_MODULES``; a module in neither is an error, as is a
placeholder without a substitution (``PLACEHOLDERS``): a new documented command must be run.

``small(...)`` keeps every documented flag and replaces only sizes (``SIZES``) and what needs a
cluster (``CLUSTER``): GPUs, CUDA, the ``/mnt`` volumes, the in-cluster MLflow and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "k8s/README.md", "docs/*.md")
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3", ".venv/bin/python"}
PYTHON_M = re.compile(r"(^|[\s;&|])(\.venv/bin/)?python3? +-m ")
RUN_PREFIXES = ("orchestrator.", "trainers.", "bench.")
# What is not run here, and why. Lines of a shell block that are not ``python -m`` (pip, kubectl,
# helm, docker, kind, openssl, ``bash .ci/...``) set up a machine or a cluster, and ```python``
# blocks are library calls, not commands: none of them is collected.
SKIPPED_MODULES = {
    "venv": "creates the virtual environment these tests run in",
    "pytest": "the test suite itself",
    "tests.k8s.check_manifests": "tests/k8s/test_policy.py runs it on every overlay",
    "mlflow": "a server or UI for a browser; tests/test_sweep.py and tests/cluster start servers",
}
# bench.* lines without flags: tests/test_bench.py runs each of these scripts with --quick.
BENCH_COVERED = {"bench.step", "bench.radius", "bench.certify", "bench.sweep", "bench.search"}

PRESET_WHERE = (
    "--address",
    "auto",
    "--storage",
    "/mnt/shared/sweeps",
    "--data-dir",
    "/mnt/shared/data",
    "--shared-storage",
)
# Sizes: the value a tiny run uses, per flag (a flag the command lacks is added for sweeps).
EPOCHS, VAL_ACR, TEST_SAMPLES, SYNTHETIC, TRAIN_SUBSET, LIMIT = 1, 20, 20, 256, 4096, 10
# What a cluster gives and this machine does not: CPU trials, one core each.
CLUSTER = {"--gpus-per-trial": "0", "--cpus-per-trial": "1", "--device": "cpu"}


@dataclasses.dataclass(frozen=True)
class Command:
    source: str  # file:line, or the preset's / overlay's path
    module: str
    args: tuple[str, ...]  # after ``python -m MODULE``

    @property
    def id(self) -> str:
        return f"{self.source}:{self.module}"

    def flag(self, name: str) -> str | None:
        return flag_value(list(self.args), name)


def flag_value(argv: list[str], name: str) -> str | None:
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def set_flag(argv: list[str], name: str, value: str | None, add: bool = True) -> list[str]:
    """``argv`` with ``name``'s value replaced (a bare switch when value is None), or appended."""
    for i, tok in enumerate(argv):
        if tok == name:
            return argv if value is None else [*argv[: i + 1], value, *argv[i + 2 :]]
    return [*argv, name, *([] if value is None else [value])] if add else argv


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every fenced shell block, continuations joined."""
    out, fence, start, buf = [], None, 0, ""
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            continue
        if fence not in SHELL_FENCES:
            continue
        if not buf:
            start = n
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        out.append((start, buf.strip()))
        buf = ""
    return out


def commands_in(line: str) -> list[tuple[str, tuple[str, ...]]]:
    """(module, args) of each ``python -m MODULE ...`` in a shell line (``&&`` chains split)."""
    if not PYTHON_M.search(line):
        return []  # kubectl, helm, ...: not parsed (a multi-line psql script is not shell words)
    words = shlex.split(line, comments=True)
    found, part = [], []
    for w in [*words, "&&"]:
        if w not in ("&&", ";", "||"):
            part.append(w)
            continue
        if len(part) >= 3 and part[0] in PYTHONS and part[1] == "-m":
            found.append((part[2], tuple(part[3:])))
        part = []
    return found


def doc_commands(root: Path = ROOT) -> list[Command]:
    cmds = []
    for pattern in DOCS:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()
            for n, line in logical_lines(path.read_text()):
                cmds += [Command(f"{rel}:{n}", m, a) for m, a in commands_in(line)]
    return cmds


def preset_commands(root: Path = ROOT) -> list[Command]:
    """Each preset as README's "Paper-scale presets" runs it (on a cluster, its shared volumes)."""
    return [
        Command(
            p.relative_to(root).as_posix(),
            "orchestrator.sweep",
            ("--config", p.relative_to(root).as_posix(), *PRESET_WHERE),
        )
        for p in sorted((root / "configs").glob("*.json"))
    ]


def kustomizations(root: Path = ROOT) -> list[str]:
    """Every folder of k8s/ that kustomize renders on its own (components are parts, not wholes)."""
    return sorted(
        p.parent.relative_to(root).as_posix()
        for p in (root / "k8s").rglob("kustomization.yaml")
        if "kind: Component" not in p.read_text()
    )


def entrypoint_commands(folder: str, objects: list[dict]) -> list[Command]:
    out = []
    for obj in objects:
        if obj.get("kind") == "RayJob":
            for m, a in commands_in(obj["spec"]["entrypoint"]):
                out.append(Command(f"{folder}:RayJob/{obj['metadata']['name']}", m, a))
    return out


def is_run(cmd: Command) -> bool:
    if cmd.module in SKIPPED_MODULES:
        return False
    if cmd.module in BENCH_COVERED and not cmd.args:
        return False
    if not cmd.module.startswith(RUN_PREFIXES):
        raise AssertionError(
            f"{cmd.source}: no runner for `python -m {cmd.module}` (nor a reason to skip it)"
        )
    return True


# --- placeholders -------------------------------------------------------------------------
@dataclasses.dataclass
class Where:
    """This run's folders and URIs, which replace the documented placeholders and cluster paths."""

    cwd: Path  # the commands run here: ./data, ./sweeps and ./mlflow.db are the defaults
    storage: str
    tracking_uri: str
    optuna_storage: str | None
    sweep_for: Callable[[str], str]  # a documented sweep name (or NAME) -> a sweep run here


PLACEHOLDERS: dict[str, Callable[[Where, str], str]] = {
    "DATA": lambda w, t: str(w.cwd / "data"),
    "D": lambda w, t: str(w.cwd / "data"),
    "S": lambda w, t: "0",
    "OUT": lambda w, t: str(w.cwd / "train-out"),
    "CERT": lambda w, t: str(w.cwd / "cert"),
    "VERIFY": lambda w, t: str(w.cwd / "verify"),
    "RECHECK": lambda w, t: str(w.cwd / "recheck"),
    "URI": lambda w, t: w.tracking_uri,
    "NAME": lambda w, t: w.sweep_for(t),
    "<sweep-name>": lambda w, t: w.sweep_for(t),
    "/mnt/shared/sweeps": lambda w, t: w.storage,
    "/mnt/acert/sweeps": lambda w, t: w.storage,
    "/mnt/shared/data": lambda w, t: str(w.cwd / "data"),
    "/mnt/acert/data": lambda w, t: str(w.cwd / "data"),
    "http://mlflow:5000": lambda w, t: w.tracking_uri,
}
GENERATED_NAME = re.compile(r"^[a-z0-9-]+-\d{8}-\d{6}$")  # an example of a generated --name
OPTUNA_URL = re.compile(r"^postgresql(\+\w+)?://")


def looks_like_placeholder(tok: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z_]*|<[^>]+>|/mnt/\S*|https?://(?!127\.0\.0\.1|localhost)\S+", tok))


def substitute(tok: str, where: Where) -> str:
    head, sep, tail = tok.partition("/")
    if tok in PLACEHOLDERS:
        return PLACEHOLDERS[tok](where, tok)
    if sep and head in PLACEHOLDERS:  # OUT/model.pt
        return f"{PLACEHOLDERS[head](where, head)}/{tail}"
    if GENERATED_NAME.match(tok):
        return where.sweep_for(tok)
    if OPTUNA_URL.match(tok):
        if where.optuna_storage is None:
            raise AssertionError(f"no local stand-in for {tok}")
        return where.optuna_storage
    if looks_like_placeholder(tok):
        raise AssertionError(f"no substitution for the placeholder {tok!r}: add one to PLACEHOLDERS")
    return tok


def expand(args: tuple[str, ...]) -> list[str]:
    """Optional ``[...]`` groups included, ``a|b|c`` choices resolved (cpu where offered, else the
    first), ``...`` dropped."""
    out = []
    for tok in args:
        tok = tok.strip("[]")
        if not tok or tok == "...":
            continue
        if "|" in tok:
            choices = tok.split("|")
            tok = "cpu" if "cpu" in choices else choices[0]
        out.append(tok)
    return out


# NAME and <sweep-name> stand for a sweep that ran before: README's Fashion-MNIST sweep, which has
# winners for orchestrator.recheck to check.
NAME_PLACEHOLDERS = ("NAME", "<sweep-name>")
NAMED_SWEEP = "fmnist-readme"


def dataset_of(args: tuple[str, ...]) -> str | None:
    config = flag_value(list(args), "--config")
    if config is not None:
        return json.loads((ROOT / config).read_text()).get("dataset")
    return flag_value(list(args), "--dataset") or "synthetic"


def made_by(cmd: Command) -> set[str]:
    """What a sweep command makes that another command may name: its data set and its --name."""
    if cmd.module != "orchestrator.sweep":
        return set()
    return {f"dataset:{dataset_of(cmd.args)}", f"name:{cmd.flag('--name')}"}


def needs(cmd: Command) -> set[str]:
    """What ``cmd`` reads that another documented command makes: ``trainers.train`` (a
    checkpoint), or the sweeps named by ``made_by``'s keys."""
    if cmd.module in ("trainers.certify", "trainers.verify"):
        return {"trainers.train"}
    out = {f"dataset:{d}" for d in (cmd.flag("--datasets") or "").split(",") if d}
    for flag in ("--sweep", "--resume"):
        name = cmd.flag(flag)
        if name in NAME_PLACEHOLDERS:
            name = NAMED_SWEEP
        if name and GENERATED_NAME.match(name):
            out.add(f"dataset:{name.rsplit('-', 2)[0]}")
        elif name:
            out.add(f"name:{name}")
    return out


def targets_of(argv: list[str]) -> int:
    accs = flag_value(argv, "--accs")
    config = flag_value(argv, "--config")
    if accs is None and config is not None:
        return len(json.loads(Path(config).read_text()).get("accs", [])) or 1
    return len(accs.split(",")) if accs else 1


def small(cmd: Command, where: Where) -> list[str]:
    """The tiny variant of ``cmd``: every flag kept, sizes and cluster resources replaced."""
    argv = [substitute(t, where) for t in expand(cmd.args)]
    argv = [str(ROOT / t) if t.startswith("configs/") else t for t in argv]  # run from another folder
    if cmd.module == "orchestrator.sweep":
        if "--resume" in argv:  # only where things run may be given again
            return set_flag(argv, "--storage", where.storage)
        sizes = {
            "--trials": str(max(2, targets_of(argv))),  # at least one per target (SweepConfig)
            "--epochs": str(EPOCHS),
            "--grace-epochs": str(EPOCHS),
            "--val-acr-samples": str(VAL_ACR),
            "--test-samples": str(TEST_SAMPLES),
            "--storage": where.storage,
            **CLUSTER,
        }
        for name, value in sizes.items():
            argv = set_flag(argv, name, value)
        config = flag_value(argv, "--config")
        if config is not None and flag_value(argv, "--methods") is None:
            # A preset's first two methods (ACERT and IBP in each; README's frontier example reads
            # both): the preset, its --fixed settings and its targets are what is checked; the other
            # methods' searches are the same code path, and four would be most of this module's time.
            first = json.loads(Path(config).read_text()).get("methods", [])[:2]
            if first:
                argv = set_flag(argv, "--methods", ",".join(first))
        for name, value in (("--synthetic-size", SYNTHETIC), ("--train-subset", TRAIN_SUBSET)):
            given = flag_value(argv, name)
            if given is not None:
                argv = set_flag(argv, name, str(min(int(given), value)))
        if "--tracking-uri" not in argv:
            argv = set_flag(argv, "--tracking-uri", where.tracking_uri)
        return argv
    if cmd.module == "trainers.train":
        for name, value in (("--epochs", EPOCHS), ("--val-acr-samples", VAL_ACR), ("--test-samples", LIMIT)):
            argv = set_flag(argv, name, str(value))
        return argv
    if cmd.module in ("trainers.certify", "trainers.verify"):
        return set_flag(argv, "--limit", str(LIMIT))
    if cmd.module.startswith("bench."):
        return [*argv, "--quick", "--device", "cpu"]
    return argv
