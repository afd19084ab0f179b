#!/usr/bin/env bash
# Set up (app, test tools, development models) and run the whole test suite.
# Under CI=true a missing development model fails the real-model tests
# instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev --dev-models
# Style and types first: a failure here is one line, not a test run.
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
