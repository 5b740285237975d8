"""The benchmark's metrics (``evaluate.py``): pose errors of known offsets, summary statistics."""

import math

import numpy as np

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
