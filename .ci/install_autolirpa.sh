#!/usr/bin/env bash
# Install auto_LiRPA for the cross-check tests (tests/test_autolirpa.py) without touching
# torch / numpy.
#
# PyPI has only auto_LiRPA 0.3, whose metadata pins torch<1.13 / torchvision<0.14: it is
# installed with --no-deps, then its run-time dependencies by hand (pytest/pylint/ninja from
# its metadata are not needed at run time). tests/lirpa/compat.py makes it import
# and run under torch 2.x / numpy 2 (its docstring lists the replacements).
#
# Usage: PIP=/path/to/venv/bin/pip PYTHON=/path/to/venv/bin/python .ci/install_autolirpa.sh
# (defaults: .venv/bin/pip and .venv/bin/python of the repository root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
PYTHON="${PYTHON:-$(dirname "$PIP")/python}"

# Pin what is installed now so that pip cannot change it.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$PYTHON" - >"$constraints" <<'EOF'
import importlib.metadata as md
for name in ("torch", "torchvision", "numpy"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
before="$(cat "$constraints")"

"$PIP" install --no-deps "auto_LiRPA==0.3"
"$PIP" install -c "$constraints" tqdm appdirs pyyaml packaging

after="$("$PYTHON" - <<'EOF'
import importlib.metadata as md
for name in ("torch", "torchvision", "numpy"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
)"
if [[ "$before" != "$after" ]]; then
    echo "install_autolirpa.sh: torch/numpy versions changed:" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    exit 1
fi

cd "$ROOT"
"$PYTHON" -c "
from tests.lirpa.backend import auto_lirpa_available
ok, why = auto_lirpa_available()
print('auto_LiRPA backend:', why)
raise SystemExit(0 if ok else 1)
"
