#!/usr/bin/env bash
# Set up (app, test tools, development models) and run the whole test suite.
# Under CI=true a missing development model fails the real-model tests
# instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev --dev-models
exec .venv/bin/python -m pytest -q "$@"
