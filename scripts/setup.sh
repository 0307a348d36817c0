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
# Local Spark JVMs start sooner from an archive of the classes they load (once per machine).
.venv/bin/fruits jvm-archive || echo "note: local Spark runs without a class archive" >&2

# The browser test drives a system Chromium through Playwright (never Playwright's own download).
have_chromium() {
  [ -n "${FRUITS_CHROMIUM:-}" ] && [ -x "$FRUITS_CHROMIUM" ] && return 0
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null
}
if ! have_chromium; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release 2>/dev/null; then
    echo "installing chromium (apt-get) for the browser test"
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } \
      || echo "note: apt-get could not install chromium" >&2
  fi
  have_chromium || echo "note: no Chromium found: the browser test (test_ui_browser.py) will be" \
    "skipped, and fails under CI=true. Install it (Debian/Ubuntu as root: apt-get install -y" \
    "chromium) or point FRUITS_CHROMIUM at a Chromium binary." >&2
fi
