# Sourced by run_all.sh and run_tests.sh: use the active virtual environment, or create ./.venv and
# install the project (editable, with the test extra) into it. Reinstalls when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${REC_BENCH_NO_INSTALL:-0}" = 1 ]; then
    # an environment prepared by hand (e.g. a GPU machine without internet): use python3 and `harness` as found
    PY="$(command -v python3)"
    "$PY" -c "import harness, methods, datasets.catalog" \
        || { echo "error: REC_BENCH_NO_INSTALL=1 but the project does not import; put it on PYTHONPATH" >&2; exit 2; }
    command -v harness >/dev/null || { echo "error: no harness command on PATH (pip install -e . --no-deps)" >&2; exit 2; }
    export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
    return 0
fi
if [ -n "${VIRTUAL_ENV:-}" ]; then
    PY="$VIRTUAL_ENV/bin/python"
else
    if [ ! -x .venv/bin/python ]; then
        command -v python3 >/dev/null || { echo "error: python3 (>= 3.10) is needed" >&2; exit 2; }
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
            || { echo "error: Python >= 3.10 is needed, found $(python3 --version)" >&2; exit 2; }
        echo "creating .venv ..." >&2
        python3 -m venv .venv
    fi
    PY="$PWD/.venv/bin/python"
fi
stamp=".venv-installed-$(sha256sum pyproject.toml | cut -c1-12)"
if [ -n "${VIRTUAL_ENV:-}" ]; then stamp="$VIRTUAL_ENV/$stamp"; else stamp=".venv/$stamp"; fi
if [ ! -f "$stamp" ]; then
    echo "installing the project and its dependencies (a few minutes the first time) ..." >&2
    "$PY" -m pip install --quiet --disable-pip-version-check -e '.[test]' 2> >(grep -v "is ignored: it is neither" >&2)
    touch "$stamp"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # nothing is fetched from model hubs at run time
export PATH="$(dirname "$PY"):$PATH"
