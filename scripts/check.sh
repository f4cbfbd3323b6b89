#!/usr/bin/env bash
# The project's one test command: lint, format check, types, then the whole test suite.
# Run it from anywhere: `bash scripts/check.sh` (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== ruff lint"
python -m ruff check .
echo "== ruff format --check"
python -m ruff format --check .
echo "== mypy"
python -m mypy
echo "== pytest"
# One process: the deadline tests (tests/reliability/test_timeouts.py) measure
# elapsed time, and parallel workers on two cores made them miss by tens of ms.
python -m pytest "$@"
