#!/usr/bin/env bash
# The README's test command: sets up .venv on first use, then runs the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k camera).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
export VTK_DEFAULT_OPENGL_WINDOW="${VTK_DEFAULT_OPENGL_WINDOW:-vtkEGLRenderWindow}"
exec python -m pytest "$@"
