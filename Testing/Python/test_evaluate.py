"""The benchmark (``evaluate.py``): pose errors of known offsets, summary statistics, the cases in every appearance."""

import math

import numpy as np
import pytest

from RayEmbRegistrationLib.geometry.camera import Intrinsics, rigid, rotation_matrix
from RayEmbRegistrationLib.evaluate import pose_errors, summarise


def test_pose_errors_of_known_offsets():
    intr = Intrinsics(1000.0, (0.5, 0.5), 200, 200)
    T = rigid(np.eye(3), [0.0, 0.0, 600.0])
    pts = np.random.default_rng(0).normal(0, 30, (50, 3))
    e = pose_errors(T, T, pts, intr)
    assert e["mtre_mm"] == 0 and e["mpd_mm"] == 0 and e["rot_deg"] == 0 and e["trans_mm"] == 0
    shifted = rigid(np.eye(3), [3.0, 4.0, 600.0])  # every point moves 5 mm in the camera frame
    e = pose_errors(shifted, T, pts, intr)
    assert math.isclose(e["mtre_mm"], 5.0) and math.isclose(e["trans_mm"], 5.0)
    rot = rigid(rotation_matrix(np.array([0.0, 0.0, np.deg2rad(10.0)])), [0.0, 0.0, 600.0])
    assert math.isclose(pose_errors(rot, T, pts, intr)["rot_deg"], 10.0, rel_tol=1e-9)


def test_summarise_counts_failures_and_errors():
    rows = [{"method": "m", "mtre_mm": v, "mpd_mm": v / 2, "total_s": 1.0, "error": err}
            for v, err in [(1.0, ""), (4.0, ""), (8.0, ""), (20.0, ""), (math.inf, "PnP failed")]]
    s = summarise(rows, "m")
    assert s["n"] == 5 and s["success_10mm_%"] == 60.0 and s["GFR@5mm_%"] == 60.0 and s["errors_%"] == 20.0
    assert s["mTRE_p50_mm"] == 8.0 and s["runtime_p50_s"] == 1.0


def test_simulated_cases_keep_their_poses_in_every_appearance(sample_ct):
    """``simulated_cases(appearance=…)``: the same poses and baseline starts in every family (the project's X-ray is
    still made to keep the random stream), another image, and the family's parameters in the X-ray's metadata."""
    import torch

    from RayEmbRegistrationLib.evaluate import simulated_cases
    from RayEmbRegistrationLib.geometry.camera import Intrinsics
    from RayEmbRegistrationLib.options import RefineOptions
    from RayEmbRegistrationLib.registration.refine import Refiner
    from RayEmbRegistrationLib.rendering.render import DRRRenderer

    torch.set_num_threads(1)
    intr = Intrinsics.deepfluoro(48)
    sim, refiner = DRRRenderer(sample_ct, intr), Refiner(sample_ct, RefineOptions())
    base = list(simulated_cases(sample_ct, intr, 2, 3, "clinical", sim, refiner))
    for family in ("diffdrr", "physics"):
        other = list(simulated_cases(sample_ct, intr, 2, 3, "clinical", sim, refiner, appearance=family))
        for (c, T, x, s), (c2, T2, x2, s2) in zip(base, other):
            assert c == c2 and np.array_equal(T, T2) and np.array_equal(s, s2)
            assert not np.array_equal(x.pixels, x2.pixels) and x2.pixels.shape == (48, 48)
            assert x2.metadata["appearance"]["family"] == family
    assert base[0][2].metadata["appearance"]["family"] == "project"
    with pytest.raises(ValueError, match="unknown appearance"):
        next(simulated_cases(sample_ct, intr, 1, 3, "clinical", sim, refiner, appearance="film"))
