#!/usr/bin/env bash
# The README's main command: sets up .venv on first use, then registers a simulated X-ray of the bundled
# sample CT (rayemb demo). Extra arguments go to `rayemb demo` (see `rayemb demo --help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec rayemb demo --out out/demo "$@"   # a later --out in "$@" wins
