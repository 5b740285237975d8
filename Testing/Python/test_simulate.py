"""Simulated X-rays, visible poses and the baseline's start (``simulate.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics
from RayEmbRegistrationLib.geometry.carm import RAYEMB_SAMPLER
from RayEmbRegistrationLib.registration.plausibility import is_in_view
from RayEmbRegistrationLib.rendering.simulate import perturbed_start, sample_visible_pose, simulate_xray
from RayEmbRegistrationLib.inputs.xray import XRayImage


@pytest.fixture(scope="module")
def case(sample_ct):
    intr = Intrinsics.deepfluoro(128)
    T = RAYEMB_SAMPLER.poses(np.array([[0.05, -0.03, 0.1]]), np.array([[5.0, -10.0, 260.0]]), sample_ct.center_ras)[0]
    xray = XRayImage(simulate_xray(sample_ct, intr, T, 3), intr, "sim")
    return intr, T, xray, None


def test_simulated_xray_is_noisy_line_integral(sample_ct, case):
    intr, T, xray, _ = case
    a = xray.pixels
    b = simulate_xray(sample_ct, intr, T, 4)
    assert a.shape == (128, 128) and a.dtype == np.float32 and np.isfinite(a).all()
    assert not np.allclose(a, b)  # different noise / contrast draws
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8  # same anatomy


def test_visible_poses_and_baseline_starts_see_the_ct(sample_ct):
    intr = Intrinsics.deepfluoro(64)
    rng = np.random.default_rng(0)
    for _ in range(5):
        T = sample_visible_pose(sample_ct, intr, rng)
        assert is_in_view(sample_ct, Camera(intr, T))
        S = perturbed_start(sample_ct, intr, T, sample_ct.center_ras, 100.0, rng)
        assert is_in_view(sample_ct, Camera(intr, S)) and not np.allclose(S, T)


def test_clinical_poses_see_the_ct_from_varied_distances(sample_ct):
    intr = Intrinsics.deepfluoro(64)
    rng = np.random.default_rng(1)
    T = [sample_visible_pose(sample_ct, intr, rng, poses="clinical") for _ in range(8)]
    assert all(is_in_view(sample_ct, Camera(intr, t)) for t in T)
    assert len({round(float(np.linalg.norm(Camera(intr, t).source_ras - sample_ct.center_ras))) for t in T}) == 8
    with pytest.raises(ValueError, match="poses must be one of"):
        sample_visible_pose(sample_ct, intr, rng, poses="random")
