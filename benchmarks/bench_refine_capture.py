"""Capture range of the intensity refinement: how far from the truth may the start pose be?

Simulated X-rays (``simulate.simulate_xray``: DeepFluoro-like 256², noise, random bone multiplier) of a CT at
random RAYEMB_SAMPLER poses; each refinement schedule starts from the same perturbed pose — rotations
N(0, ROT_STD rad) about the bone centre and translations N(0, (T_u, T_v, T_depth) mm) in the camera frame, the
size of the PnP errors that noisy detections produce — and the mTRE (camera frame, 500 bone points) after
refinement is compared. Schedules, side by side:

  * ``two-level``: 64² (40 it., 3 mm) → 96² (20 it., 1 mm) — without the coarse level (baseline of the ratio);
  * ``default``: ``options.RefineOptions()`` (``RefineOptions.schedule()``) = 32² (60 it., 8 mm) → 64² (40 it., 3 mm) → 96² (20 it., 1 mm);
  * ``long``: 32² (80, 8 mm) → 64² (50, 3 mm) → 128² (25, 1 mm);
  * ``default+depth``: the default schedule through ``Refiner.refine_with_depth_search`` (what ``register`` does
    with a PnP pose: a depth search along the viewing ray, then refinement from both starts).

Usage:
    .venv/bin/python benchmarks/bench_refine_capture.py [--ct CT] [--n 12] [--rot-std 0.15] [--trans-std 20 20 100]
Prints one line per case and a Markdown table (success = mTRE ≤ 10 mm, median mTRE, median seconds, and the
success ratio to the ``two-level`` schedule).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics  # noqa: E402
from RayEmbRegistrationLib.geometry.carm import RAYEMB_SAMPLER  # noqa: E402
from RayEmbRegistrationLib.evaluate import pose_errors  # noqa: E402
from RayEmbRegistrationLib.options import RefineOptions  # noqa: E402
from RayEmbRegistrationLib.registration.plausibility import overlap_problem  # noqa: E402
from RayEmbRegistrationLib.registration.refine import Refiner, perturbation_numpy  # noqa: E402
from RayEmbRegistrationLib.rendering.simulate import simulate_xray  # noqa: E402
from RayEmbRegistrationLib.rendering.render import DRRRenderer  # noqa: E402
from RayEmbRegistrationLib.resources import SAMPLE_CT  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402


def schedules() -> dict[str, RefineOptions]:
    return {
        "two-level": RefineOptions(levels=(64, 96), iterations=(40, 20), lr_mm=(3.0, 1.0)),
        "default": RefineOptions(),
        "long": RefineOptions(levels=(32, 64, 128), iterations=(80, 50, 25), lr_mm=(8.0, 3.0, 1.0)),
        "default+depth": RefineOptions(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", default=str(SAMPLE_CT))
    ap.add_argument("--n", type=int, default=12, help="simulated X-rays")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rot-std", type=float, default=0.15, help="rotation perturbation std (rad)")
    ap.add_argument("--trans-std", type=float, nargs=3, default=[20.0, 20.0, 100.0], help="translation std (mm): u, v, depth")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ct = load_ct(a.ct)
    intr = Intrinsics.deepfluoro(a.size)
    rng = np.random.default_rng(a.seed)
    sim = DRRRenderer(ct, intr)
    pts = ct.sample_bone_points(500, np.random.default_rng(12345))
    refiners = {k: Refiner(ct, o) for k, o in schedules().items()}
    ref0 = next(iter(refiners.values()))
    mtre = {k: [] for k in refiners}
    secs = {k: [] for k in refiners}
    starts = []
    for case in range(a.n):
        while True:
            T = RAYEMB_SAMPLER.sample(1, ct.center_ras, rng)[0]
            if overlap_problem(ct, Camera(intr, T)) is None:
                break
        x = simulate_xray(ct, intr, T, rng, renderer=sim)
        p = np.r_[rng.normal(0, a.rot_std * ref0.radius_mm, 3), rng.normal(0, a.trans_std)]
        start = perturbation_numpy(p, T, ref0.centre_ras, ref0.radius_mm)
        e0 = pose_errors(start, T, pts, intr)
        starts.append(e0["mtre_mm"])
        line = f"case {case}: start mTRE {e0['mtre_mm']:.0f} mm, rotation {e0['rot_deg']:.1f}°"
        for k, r in refiners.items():
            t = time.perf_counter()
            if k == "default+depth":
                res = r.refine_with_depth_search(x, intr, start)[0]
            else:
                res = r.refine(x, intr, start)
            secs[k].append(time.perf_counter() - t)
            mtre[k].append(pose_errors(res.camera_from_world, T, pts, intr)["mtre_mm"])
            line += f" | {k}: {mtre[k][-1]:.1f} mm ({secs[k][-1]:.1f} s)"
        print(line, flush=True)
    base = np.mean(np.array(mtre["two-level"]) <= 10)
    print(f"\n{a.n} simulated {a.size}² X-rays of {Path(a.ct).name}; start: rotations N(0, {a.rot_std} rad), "
          f"translations N(0, {tuple(a.trans_std)} mm); median start mTRE {np.median(starts):.0f} mm; "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| schedule | success (mTRE ≤ 10 mm) | median mTRE mm | median s | success ratio to two-level |")
    print("|---|---|---|---|---|")
    for k in refiners:
        m = np.array(mtre[k])
        s = np.mean(m <= 10)
        ratio = f"{s / base:.2f}×" if base > 0 else "—"
        print(f"| {k} | {100 * s:.0f} % ({int((m <= 10).sum())}/{len(m)}) | {np.median(m):.2f} | {np.median(secs[k]):.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
