#!/usr/bin/env bash
# Creates or updates the project's virtual environment (.venv) with pinned versions, then activates it.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run repeatedly (it re-installs only when
# Resources/requirements.txt, requirements/*.txt or pyproject.toml changed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RAYEMB_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.rayemb-stamp"
REQ="$ROOT/Resources/requirements.txt"  # the one list of runtime dependencies (see its header)
want="$(cat "$REQ" "$ROOT/requirements/test.txt" "$ROOT/requirements/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[rayemb] creating virtual environment in $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
  echo "[rayemb] installing pinned dependencies (first use or requirements changed)" >&2
  PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
  $PIP install --upgrade pip setuptools wheel >&2
  # torch first, pinned, so that nothing later can pull another torch (or CUDA wheels on a CPU machine).
  $PIP install -c "$ROOT/requirements/constraints.txt" "torch==2.13.0" >&2
  # Lines after "# [no-deps]" in the list are installed without their declared dependencies.
  WITH="$(awk '/^# \[no-deps\]/{nd=1} /^[[:space:]]*(#|$)/{next} !nd{print}' "$REQ")"
  NODEPS="$(awk '/^# \[no-deps\]/{nd=1} /^[[:space:]]*(#|$)/{next} nd{print}' "$REQ")"
  # shellcheck disable=SC2086  # one requirement per word
  $PIP install -c "$ROOT/requirements/constraints.txt" $WITH -r "$ROOT/requirements/test.txt" >&2
  # shellcheck disable=SC2086
  $PIP install --no-deps -c "$ROOT/requirements/constraints.txt" $NODEPS >&2
  $PIP install --no-deps --no-build-isolation -e "$ROOT" >&2
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
