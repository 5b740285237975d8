"""The camera model (``camera.py``): projection algebra, detector geometry, renderer conventions."""

import numpy as np
import pytest

from RayEmbRegistrationLib.geometry.camera import (
    Camera,
    GeometryError,
    Intrinsics,
    from_diffdrr_pose,
    invert_rigid,
    rigid,
    rotation_matrix,
    to_diffdrr,
    to_nanodrr,
)

RNG = np.random.default_rng(7)
INTR = Intrinsics(1020.0, (0.8, 1.1), 96, 72, (41.3, 30.7))  # non-square pixels and detector, off-centre principal point


def random_camera(rng=RNG, intr=INTR):
    R = rotation_matrix(rng.normal(size=3))
    return Camera(intr, rigid(R, rng.normal(0, 30, 3) + [0, 0, 700]))


def test_intrinsic_matrix_follows_opencv():
    K = INTR.K
    assert K[0, 0] == pytest.approx(1020 / 0.8) and K[1, 1] == pytest.approx(1020 / 1.1)
    assert K[0, 2] == 41.3 and K[1, 2] == 30.7
    default = Intrinsics(1000, (1, 1), 100, 50)
    assert default.principal_point_px == (49.5, 24.5)  # centre of a 100×50 grid with pixel centres at integers


def test_projection_matches_P_and_source_is_camera_centre():
    cam = random_camera()
    X = RNG.normal(0, 50, (20, 3))
    uvw = np.c_[X, np.ones(20)] @ cam.projection_matrix.T
    np.testing.assert_allclose(cam.project(X), uvw[:, :2] / uvw[:, 2:], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(cam.to_camera(cam.source_ras[None]), 0, atol=1e-9)
    np.testing.assert_allclose(invert_rigid(cam.camera_from_world) @ cam.camera_from_world, np.eye(4), atol=1e-12)


def test_detector_corners_are_pixel_edges_at_sdd():
    cam = random_camera()
    corners = cam.detector_corners_ras
    W, H = INTR.size
    np.testing.assert_allclose(cam.project(corners), [[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]], atol=1e-8)
    np.testing.assert_allclose(cam.depth(corners), INTR.source_to_detector_mm, atol=1e-8)
    # physical size of the detector
    assert np.linalg.norm(corners[1] - corners[0]) == pytest.approx(W * 0.8)
    assert np.linalg.norm(corners[3] - corners[0]) == pytest.approx(H * 1.1)
    assert cam.frustum_vertices_ras.shape == (5, 3)


def test_resized_detector_keeps_physical_rays():
    cam = random_camera()
    small = cam.resized(48, 36)
    X = RNG.normal(0, 40, (10, 3))
    uv_full, uv_small = cam.project(X), small.project(X)
    np.testing.assert_allclose(INTR.scale_pixels(uv_full, small.intrinsics), uv_small, atol=1e-9)
    np.testing.assert_allclose(small.detector_corners_ras, cam.detector_corners_ras, atol=1e-9)


def test_points_behind_source_are_nan():
    cam = random_camera()
    behind = cam.source_ras - 100 * cam.principal_axis_ras
    assert np.isnan(cam.project(behind[None])).all()






def test_renderer_conventions_round_trip():
    cam = random_camera()
    T = cam.camera_from_world
    np.testing.assert_allclose(from_diffdrr_pose(to_diffdrr(T)), T, atol=1e-12)
    k_inv, sdd, rt_inv = to_nanodrr(INTR, T)
    np.testing.assert_allclose(rt_inv, cam.world_from_camera, atol=1e-12)
    # nanodrr puts pixel centres at +0.5: its K maps the ray of OpenCV pixel (u, v) to (u + 0.5, v + 0.5)
    ray = np.linalg.inv(INTR.K) @ [10.0, 20.0, 1.0]
    np.testing.assert_allclose(np.linalg.inv(k_inv) @ ray, [10.5, 20.5, 1.0], atol=1e-9)


def test_diffdrr_detector_frame_is_opencv_rotated_about_z():
    T = to_diffdrr(np.eye(4))
    np.testing.assert_allclose(T[:3, :3], np.diag([-1, -1, 1]))
    assert np.linalg.det(T[:3, :3]) == pytest.approx(1.0)  # a rotation, never a mirror




@pytest.mark.parametrize(
    "bad, field",
    [
        ({"pixel_spacing_mm": [0.2, 0.2]}, "source_to_detector_mm"),
        ({"source_to_detector_mm": 1000}, "pixel_spacing_mm"),
        ({"source_to_detector_mm": -5, "pixel_spacing_mm": [0.2, 0.2]}, "source_to_detector_mm"),
        ({"source_to_detector_mm": 1000, "pixel_spacing_mm": [0.2, float("nan")]}, "pixel_spacing_mm[1]"),
        ({"source_to_detector_mm": 1000, "pixel_spacing_mm": [0.2, 0.2], "width": 10}, "width"),
    ],
)
def test_bad_geometry_names_the_field(bad, field):
    with pytest.raises(GeometryError, match=field.replace("[", r"\[").replace("]", r"\]")):
        Intrinsics.from_dict(bad, width=64, height=64)


def test_camera_rejects_non_rigid():
    with pytest.raises(GeometryError, match="rigid"):
        Camera(INTR, np.diag([1.0, 1.0, -1.0, 1.0]))


def test_one_geometry_parser_nested_form_and_overrides():
    base = {"source_to_detector_mm": 1000.0, "pixel_spacing_mm": [0.3, 0.3], "width": 64, "height": 48}
    assert Intrinsics.from_dict(base) == Intrinsics(1000.0, (0.3, 0.3), 64, 48)
    nested = {"final_stage": "refined", "geometry": base}  # a registration.json or a render sidecar
    assert Intrinsics.from_dict(nested) == Intrinsics.from_dict(base)
    over = Intrinsics.from_dict(base, overrides={"source_to_detector_mm": 900.0, "principal_point_px": None,
                                                 "log_transform": True})
    assert over.source_to_detector_mm == 900.0 and over.pixel_spacing_mm == (0.3, 0.3)
    assert Intrinsics.fields({"pixel_spacing_mm": 0.2}, {"geometry": {"source_to_detector_mm": 1.0}}) == {
        "pixel_spacing_mm": 0.2, "source_to_detector_mm": 1.0}
    with pytest.raises(GeometryError, match="width 64 but the image has 60"):
        Intrinsics.from_dict(nested, width=60, height=48)
    with pytest.raises(GeometryError, match="missing 'source_to_detector_mm'"):
        Intrinsics.from_dict({"geometry": {"pixel_spacing_mm": 0.2}}, 10, 10)


def test_detector_points_lie_on_the_detector_behind_each_pixel_centre():
    """``Intrinsics.detector_points_camera`` (the rays of Joseph's projector): on the plane z = SDD, projected by K onto
    the integer pixel centres, in the order of ``image.ravel()``."""
    intr = Intrinsics(900.0, (0.7, 0.9), 5, 3, (1.7, 1.2))
    pts = intr.detector_points_camera()
    assert pts.shape == (15, 3)
    np.testing.assert_allclose(pts[:, 2], 900.0)
    uv = (pts @ intr.K.T)[:, :2] / pts[:, 2:]
    v, u = np.divmod(np.arange(15), 5)
    np.testing.assert_allclose(uv, np.stack([u, v], 1), atol=1e-9)


def test_pixels_on_another_detector_from_the_same_source_are_where_that_camera_projects():
    """``Intrinsics.pixels_on``: a point's pixel on one detector maps to its pixel on another detector seen from the same
    source in the same orientation (other SDD, pixel spacing, size, principal point); the same detector maps to itself."""
    from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics, rigid, rotation_matrix

    T = rigid(rotation_matrix(np.array([0.1, -0.2, 0.05])), np.array([10.0, -20.0, 700.0]))
    a = Intrinsics(1020.0, (0.5, 0.5), 512, 512)
    b = Intrinsics(900.0, (0.6, 0.45), 300, 240, (170.0, 110.0))
    pts = np.random.default_rng(0).normal(0, 60, (20, 3))
    ua, ub = Camera(a, T).project(pts), Camera(b, T).project(pts)
    assert np.abs(a.pixels_on(ua, b) - ub).max() < 1e-9
    assert np.abs(b.pixels_on(ub, a) - ua).max() < 1e-9
    assert np.abs(a.pixels_on(ua, a) - ua).max() < 1e-12
