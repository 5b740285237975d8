"""The registration verdict (``verdict.py``): its rule on hand-made signals, and its signals on real DRRs."""

import math

import numpy as np
import pytest

from RayEmbRegistrationLib.registration.verdict import ACCEPTED, REJECTED, UNCERTAIN, VerdictRule, footprint_similarity, judge

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
    ({"competitor_margin": -0.01, "competitor_distance_mm": 31.0}, UNCERTAIN, "31 mm away explains the X-ray better"),
    ({"competitor_margin": 0.002, "competitor_distance_mm": 58.0}, UNCERTAIN, "almost as well"),
    ({"competitor_margin": 0.02, "competitor_distance_mm": 58.0}, ACCEPTED, None),
    ({"competitor_margin": math.inf, "competitor_distance_mm": math.nan}, ACCEPTED, None),
    ({"rescued": True, "final_agreement": 9}, UNCERTAIN, "rescue search and only 9 of the detections"),
    ({"rescued": True, "final_agreement": 38}, ACCEPTED, None),
    ({"rescued": False, "final_agreement": 9}, ACCEPTED, None),
    # a start re-seated in depth: its recounted inliers do not count, the detections at the final pose do
    ({"reseated": True, "inliers": 10, "final_agreement": 51}, ACCEPTED, None),
    ({"reseated": True, "inliers": 300, "final_agreement": 7}, UNCERTAIN, "re-seating a PnP orientation"),
    # a small X-ray scores lower even at the true pose: the reason says so (and what to do)
    ({"footprint_similarity": 0.92, "xray_px": 128}, UNCERTAIN, "full resolution"),
    ({"footprint_similarity": 0.92, "xray_px": 256}, UNCERTAIN, "where failures begin"),
    # a pose turned a few degrees about the bone in view is more similar: the refinement stopped short
    ({"neighbour_gain": 0.008, "neighbour_ax_deg": -4.0, "neighbour_ay_deg": 0.0}, UNCERTAIN,
     "turned by -4° about the image's x axis"),
    ({"neighbour_gain": 0.008, "neighbour_ax_deg": 0.0, "neighbour_ay_deg": 2.0}, UNCERTAIN, "+2° about the image's y"),
    ({"neighbour_gain": 0.002, "neighbour_ax_deg": 2.0, "neighbour_ay_deg": 0.0}, ACCEPTED, None),
    ({"neighbour_gain": -0.01, "neighbour_ax_deg": 2.0, "neighbour_ay_deg": 0.0}, ACCEPTED, None),
])
def test_rule(changes, status, words):
    v = judge({**GOOD, **changes})
    assert v.status == status, v
    assert (not v.reasons) if words is None else any(words in r for r in v.reasons), v.reasons
    assert v.line().startswith(status) and v.to_dict()["status"] == status


def test_small_xray_hint_only_for_small_xrays():
    assert not any("full resolution" in r for r in judge({**GOOD, "footprint_similarity": 0.92, "xray_px": 256}).reasons)
    assert judge({**GOOD, "xray_px": 128}).status == ACCEPTED  # a good small-X-ray result is accepted as any


def test_rule_thresholds_are_the_documented_ones():
    r = VerdictRule()
    assert (r.accept_similarity, r.reject_similarity, r.max_depth_tolerance_mm, r.min_inliers,
            r.min_competitor_margin, r.min_rescued_agreement, r.max_neighbour_gain) == (0.93, 0.80, 25.0, 20, 0.005, 20,
                                                                                       0.003)


def test_footprint_similarity_ignores_where_the_ct_casts_no_shadow():
    rng = np.random.default_rng(0)
    drr = np.zeros((64, 64))
    drr[16:48, 16:48] = rng.random((32, 32)) + 1.0  # a small CT in the middle of the detector
    xray = np.kron(drr, np.ones((2, 2)))  # the same detector, 2× finer
    outside = np.kron(drr, np.ones((2, 2))) == 0
    xray = xray + np.where(outside, rng.normal(0, 0.3, xray.shape), rng.normal(0, 0.02, xray.shape))
    fs = footprint_similarity(xray, drr)
    from RayEmbRegistrationLib.registration.similarity import multiscale_ncc
    import torch

    from RayEmbRegistrationLib.registration.refine import downsample_image

    plain = float(multiscale_ncc(torch.as_tensor(drr[None]), torch.as_tensor(downsample_image(xray, 64, 64)[None]))[0])
    assert fs > 0.9 and fs > plain + 0.1  # the empty background no longer dilutes the correlation
    assert footprint_similarity(rng.random((128, 128)), drr) < 0.3  # another image: no correlation
    assert math.isnan(footprint_similarity(xray, np.zeros((64, 64))))


def test_final_agreement_counts_the_detections_the_final_pose_explains():
    """``final_agreement`` (a recorded signal): detections within the RANSAC threshold of their reprojection at the
    final pose; undetected points (NaN) and far ones do not count; no detections → 0."""
    from types import SimpleNamespace

    from RayEmbRegistrationLib.geometry.camera import Intrinsics
    from RayEmbRegistrationLib.options import RegistrationOptions
    from RayEmbRegistrationLib.results import Landmark
    from RayEmbRegistrationLib.registration.verdict import final_agreement

    opts = RegistrationOptions()
    intr = Intrinsics.deepfluoro(256)
    thr = opts.pnp.threshold_px(intr)
    lm = lambda d, r: Landmark("p", np.zeros(3), np.array(d, float), np.array(r, float), 0.5, "bone", True)  # noqa: E731
    marks = [lm([10, 10], [10, 10 + 0.9 * thr]), lm([50, 50], [50 + 1.1 * thr, 50]), lm([np.nan, np.nan], [5, 5]),
             lm([100, 100], [101, 99])]
    xray = SimpleNamespace(intrinsics=intr)
    assert final_agreement(SimpleNamespace(options=opts, landmarks=marks), xray) == 2
    assert final_agreement(SimpleNamespace(options=opts, landmarks=[]), xray) == 0


@pytest.fixture(scope="module")
def noisy_sample_drr(sample_ct):
    """A noisy 96² DRR of the real sample CT at a known pose, as an X-ray: ``(intrinsics, true pose, xray, the
    verdict's bone points)`` — shared by the checks that render (competitor margin, neighbour gain)."""
    from types import SimpleNamespace

    import torch

    from RayEmbRegistrationLib.geometry.camera import Intrinsics
    from RayEmbRegistrationLib.geometry.carm import RAYEMB_SAMPLER
    from RayEmbRegistrationLib.rendering.render import DRRRenderer
    from RayEmbRegistrationLib.registration.verdict import signal_points

    torch.set_num_threads(1)
    intr = Intrinsics.deepfluoro(96)
    T = RAYEMB_SAMPLER.poses(np.zeros((1, 3)), np.array([[0.0, 0.0, 250.0]]), sample_ct.center_ras)[0]
    img = DRRRenderer(sample_ct, intr, bone_multiplier=2.0).render_numpy(T)
    img = (img + np.random.default_rng(3).normal(0, 0.02 * img.max(), img.shape)).astype(np.float32)
    return intr, T, SimpleNamespace(pixels=img, intrinsics=intr), signal_points(sample_ct)


def test_competitor_margin_is_positive_at_the_true_pose_and_not_at_a_shifted_one(sample_ct, noisy_sample_drr):
    """``competitor_margin`` on a DRR of the real sample CT: from the true pose, the starts moved ±60 mm end at
    poses that explain the image worse (or come back); from a pose 40 mm off, a different pose explains it better
    or as well — below the rule's margin."""
    from RayEmbRegistrationLib.geometry.camera import Camera
    from RayEmbRegistrationLib.options import RefineOptions
    from RayEmbRegistrationLib.registration.refine import Refiner
    from RayEmbRegistrationLib.registration.verdict import competitor_margin

    intr, T, xray, pts = noisy_sample_drr
    refiner = Refiner(sample_ct, RefineOptions(levels=(32, 64), iterations=(40, 20), bone_multiplier=2.5))
    rule = VerdictRule()
    m_true, _ = competitor_margin(refiner, xray, Camera(intr, T), pts)
    assert m_true >= rule.min_competitor_margin
    W = T.copy()
    W[0, 3] += 40.0
    m_wrong, d = competitor_margin(refiner, xray, Camera(intr, W), pts)
    assert m_wrong < rule.min_competitor_margin and d > 10.0


def test_neighbour_gain_is_negative_at_the_true_pose_and_finds_the_way_back_from_a_turned_one(sample_ct,
                                                                                              noisy_sample_drr):
    """``neighbour_gain`` on a noisy DRR of the real sample CT: at the true pose every pose turned 2–4° about the
    bone in view is less similar; at the true pose turned by 4° about the image's x axis (through the same bone),
    the neighbour turned back by −4° is the most similar and beats it by more than the rule's threshold."""
    from RayEmbRegistrationLib.geometry.camera import Camera
    from RayEmbRegistrationLib.options import RefineOptions
    from RayEmbRegistrationLib.registration.refine import Refiner
    from RayEmbRegistrationLib.registration.rescue import rotated_about, view_centre
    from RayEmbRegistrationLib.registration.verdict import neighbour_gain

    intr, T, xray, pts = noisy_sample_drr
    refiner = Refiner(sample_ct, RefineOptions(levels=(96,), iterations=(1,), bone_multiplier=2.5))
    gain, _, _ = neighbour_gain(refiner, xray, Camera(intr, T), pts)
    assert gain < 0.0
    W = rotated_about(T, view_centre(Camera(intr, T), pts), 4.0, 0.0)
    gain, ax, ay = neighbour_gain(refiner, xray, Camera(intr, W), pts)
    assert gain > VerdictRule().max_neighbour_gain and (ax, ay) == (-4.0, 0.0)


def test_local_check_option_and_flag():
    from RayEmbRegistrationLib.cli import build_parser
    from RayEmbRegistrationLib.cli.common import options_from_args
    from RayEmbRegistrationLib.options import RefineOptions

    assert RefineOptions().local_check
    base = ["register", "--ct", "ct.nii.gz", "--xray", "x.dcm", "--out", "o"]
    assert options_from_args(build_parser().parse_args(base)).refine.local_check
    assert not options_from_args(build_parser().parse_args(base + ["--no-local-check"])).refine.local_check
