"""C-arm angles (DICOM convention) and the pose samplers (``carm.py``)."""

import numpy as np
import pytest

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics
from RayEmbRegistrationLib.geometry.carm import MILD_SAMPLER, RAYEMB_SAMPLER, carm_camera_from_world

INTR = Intrinsics(1020.0, (0.8, 1.1), 96, 72, (41.3, 30.7))  # non-square pixels and detector, off-centre principal point


@pytest.mark.parametrize(
    "primary, secondary, axis",
    [(0, 0, [0, 1, 0]), (90, 0, [-1, 0, 0]), (-90, 0, [1, 0, 0]), (0, 90, [0, 0, 1]), (0, -90, [0, 0, -1])],
)
def test_carm_angles_follow_dicom(primary, secondary, axis):
    """At 0/0 the beam runs posterior→anterior; LAO brings the detector to the patient's left, cranial to the head."""
    iso = np.array([10.0, -20.0, 30.0])
    cam = Camera(INTR, carm_camera_from_world(primary, secondary, 600, iso))
    np.testing.assert_allclose(cam.principal_axis_ras, axis, atol=1e-12)
    np.testing.assert_allclose(cam.project(iso[None])[0], INTR.principal_point_px, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(cam.source_ras - iso), 600, atol=1e-9)


def test_carm_reference_image_orientation():
    """At 0/0: rows run head → feet, columns toward the patient's right (the image as the detector sees it)."""
    cam = Camera(INTR, carm_camera_from_world(0, 0, 600))
    p = cam.project(np.array([[0, 0, 0], [0, 0, 10], [10, 0, 0]], dtype=float))
    assert p[1, 1] < p[0, 1]  # superior point is higher in the image (smaller row)
    assert p[2, 0] > p[0, 0]  # patient's right → larger column


def test_samplers_are_deterministic_and_match_their_distribution():
    iso = np.array([0.0, 100.0, 200.0])
    a = RAYEMB_SAMPLER.sample(4, iso, rng=3)
    np.testing.assert_array_equal(a, RAYEMB_SAMPLER.sample(4, iso, rng=3))
    poses = RAYEMB_SAMPLER.sample(4000, iso, rng=1)
    iso_cam = poses[:, :3, :3] @ iso + poses[:, :3, 3]
    # isocentre depth = SDD − N(250, 90) (clipped), lateral offsets N(10, 70) and N(5, 50)
    assert np.median(1020 - iso_cam[:, 2]) == pytest.approx(250, abs=10)
    assert np.mean(iso_cam[:, 0]) == pytest.approx(10, abs=5) and np.std(iso_cam[:, 0]) == pytest.approx(70, rel=0.08)
    assert np.mean(iso_cam[:, 1]) == pytest.approx(5, abs=4) and np.std(iso_cam[:, 1]) == pytest.approx(50, rel=0.08)
    for T in poses[:5]:
        Camera(INTR, T)  # rigid
    mild = MILD_SAMPLER.sample(200, iso, rng=0)
    ref = carm_camera_from_world(0, 0, 1020 - 350, iso)
    ang = np.degrees(np.arccos(np.clip(np.einsum("nij,ij->n", mild[:, :3, :3], ref[:3, :3]) / 2 - 0.5, -1, 1)))
    assert np.median(ang) < 10


def test_clinical_sampler_covers_real_carm_use():
    from RayEmbRegistrationLib.geometry.carm import CLINICAL_SAMPLER

    iso = np.array([5.0, -3.0, 20.0])
    T = CLINICAL_SAMPLER.sample(300, iso, rng=0)
    np.testing.assert_array_equal(T, CLINICAL_SAMPLER.sample(300, iso, rng=0))
    src = np.array([Camera(INTR, t).source_ras for t in T])
    d = np.linalg.norm(src - iso, axis=1)
    assert d.min() >= 450 - 1e-6 and d.max() <= 900 + 1e-6 and d.max() - d.min() > 350
    for t in T[:20]:
        np.testing.assert_allclose(Camera(INTR, t).project(iso[None])[0], INTR.principal_point_px, atol=1e-6)
    axes = np.array([Camera(INTR, t).principal_axis_ras for t in T])
    lateral = np.degrees(np.arcsin(np.abs(axes[:, 0])))  # the beam's tilt toward the patient's left/right
    assert lateral.max() > 35 and lateral.max() <= 45 + 1e-6
