#!/usr/bin/env bash
# Lint and format check (ruff; settings in dart_ros/pyproject.toml). "--fix" repairs what it can.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUFF=${RUFF:-$ROOT/.venv/bin/ruff}
cd "$ROOT"
if [ "${1:-}" = "--fix" ]; then
  "$RUFF" check --fix . && "$RUFF" format .
else
  "$RUFF" check . && "$RUFF" format --check .
fi
