#!/usr/bin/env bash
# The project's one test command: lint, format check, types, then the whole test suite.
# Run it from anywhere: `bash scripts/check.sh` (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

# The terminal tests drive a real terminal (tmux), a Debian package, not a Python one.
if ! command -v tmux >/dev/null 2>&1; then
    echo "== installing tmux (the terminal tests drive a real terminal)"
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq tmux >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null && apt-get install -y -qq tmux >/dev/null; }
    else
        echo "error: tmux is missing: install it (apt-get install tmux, brew install tmux)" >&2
        exit 1
    fi
fi

echo "== ruff lint"
python -m ruff check .
echo "== ruff format --check"
python -m ruff format --check .
echo "== mypy"
python -m mypy
# Nothing may be skipped: a skip would be a check that silently did not run (conftest.py).
export RESULTSTORE_TESTS_SKIP_NOTHING=1
echo "== pytest, parallel workers"
python -m pytest -n 3 -m "not serial" "$@"
echo "== pytest, the tests that measure elapsed time, alone"
# Exit 5 is "no test selected" (extra arguments such as -k may select none of these).
python -m pytest -m serial "$@" || [ $? -eq 5 ]
