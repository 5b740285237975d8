"""The verdict's footprint similarity at the *true* pose, by X-ray size (and photon count).

X-rays of a CT are simulated at 6 poses (``simulate.sample_visible_pose``, seed 0) at 256², 128² (with the default
photons and 4× them) and 512²; the refinement's DRR at the true pose is compared with each by
``verdict.footprint_similarity`` — the number the verdict's accept line (0.93, calibrated at 256²) reads
(docs/verdict.md; ``verdict.SMALL_XRAY_PX``):

    .venv/bin/python benchmarks/footprint_size.py                                          # sample CT
    .venv/bin/python benchmarks/footprint_size.py --ct .cache/extra_ct/lung2_image.nrrd --poses clinical
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RayEmbRegistration"))

from RayEmbRegistrationLib.geometry.camera import Intrinsics  # noqa: E402
from RayEmbRegistrationLib.registration.refine import Refiner  # noqa: E402
from RayEmbRegistrationLib.resources import SAMPLE_CT  # noqa: E402
from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose, simulate_xray  # noqa: E402
from RayEmbRegistrationLib.registration.verdict import footprint_similarity  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ct", default=str(SAMPLE_CT))
    p.add_argument("--poses", choices=("rayemb", "clinical"), default="rayemb")
    p.add_argument("--n", type=int, default=6)
    a = p.parse_args()
    ct = load_ct(a.ct)
    refiner = Refiner(ct)
    rng = np.random.default_rng(0)
    poses = [sample_visible_pose(ct, Intrinsics.deepfluoro(256), rng, poses=a.poses) for _ in range(a.n)]
    for size, photons in ((256, 3e4), (128, 3e4), (128, 1.2e5), (512, 3e4)):
        intr = Intrinsics.deepfluoro(size)
        vals = [footprint_similarity(simulate_xray(ct, intr, T, k, photons=photons), refiner.drr(intr, T))
                for k, T in enumerate(poses)]
        print(f"{size}², {photons:g} photons/pixel: footprint similarity at the true pose "
              + " ".join(f"{v:.3f}" for v in vals) + f" (min {min(vals):.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
