"""The registration verdict (``verdict.py``): its rule on hand-made signals, and its signals on real DRRs."""

import math

import numpy as np
import pytest

from RayEmbRegistrationLib.verdict import ACCEPTED, REJECTED, UNCERTAIN, VerdictRule, footprint_similarity, judge

GOOD = dict(initial_method="rayemb", refined=True, similarity=0.95, footprint_similarity=0.97, inliers=300,
            depth_tolerance_mm=10.0, warnings=0)


@pytest.mark.parametrize("changes, status, words", [
    ({}, ACCEPTED, None),
    ({"footprint_similarity": 0.70}, REJECTED, "does not match the X-ray"),
    ({"footprint_similarity": 0.85}, UNCERTAIN, "below 0.93"),
    ({"depth_tolerance_mm": 45.0}, UNCERTAIN, "depth only to ±45 mm"),
    ({"depth_tolerance_mm": math.inf}, UNCERTAIN, "depth"),
    ({"inliers": 12}, UNCERTAIN, "only 12 PnP inliers"),
    ({"warnings": 1}, UNCERTAIN, "warnings"),
    ({"refined": False, "similarity": math.nan, "footprint_similarity": math.nan}, UNCERTAIN, "not refined"),
    ({"footprint_similarity": math.nan, "similarity": 0.5}, REJECTED, "similarity 0.500"),
    ({"initial_method": "given", "inliers": 0}, ACCEPTED, None),
])
def test_rule(changes, status, words):
    v = judge({**GOOD, **changes})
    assert v.status == status, v
    assert (not v.reasons) if words is None else any(words in r for r in v.reasons), v.reasons
    assert v.line().startswith(status) and v.to_dict()["status"] == status


def test_rule_thresholds_are_the_documented_ones():
    r = VerdictRule()
    assert (r.accept_similarity, r.reject_similarity, r.max_depth_tolerance_mm, r.min_inliers) == (0.93, 0.80, 25.0, 20)


def test_footprint_similarity_ignores_where_the_ct_casts_no_shadow():
    rng = np.random.default_rng(0)
    drr = np.zeros((64, 64))
    drr[16:48, 16:48] = rng.random((32, 32)) + 1.0  # a small CT in the middle of the detector
    xray = np.kron(drr, np.ones((2, 2)))  # the same detector, 2× finer
    outside = np.kron(drr, np.ones((2, 2))) == 0
    xray = xray + np.where(outside, rng.normal(0, 0.3, xray.shape), rng.normal(0, 0.02, xray.shape))
    fs = footprint_similarity(xray, drr)
    from RayEmbRegistrationLib.similarity import multiscale_ncc
    import torch

    from RayEmbRegistrationLib.refine import downsample_image

    plain = float(multiscale_ncc(torch.as_tensor(drr[None]), torch.as_tensor(downsample_image(xray, 64, 64)[None]))[0])
    assert fs > 0.9 and fs > plain + 0.1  # the empty background no longer dilutes the correlation
    assert footprint_similarity(rng.random((128, 128)), drr) < 0.3  # another image: no correlation
    assert math.isnan(footprint_similarity(xray, np.zeros((64, 64))))


def test_final_agreement_counts_the_detections_the_final_pose_explains():
    """``final_agreement`` (a recorded signal): detections within the RANSAC threshold of their reprojection at the
    final pose; undetected points (NaN) and far ones do not count; no detections → 0."""
    from types import SimpleNamespace

    from RayEmbRegistrationLib.camera import Intrinsics
    from RayEmbRegistrationLib.options import RegistrationOptions
    from RayEmbRegistrationLib.results import Landmark
    from RayEmbRegistrationLib.verdict import final_agreement

    opts = RegistrationOptions()
    intr = Intrinsics.deepfluoro(256)
    thr = opts.pnp.threshold_px(intr)
    lm = lambda d, r: Landmark("p", np.zeros(3), np.array(d, float), np.array(r, float), 0.5, "bone", True)  # noqa: E731
    marks = [lm([10, 10], [10, 10 + 0.9 * thr]), lm([50, 50], [50 + 1.1 * thr, 50]), lm([np.nan, np.nan], [5, 5]),
             lm([100, 100], [101, 99])]
    xray = SimpleNamespace(intrinsics=intr)
    assert final_agreement(SimpleNamespace(options=opts, landmarks=marks), xray) == 2
    assert final_agreement(SimpleNamespace(options=opts, landmarks=[]), xray) == 0
