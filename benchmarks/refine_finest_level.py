"""How precise is the intensity refinement with a finer last level or finer CT voxels?

For each of ``rayemb evaluate``'s cases (``benchmark_cases``: same CT, poses, seed) the refinement runs from the
intensity-only baseline's near-true start with the default schedule (32-64-96, 3-mm voxels) and with the variants
below, and prints the mTRE and seconds of each, then the medians (docs/pipeline.md, "Finest level"):

    .venv/bin/python benchmarks/refine_finest_level.py --ct .cache/extra_ct/lung1_image.nrrd --n 20
    .venv/bin/python benchmarks/refine_finest_level.py --ct .cache/extra_ct/lung2_image.nrrd --n 10 --variants default L128 L128vox2
    .venv/bin/python benchmarks/refine_finest_level.py --n 10 --variants default L128 L128vox2      # the sample pelvis

Is the similarity's optimum the truth's? (start there; ``spv2``: 2 ray samples per voxel):

    .venv/bin/python benchmarks/refine_finest_level.py --n 10 --variants default spv2 L128 L128spv2 --from-truth
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from benchmark_cases import add_case_args, case_setup

from RayEmbRegistrationLib.evaluate import pose_errors, simulated_cases  # noqa: E402
from RayEmbRegistrationLib.registration.refine import Refiner  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_case_args(p, poses="clinical")
    p.add_argument("--variants", nargs="+", default=None,
                   help="default L128 vox2 L128vox2 spv2 L128spv2 (default: all)")
    p.add_argument("--from-truth", action="store_true",
                   help="start at the true pose instead of the baseline's perturbed start (the similarity's own bias)")
    a = p.parse_args()
    ct, intr, registrar, refiner, sim, eval_pts = case_setup(a)
    base = registrar.options.refine
    finer = base.with_levels([32, 64, 128], None)
    variants = {"default": base, "L128": finer, "vox2": dataclasses.replace(base, voxel_mm=2.0),
                "L128vox2": dataclasses.replace(finer, voxel_mm=2.0),
                "spv2": dataclasses.replace(base, samples_per_voxel=2.0),
                "L128spv2": dataclasses.replace(finer, samples_per_voxel=2.0)}
    refiners = {k: Refiner(ct, v) for k, v in variants.items() if not a.variants or k in a.variants}
    mtre = {k: [] for k in refiners}
    secs = {k: [] for k in refiners}
    for case, T, xray, start in simulated_cases(ct, intr, a.n, a.seed, a.poses, sim, refiner):
        row = [f"case {case}"]
        for k, r in refiners.items():
            t = time.perf_counter()
            res = r.refine(xray.pixels, intr, T if a.from_truth else start)
            secs[k].append(time.perf_counter() - t)
            mtre[k].append(pose_errors(res.camera_from_world, T, eval_pts, intr)["mtre_mm"])
            row.append(f"{k} {mtre[k][-1]:.2f} mm ({secs[k][-1]:.1f} s)")
        print(" | ".join(row), flush=True)
    for k in refiners:
        print(f"{k}: median mTRE {np.median(mtre[k]):.2f} mm, p75 {np.percentile(mtre[k], 75):.2f} mm, "
              f"median {np.median(secs[k]):.2f} s per refinement")
    return 0


if __name__ == "__main__":
    sys.exit(main())
