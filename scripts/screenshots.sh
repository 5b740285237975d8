#!/usr/bin/env bash
# Re-renders the README's screenshots from a real slicer-core scene (Testing/Python/test_render_views.py writes
# them to Testing/Artifacts/) and copies them to docs/screenshots/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
export VTK_DEFAULT_OPENGL_WINDOW="${VTK_DEFAULT_OPENGL_WINDOW:-vtkEGLRenderWindow}"
python -m pytest -q Testing/Python/test_render_views.py
mkdir -p docs/screenshots
cp Testing/Artifacts/view3d_ct_frustum.png Testing/Artifacts/slice_xray_overlay.png \
   Testing/Artifacts/walkthrough_slice.png Testing/Artifacts/walkthrough_3d.png docs/screenshots/
echo "updated docs/screenshots/"
