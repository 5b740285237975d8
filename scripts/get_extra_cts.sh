#!/usr/bin/env bash
# Fetches two extra real chest CTs for validation of the general network: the test images lung1 / lung2 of the
# pyradiomics 3.1.0 source distribution (BSD-3-Clause package, fetched by name and version through pip's index
# settings: scripts/fetch_sdist.py; 512² × 48 / 61 slices, 0.57 / 0.63 mm in-plane, 5 mm slices; provenance of the images: Resources/Models/MODEL.md, "Extra CTs").
# No network has been trained on them: they are the project's clean held-out patients (leave-one-out).
# Written to .cache/extra_ct/ (git-ignored); the archive and both images are checked against pinned sha256.
# Used only by benchmarks (``--ct .cache/extra_ct/lung1_image.nrrd``); the tool itself never fetches anything.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.cache/extra_ct"
SDIST_SHA=24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4
declare -A IMG_SHA=(
  [lung1]=379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed
  [lung2]=aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651
)
ok=1
for n in lung1 lung2; do
  f="$DEST/${n}_image.nrrd"
  [ -f "$f" ] && [ "$(sha256sum "$f" | cut -d' ' -f1)" = "${IMG_SHA[$n]}" ] || ok=0
done
if [ "$ok" = 1 ]; then echo "[rayemb] extra CTs present in $DEST"; exit 0; fi
mkdir -p "$DEST"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "[rayemb] downloading pyradiomics 3.1.0 (source distribution, 34 MB) through pip" >&2
PY="$ROOT/.venv/bin/python"; [ -x "$PY" ] || PY="${PYTHON:-python3}"
sdist="$("$PY" "$ROOT/scripts/fetch_sdist.py" pyradiomics 3.1.0 "$tmp" | tail -n 1)"
echo "$SDIST_SHA  $sdist" | sha256sum -c --quiet -
tar -xzf "$sdist" -C "$tmp" pyradiomics-3.1.0/data/lung1_image.nrrd pyradiomics-3.1.0/data/lung2_image.nrrd \
  pyradiomics-3.1.0/LICENSE.txt
for n in lung1 lung2; do
  echo "${IMG_SHA[$n]}  $tmp/pyradiomics-3.1.0/data/${n}_image.nrrd" | sha256sum -c --quiet -
  mv "$tmp/pyradiomics-3.1.0/data/${n}_image.nrrd" "$DEST/"
done
mv "$tmp/pyradiomics-3.1.0/LICENSE.txt" "$DEST/pyradiomics-LICENSE.txt"
echo "[rayemb] extra CTs written to $DEST"
