#!/usr/bin/env bash
# Set up, then run the whole asset graph on the built-in demo sample (offline-safe).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/fruits run "$@"
