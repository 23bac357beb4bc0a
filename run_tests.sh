#!/usr/bin/env bash
# Sets itself up (see scripts/bootstrap.sh) and runs the test suite; extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"
exec "$PY" -m pytest "$@"
