"""register() on a simulated X-ray of the real sample CT at a known pose: stages, errors, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.camera import RAYEMB_SAMPLER, Camera, Intrinsics
from RayEmbRegistrationLib.pipeline import (
    ModelUnavailable,
    RegistrationCancelled,
    RegistrationError,
    RegistrationOptions,
    check_overlap,
    pose_errors,
    refinement_schedule,
    register,
    simulate_xray,
)
from RayEmbRegistrationLib.refine import perturbation_numpy
from RayEmbRegistrationLib.volume import CTVolume
from RayEmbRegistrationLib.xray import XRayImage

FAST = dict(**refinement_schedule(128, 40), device="cpu")


@pytest.fixture(scope="module")
def case(sample_ct):
    torch.set_num_threads(1)
    intr = Intrinsics.deepfluoro(128)
    T = RAYEMB_SAMPLER.poses(np.array([[0.05, -0.03, 0.1]]), np.array([[5.0, -10.0, 260.0]]), sample_ct.center_ras)[0]
    xray = XRayImage(simulate_xray(sample_ct, intr, T, 3), intr, "sim")
    pts = sample_ct.sample_bone_points(300, 4)
    return intr, T, xray, pts


def test_intensity_only_registration_recovers_pose(sample_ct, case):
    intr, T, xray, pts = case
    start = perturbation_numpy([6.0, -5.0, 4.0, 8.0, -6.0, 15.0], T, sample_ct.center_ras, 120.0)
    res = register(sample_ct, xray, None, RegistrationOptions(initial_camera_from_world=start, **FAST))
    e0 = pose_errors(start, T, pts, intr)["mtre_mm"]
    e1 = pose_errors(res.final.camera_from_world, T, pts, intr)["mtre_mm"]
    assert e0 > 10 and e1 < 3.0, (e0, e1)
    assert res.final_stage == "refined" and res.initial_method == "given"
    assert res.similarity_after >= res.similarity_before
    assert res.drr is not None and res.drr.shape == (128, 128)
    assert set(res.timings_s) >= {"refine", "total"}


@pytest.mark.xfail(
    reason="known gap (issues 3/4): the general CPU-trained network (median 65.7 px at 224² on the held-out "
    "pelvis CT) does not localise landmarks well enough for PnP; measured success 3/20 in `rayemb evaluate` "
    "(README, Results; the fine-tuned model's test below passes). XPASSes on the cases where it works "
    "(this one since the depth search).",
    strict=False,
)
def test_register_with_network_recovers_pose(sample_ct, case):
    intr, T, xray, pts = case
    try:
        res = register(sample_ct, xray, None, RegistrationOptions(n_bone_candidates=1000, **FAST))
    except ModelUnavailable as exc:
        pytest.skip(f"no trained network yet: {exc}")
    assert res.initial_method == "rayemb" and res.inliers >= 6
    assert pose_errors(res.final.camera_from_world, T, pts, intr)["mtre_mm"] < 10.0


def test_register_with_the_sample_ct_finetuned_network(sample_ct, case):
    """Markerless registration end to end with the network fine-tuned on the sample CT (the pre-operative step,
    bundled for the demo): a simulated X-ray at a pose the pipeline does not see is registered within 10 mm."""
    from RayEmbRegistrationLib.cli import SAMPLE_CT_MODEL

    intr, T, xray, pts = case
    res = register(sample_ct, xray, None, RegistrationOptions(model_path=str(SAMPLE_CT_MODEL), n_bone_candidates=1000,
                                                              **FAST))
    assert res.initial_method == "rayemb" and res.inliers >= 6
    assert res.final_stage == "refined" and res.similarity_after > res.similarity_before
    assert pose_errors(res.final.camera_from_world, T, pts, intr)["mtre_mm"] < 10.0
    # the depth search ran from the PnP pose; similarity_before is the PnP pose's whatever depth was chosen
    ds = res.depth_search
    assert ds["candidates"] == 17 and ds["similarity"] >= ds["similarity_pnp"] and 0.2 < ds["factor"] < 3.0


def test_refined_pose_outside_the_view_is_rejected(sample_ct, case, monkeypatch):
    """Fault injection: if the optimiser ends at a pose that cannot have produced the X-ray (the CT outside the
    field of view), register keeps the start pose, says so in a warning and does not fail."""
    from RayEmbRegistrationLib import refine as refine_mod

    intr, T, xray, pts = case
    away = T.copy()
    away[:3, 3] += [0.0, 0.0, 5000.0]  # the CT far beyond the detector

    def drifting(self, pixels, intrinsics, T0, progress=None, cancel=None, max_levels=None):
        return refine_mod.RefineResult(away, 0.1, 0.9, True)

    monkeypatch.setattr(refine_mod.Refiner, "refine", drifting)
    res = register(sample_ct, xray, None, RegistrationOptions(initial_camera_from_world=T, **FAST))
    assert res.final_stage == "initial" and np.allclose(res.final.camera_from_world, T)
    assert any("refinement was rejected" in w for w in res.warnings)


def test_no_bone_ct_is_rejected(sample_ct, case):
    intr, T, xray, _ = case
    soft = CTVolume(np.clip(sample_ct.hu, None, 100.0), sample_ct.ijk_to_ras, "soft")
    with pytest.raises(RegistrationError, match="no bone"):
        register(soft, xray, None, RegistrationOptions(initial_camera_from_world=T, **FAST))


def test_non_overlapping_pose_is_rejected(sample_ct, case):
    intr, T, xray, _ = case
    away = T.copy()
    away[0, 3] += 2000.0  # the CT far outside the field of view
    with pytest.raises(RegistrationError, match="do not overlap"):
        register(sample_ct, xray, None, RegistrationOptions(initial_camera_from_world=away, **FAST))
    behind = T.copy()
    behind[2, 3] -= 3000.0
    with pytest.raises(RegistrationError):
        check_overlap(sample_ct, Camera(intr, behind))


def test_cancel(sample_ct, case):
    intr, T, xray, _ = case
    calls = []
    with pytest.raises(RegistrationCancelled):
        register(sample_ct, xray, None, RegistrationOptions(initial_camera_from_world=T, **FAST),
                 progress=lambda f, m: calls.append(f), cancel=lambda: len(calls) > 2)


def test_simulated_xray_is_noisy_line_integral(sample_ct, case):
    intr, T, xray, _ = case
    a = xray.pixels
    b = simulate_xray(sample_ct, intr, T, 4)
    assert a.shape == (128, 128) and a.dtype == np.float32 and np.isfinite(a).all()
    assert not np.allclose(a, b)  # different noise / contrast draws
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8  # same anatomy


def test_refinement_schedule_is_the_default_and_scales():
    from RayEmbRegistrationLib.pipeline import RegistrationOptions, refinement_schedule

    o = RegistrationOptions()
    assert refinement_schedule() == dict(refine_levels=o.refine_levels, refine_iterations=o.refine_iterations,
                                         refine_lr_mm=o.refine_lr_mm)
    s = refinement_schedule(256, 150)
    assert s["refine_levels"] == (32, 64, 256) and s["refine_iterations"] == (150, 100, 50)
    s = refinement_schedule(48, 30)  # small grids: no duplicate levels, one learning rate per level
    assert s["refine_levels"] == (32, 48) and len(s["refine_iterations"]) == len(s["refine_lr_mm"]) == 2
    assert s["refine_lr_mm"] == (8.0, 1.0)
