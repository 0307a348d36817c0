#!/usr/bin/env bash
# Create .venv (Python 3.10-3.12) and install the project with its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
command -v java >/dev/null || { echo "Java 17 is required for Spark (java not on PATH)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
scripts/fetch_jars.sh
