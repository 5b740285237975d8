"""PnP (pose.py) on bone points of the real sample CT, projected with ``Camera.project`` at sampled C-arm poses."""

from __future__ import annotations

import numpy as np
import pytest

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics, rotation_matrix
from RayEmbRegistrationLib.geometry.carm import RAYEMB_SAMPLER
from RayEmbRegistrationLib.registration.pose import (
    HAS_MAGSAC,
    PoseError,
    camera_from_world_from_rvec_tvec,
    rotation_angle_rad,
    rvec_tvec_from_camera_from_world,
    solve_pnp,
    solve_pnp_hypotheses,
)


@pytest.fixture(scope="module")
def bone_points(sample_ct):
    ijk = np.argwhere(sample_ct.hu >= 350)
    rng = np.random.default_rng(1)
    pick = ijk[rng.choice(len(ijk), 300, replace=False)]
    return sample_ct.ijk_to_ras_points(pick)


def _visible_pose(ct, intr, seed):
    rng = np.random.default_rng(seed)
    while True:
        T = RAYEMB_SAMPLER.sample(1, ct.center_ras, rng)[0]
        uv = Camera(intr, T).project(ct.center_ras[None])[0]
        if np.all(np.isfinite(uv)) and 0 <= uv[0] < intr.width and 0 <= uv[1] < intr.height:
            return T


def test_rvec_roundtrip():
    T = np.eye(4)
    T[:3, :3] = rotation_matrix(np.array([0.3, -0.2, 1.1]))
    T[:3, 3] = [5.0, -7.0, 600.0]
    rvec, tvec = rvec_tvec_from_camera_from_world(T)
    np.testing.assert_allclose(camera_from_world_from_rvec_tvec(rvec, tvec), T, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pnp_exact_projections(sample_ct, bone_points, seed):
    intr = Intrinsics.deepfluoro(1536)
    T = _visible_pose(sample_ct, intr, seed)
    uv = Camera(intr, T).project(bone_points)
    res = solve_pnp(bone_points, uv, intr)
    assert rotation_angle_rad(res.camera_from_world[:3, :3], T[:3, :3]) < 1e-6
    assert np.linalg.norm(res.camera_from_world[:3, 3] - T[:3, 3]) < 1e-3
    assert res.n_inliers == len(bone_points)
    assert res.rmse_inliers_px < 1e-4
    assert res.method == ("MAGSAC+++LM" if HAS_MAGSAC else "RANSAC+LM")


def test_pnp_noise_and_30pct_outliers(sample_ct, bone_points):
    intr = Intrinsics.deepfluoro(256)
    T = _visible_pose(sample_ct, intr, 7)
    rng = np.random.default_rng(3)
    uv = Camera(intr, T).project(bone_points) + rng.normal(0, 0.5, (len(bone_points), 2))
    out = rng.choice(len(bone_points), int(0.3 * len(bone_points)), replace=False)
    uv[out] = rng.uniform(0, 256, (len(out), 2))  # gross outliers anywhere in the image
    res = solve_pnp(bone_points, uv, intr, threshold_px=3.0)
    inl = set(res.inliers.tolist())
    assert len(inl & set(out.tolist())) <= 3  # outliers that happen to fall near the truth may be kept
    assert len(inl) >= 0.65 * len(bone_points)
    # Pose error in the units that matter: 3D error of the bone points in the camera frame.
    Xt = Camera(intr, T).to_camera(bone_points)
    Xe = Camera(intr, res.camera_from_world).to_camera(bone_points)
    assert np.linalg.norm(Xt - Xe, axis=1).mean() < 5.0
    assert rotation_angle_rad(res.camera_from_world[:3, :3], T[:3, :3]) < np.deg2rad(1.0)


def test_pnp_too_few_correspondences(sample_ct, bone_points):
    intr = Intrinsics.deepfluoro(256)
    T = _visible_pose(sample_ct, intr, 0)
    uv = Camera(intr, T).project(bone_points[:8])
    uv[3:] = np.nan  # only 3 usable
    with pytest.raises(PoseError, match="at least 6"):
        solve_pnp(bone_points[:8], uv, intr)


def test_implausible_consensus_is_set_aside(sample_ct):
    """A larger consensus that is only explained by an implausible camera (the CT beyond the detector, as when
    many detections collapse together) is set aside when a plausibility predicate is given; the true pose is
    then found in the remaining correspondences."""
    from RayEmbRegistrationLib.geometry.carm import carm_camera_from_world

    intr = Intrinsics.deepfluoro(256)
    cam = Camera(intr, carm_camera_from_world(10, -5, 700, sample_ct.center_ras))
    decoy = Camera(intr, carm_camera_from_world(-20, 15, 1500, sample_ct.center_ras))  # CT centre 1500 mm > SDD
    rng = np.random.default_rng(3)
    good = sample_ct.sample_bone_points(60, rng=rng)
    bad = sample_ct.sample_bone_points(140, rng=rng)
    pts = np.vstack([bad, good])
    uv = np.vstack([decoy.project(bad), cam.project(good)]) + rng.normal(0, 0.5, (200, 2))

    def plausible(T_est):
        d = Camera(intr, T_est).depth(sample_ct.center_ras[None])[0]
        return 0 < d < intr.source_to_detector_mm

    assert not plausible(solve_pnp(pts, uv, intr, threshold_px=3.0).camera_from_world)  # the decoy wins without the check
    res = solve_pnp(pts, uv, intr, threshold_px=3.0, is_plausible=plausible)
    assert res.attempts == 2 and plausible(res.camera_from_world)
    assert np.linalg.norm(Camera(intr, res.camera_from_world).source_ras - cam.source_ras) < 5.0
    assert np.isin(np.arange(140, 200), res.inliers).mean() > 0.9
    assert len(res.reprojection_errors_px) == 200 and np.isfinite(res.reprojection_errors_px).all()
    with pytest.raises(PoseError, match="implausible") as refused:
        solve_pnp(bad, uv[:140], intr, threshold_px=3.0, is_plausible=plausible)
    # The refused poses travel with the error (initial_pose.RayEmbPnP re-seats their orientation in depth).
    decoy_pose = refused.value.implausible[0]
    assert not plausible(decoy_pose.camera_from_world) and decoy_pose.n_inliers > 120
    assert rotation_angle_rad(decoy_pose.camera_from_world[:3, :3], decoy.camera_from_world[:3, :3]) < 0.02
    with pytest.raises(PoseError) as too_few:
        solve_pnp(bad[:3], uv[:3], intr)
    assert too_few.value.implausible == ()


def test_sequential_ransac_returns_disjoint_hypotheses(sample_ct):
    """Two groups of detections consistent with two different cameras (plus outliers): the hypotheses come
    largest consensus first, with disjoint inlier sets, each near its own camera."""
    from RayEmbRegistrationLib.geometry.carm import carm_camera_from_world

    intr = Intrinsics.deepfluoro(256)
    cam_a = Camera(intr, carm_camera_from_world(10, -5, 700, sample_ct.center_ras))
    cam_b = Camera(intr, carm_camera_from_world(-25, 10, 650, sample_ct.center_ras))
    rng = np.random.default_rng(5)
    a, b, c = (sample_ct.sample_bone_points(n, rng=rng) for n in (90, 50, 30))
    pts = np.vstack([a, b, c])
    uv = np.vstack([cam_a.project(a), cam_b.project(b), rng.uniform(0, 256, (30, 2))]) + rng.normal(0, 0.3, (170, 2))
    hyps = solve_pnp_hypotheses(pts, uv, intr, threshold_px=2.0, max_hypotheses=2)
    assert len(hyps) == 2
    assert not set(hyps[0].inliers) & set(hyps[1].inliers)
    for h, cam, group in ((hyps[0], cam_a, np.arange(90)), (hyps[1], cam_b, np.arange(90, 140))):
        assert np.linalg.norm(Camera(intr, h.camera_from_world).source_ras - cam.source_ras) < 5.0
        assert np.isin(group, h.inliers).mean() > 0.9
    # solve_pnp is the first hypothesis
    one = solve_pnp(pts, uv, intr, threshold_px=2.0)
    np.testing.assert_allclose(one.camera_from_world, hyps[0].camera_from_world, atol=1e-9)


def _slid(T, c, factor):
    """``T`` with point ``c``'s camera-frame position scaled by ``factor`` (slid along its viewing ray, same rotation)."""
    S = T.copy()
    S[:3, 3] += (factor - 1.0) * (T[:3, :3] @ c + T[:3, 3])
    return S


@pytest.mark.parametrize("seed", [0, 1])
def test_depth_valley_recovers_the_tilt_that_a_wrong_depth_hid(sample_ct, bone_points, seed):
    """A PnP-like pose 15 % too deep *and* tilted 8° (what noisy close-up detections give) reprojects the points
    badly when only slid back to the true depth, while its valley pose at that depth — the tilt refitted to the
    correspondences — is the true pose (exact correspondences: real CT bone points projected at a sampled pose)."""
    from RayEmbRegistrationLib.registration.pose import depth_valley_poses

    intr = Intrinsics.deepfluoro(256)
    T = _visible_pose(sample_ct, intr, seed)
    uv = Camera(intr, T).project(bone_points)
    ok = intr.contains_pixels(uv)
    X, x = bone_points[ok], uv[ok]
    c = X.mean(0)
    tilt = np.eye(4)
    tilt[:3, :3] = rotation_matrix(np.array([np.radians(8.0), 0.0, 0.0]))  # about the camera's x axis
    cc = T[:3, :3] @ c + T[:3, 3]
    tilt[:3, 3] = cc - tilt[:3, :3] @ cc  # through the centroid
    P = _slid(tilt @ T, c, 1.15)
    poses = depth_valley_poses(X, x, intr, P, factors=(1 / 1.15, 1.0))
    assert poses.shape == (2, 4, 4)
    for f, V in zip((1 / 1.15, 1.0), poses):  # each valley pose holds its depth exactly
        assert np.isclose((V[:3, :3] @ c + V[:3, 3])[2], f * (P[:3, :3] @ c + P[:3, 3])[2])
        assert np.allclose(V[:3, :3] @ V[:3, :3].T, np.eye(3), atol=1e-9)
    slid = np.nanmedian(np.linalg.norm(Camera(intr, _slid(P, c, 1 / 1.15)).project(X) - x, axis=1))
    valley = np.nanmedian(np.linalg.norm(Camera(intr, poses[0]).project(X) - x, axis=1))
    assert slid > 2.0 and valley < 0.05  # the tilt shows as pixels of misfit; the valley pose fits exactly
    assert np.degrees(rotation_angle_rad(poses[0][:3, :3], T[:3, :3])) < 0.05
    assert np.linalg.norm(poses[0][:3, 3] - T[:3, 3]) < 0.5


def test_depth_valley_bad_inputs(sample_ct, bone_points):
    from RayEmbRegistrationLib.registration.pose import depth_valley_poses

    intr = Intrinsics.deepfluoro(256)
    T = _visible_pose(sample_ct, intr, 0)
    uv = Camera(intr, T).project(bone_points)
    with pytest.raises(PoseError, match="at least"):
        depth_valley_poses(bone_points[:3], uv[:3], intr, T)
    behind = T.copy()
    behind[2, 3] -= 5000.0  # the source 5 m beyond the points: their centroid behind it
    with pytest.raises(PoseError, match="behind the source"):
        depth_valley_poses(bone_points, uv, intr, behind)
