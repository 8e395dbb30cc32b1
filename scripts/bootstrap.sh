#!/usr/bin/env bash
# Create .venv and install the project with its test extras. Prefers uv (seconds); falls back to pip (minutes).
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

uv_cmd() {
  if command -v uv >/dev/null 2>&1; then echo uv; return 0; fi
  if "$PYTHON" -m uv --version >/dev/null 2>&1; then echo "$PYTHON -m uv"; return 0; fi
  return 1
}

if ! UV="$(uv_cmd)"; then
  echo "bootstrap: uv not found; installing it with pip" >&2
  "$PYTHON" -m pip install --quiet uv >&2 || true
fi

if UV="$(uv_cmd)"; then
  [ -x "$VENV/bin/python" ] || $UV venv --quiet --python "$PYTHON" "$VENV"
  $UV pip install --quiet --python "$VENV/bin/python" -e '.[test]'
else
  echo "bootstrap: uv unavailable; falling back to pip (slow)" >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet -e '.[test]'
fi
