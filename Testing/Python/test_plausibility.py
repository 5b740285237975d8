"""Plausibility of a pose (``plausibility.py``) on the real sample CT: field of view, depth, C-arm angles."""

import numpy as np
import pytest

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics
from RayEmbRegistrationLib.geometry.carm import CarmAngles, carm_camera_from_world
from RayEmbRegistrationLib.errors import RegistrationError
from RayEmbRegistrationLib.registration.plausibility import carm_disagreement, check_overlap, is_in_view, overlap_problem

INTR = Intrinsics.deepfluoro(128)


def test_in_view_behind_outside_and_beyond_the_detector(sample_ct):
    T = carm_camera_from_world(0, 0, 700, sample_ct.center_ras)
    assert is_in_view(sample_ct, Camera(INTR, T)) and overlap_problem(sample_ct, Camera(INTR, T)) is None
    side = T.copy()
    side[0, 3] += 2000.0
    assert "outside" in overlap_problem(sample_ct, Camera(INTR, side))
    behind = T.copy()
    behind[2, 3] -= 3000.0
    assert "behind the X-ray source" in overlap_problem(sample_ct, Camera(INTR, behind))
    far = T.copy()
    far[2, 3] += 1000.0  # the CT centre beyond the detector (SDD 1020 mm)
    assert "beyond the detector" in overlap_problem(sample_ct, Camera(INTR, far), "refined pose")
    with pytest.raises(RegistrationError, match="do not overlap"):
        check_overlap(sample_ct, Camera(INTR, side), "PnP pose")


def test_a_close_up_of_part_of_the_ct_is_plausible(sample_ct):
    """A close-up of one side of the pelvis CT whose view misses the CT centre but shows part of its bone is a
    plausible pose (clinical use); the same close-up moved off the bone is not."""
    from RayEmbRegistrationLib.registration.plausibility import MIN_BONE_IN_VIEW, bone_in_view

    bone = sample_ct.sample_bone_points(4000, np.random.default_rng(0))
    lateral = bone[np.argmax(bone[:, 0])]  # the most lateral bone (right, +R)
    T = carm_camera_from_world(0, 0, 450, lateral)  # AP close-up, isocentre on that bone
    cam = Camera(INTR, T)
    uv = cam.project(sample_ct.center_ras[None])[0]
    assert not (0 <= uv[0] <= 127 and 0 <= uv[1] <= 127)  # the CT centre is outside this view
    share = bone_in_view(sample_ct, cam)
    assert share >= MIN_BONE_IN_VIEW and overlap_problem(sample_ct, cam) is None and is_in_view(sample_ct, cam)
    # truth by brute force: the share of all bone voxels inside the image agrees with the subsample's
    all_uv = cam.project(bone)
    brute = float(((all_uv >= -0.5) & (all_uv <= 127.5)).all(1).mean())
    assert abs(share - brute) < 0.03, (share, brute)
    off = T.copy()
    off[0, 3] -= 400.0  # the same view moved 400 mm sideways: no bone in it
    assert bone_in_view(sample_ct, Camera(INTR, off)) < MIN_BONE_IN_VIEW
    assert "less than 5 % of its bone" in overlap_problem(sample_ct, Camera(INTR, off))


def test_carm_disagreement_warns_only_beyond_30_degrees(sample_ct):
    cam = Camera(INTR, carm_camera_from_world(20, -10, 700, sample_ct.center_ras))
    assert carm_disagreement(cam, None) is None
    assert carm_disagreement(cam, CarmAngles(25.0, -5.0)) is None  # ~7° apart
    w = carm_disagreement(cam, CarmAngles(-40.0, 0.0))
    assert w is not None and "primary -40°" in w
    axis = carm_camera_from_world(-40, 0, 1000.0)[2, :3]
    expected = np.degrees(np.arccos(np.clip(axis @ cam.principal_axis_ras, -1, 1)))
    assert f"{expected:.0f}°" in w


def test_recorded_source_distance_reveals_a_wrong_depth(sample_ct):
    """A wrong source-to-detector distance is compensated by a wrong depth (the image hardly changes); a recorded
    source-to-isocentre distance is what shows it."""
    c = sample_ct.center_ras
    cam = Camera(INTR, carm_camera_from_world(0, 0, 700, c))
    assert carm_disagreement(cam, CarmAngles(0.0, 0.0, 720.0), c) is None
    w = carm_disagreement(cam, CarmAngles(0.0, 0.0, 950.0), c)
    assert w is not None and "700 mm from the source" in w and "950 mm" in w
    assert carm_disagreement(cam, CarmAngles(0.0, 0.0, None), c) is None
