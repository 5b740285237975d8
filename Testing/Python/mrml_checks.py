"""Checks of RayEmbRegistrationLib.mrml on a real MRML scene: the test bodies shared by pytest (``test_mrml.py``,
on a slicer-core scene from ``slicer_app.SlicerApp``) and by the Slicer module's self-test
(``RayEmbRegistrationTest``, on Slicer's own classes).

Each ``check_*`` takes ``(app, ct, cameras, drr[, tmp_path])``: ``app`` has ``.scene`` (a vtkMRMLScene),
``.nodes(class)``, ``.snapshot()``, ``.save_mrb(path)`` and ``.fresh()`` (a context manager giving another
such object with an empty scene, used to load a ``.mrb`` back); ``ct`` a ``CTVolume``; ``cameras`` =
``make_cameras(ct)``; ``drr`` = ``line_integral_drr(ct, cameras[0])``. Only NumPy asserts (no pytest), so the
bodies run inside Slicer. Geometry is checked against camera.py, never against numbers produced by the code
under test.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np

from RayEmbRegistrationLib import mrml
from RayEmbRegistrationLib.mrml import nodes as mrml_nodes
from RayEmbRegistrationLib.geometry.camera import Camera, GeometryError, Intrinsics, rigid, rotation_matrix
from RayEmbRegistrationLib.geometry.carm import carm_camera_from_world
from RayEmbRegistrationLib.inputs.volume import CTVolume



def line_integral_drr(ct: CTVolume, camera: Camera, n_samples: int | None = None) -> np.ndarray:
    """(H, W) line integrals of ``ct``'s attenuation seen by ``camera``: ``n_samples`` trilinear samples per ray from
    the source to each pixel centre (NumPy + SciPy only, so the checks also run in a Slicer without PyTorch). The
    adapters only need a real image at a known geometry; the project's renderers are tested elsewhere."""
    from scipy.ndimage import map_coordinates

    K = camera.intrinsics
    n = int(n_samples or 128)
    v, u = np.mgrid[0:K.height, 0:K.width]
    uv = np.c_[u.ravel(), v.ravel()].astype(float)
    src = camera.source_ras
    det = camera.pixel_to_detector_ras(uv)
    t = (np.arange(n) + 0.5) / n
    pts = src[None, None, :] + t[None, :, None] * (det - src)[:, None, :]  # (P, n, 3) RAS
    ijk = (np.c_[pts.reshape(-1, 3), np.ones(pts.shape[0] * n)] @ np.linalg.inv(ct.ijk_to_ras).T)[:, :3]
    mu = np.clip((ct.hu.astype(np.float32) + 1000.0) / 1000.0, 0.0, None) * 0.02  # 1/mm, water 0.02
    samples = map_coordinates(mu, ijk.T, order=1, mode="constant", cval=0.0).reshape(-1, n)
    step = np.linalg.norm(det - src, axis=1) / n
    return (samples.sum(axis=1) * step).reshape(K.height, K.width).astype(np.float32)


def _approx(expected, rel=1e-6, abs=1e-9):
    class _A:
        def __eq__(self, other):
            return bool(np.allclose(np.asarray(other, dtype=float), np.asarray(expected, dtype=float), rtol=rel, atol=abs))

        def __repr__(self):
            return f"approx({expected!r})"

    return _A()


@contextmanager
def _raises(exc_type, match: str | None = None):
    try:
        yield
    except exc_type as exc:
        if match is not None and not re.search(match, str(exc)):
            raise AssertionError(f"{exc_type.__name__} raised, but its message {str(exc)!r} does not match {match!r}") from exc
    else:
        raise AssertionError(f"{exc_type.__name__} was not raised")


def make_cameras(ct: CTVolume) -> tuple[Camera, Camera]:
    """A true camera (AP-ish view of the CT centre, 96×80 detector) and a perturbed 'initial' one."""
    K = Intrinsics(1020.0, (2.8, 3.1), 96, 80, (50.0, 37.5))
    T = carm_camera_from_world(10.0, -5.0, 700.0, ct.center_ras)
    dT = rigid(rotation_matrix(np.array([0.03, -0.02, 0.05])), np.array([8.0, -5.0, 20.0]))
    return Camera(K, T), Camera(K, dT @ T)


def make_drr(ct: CTVolume, cameras) -> np.ndarray:
    return line_integral_drr(ct, cameras[0], n_samples=96)


def _landmarks(ct, cam_true, cam_est, n=6):
    rng = np.random.default_rng(0)
    ras = ct.center_ras + rng.uniform(-60, 60, size=(n, 3))
    det = cam_true.project(ras)
    rep = cam_est.project(ras)
    return [(f"L{i}", ras[i], det[i], rep[i], 0.5 + 0.05 * i) for i in range(n)]


def _result(ct, cameras, drr, refined=True):
    true, initial = cameras
    return SimpleNamespace(
        initial=initial,
        refined=true if refined else None,
        final=true if refined else initial,
        landmarks=_landmarks(ct, true, true if refined else initial),
        drr=drr,
    )


def all_checks() -> list:
    """The ``check_*`` functions of this module, in file order."""
    return [f for name, f in globals().items() if name.startswith("check_") and callable(f)]


# --------------------------------------------------------------------------------------------------------
# CT
# --------------------------------------------------------------------------------------------------------


def check_ct_roundtrip_and_axis_order(app, ct):
    node = mrml.ct_to_volume_node(app.scene, ct, "CT")
    img = node.GetImageData()
    assert img.GetDimensions() == ct.shape
    # vtkImageData (i, j, k) must be hu[i, j, k]
    for i, j, k in [(0, 0, 0), (5, 17, 3), (ct.shape[0] - 1, 2, ct.shape[2] - 1), (60, 50, 56)]:
        assert img.GetScalarComponentAsDouble(i, j, k, 0) == _approx(float(ct.hu[i, j, k]))
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    np.testing.assert_allclose(mrml_nodes._vtk_to_matrix(m), ct.ijk_to_ras, atol=1e-9)
    back = mrml.volume_node_to_ct(node)
    np.testing.assert_array_equal(back.hu, ct.hu)
    np.testing.assert_allclose(back.ijk_to_ras, ct.ijk_to_ras, atol=1e-9)
    np.testing.assert_allclose(back.center_ras, ct.center_ras, atol=1e-9)


def check_ct_under_parent_transform_is_read_in_world(app, ct, cameras, drr):
    node = mrml.ct_to_volume_node(app.scene, ct, "CT")
    tf = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    T = rigid(rotation_matrix(np.array([0.0, 0.0, 0.3])), np.array([10.0, -20.0, 5.0]))
    tf.SetMatrixTransformToParent(mrml_nodes._matrix_to_vtk(T))
    node.SetAndObserveTransformNodeID(tf.GetID())
    back = mrml.volume_node_to_ct(node)
    np.testing.assert_allclose(back.ijk_to_ras, T @ ct.ijk_to_ras, atol=1e-9)


def check_ct_rejects_2d_image(app, cameras):
    px = np.zeros((80, 96), np.float32)
    node = mrml.xray_to_volume_node(app.scene, px, cameras[0].intrinsics)
    with _raises(mrml.MRMLAdapterError, match="2D image"):
        mrml.volume_node_to_ct(node)


# --------------------------------------------------------------------------------------------------------
# X-ray
# --------------------------------------------------------------------------------------------------------


def check_xray_roundtrip_geometry_attributes(app, cameras, drr):
    K = cameras[0].intrinsics
    node = mrml.xray_to_volume_node(app.scene, drr, K, "xr")
    assert node.GetImageData().GetDimensions() == (96, 80, 1)
    # pixel (u, v) is voxel (i, j) = (u, v)
    assert node.GetImageData().GetScalarComponentAsDouble(30, 11, 0, 0) == _approx(float(drr[11, 30]))
    _x = mrml.volume_node_to_xray(node)
    px, K2 = _x.pixels, _x.intrinsics
    np.testing.assert_array_equal(px, drr)
    assert K2 == K
    assert node.GetAttribute(mrml.ATTR_SDD) is not None
    # geometry fields of the module override the attributes
    _x = mrml.volume_node_to_xray(node, {"source_to_detector_mm": 900.0, "principal_point_px": (40.0, 41.0)})
    _, K3 = _x.pixels, _x.intrinsics
    assert K3.source_to_detector_mm == 900.0 and K3.principal_point_px == (40.0, 41.0)
    assert K3.pixel_spacing_mm == K.pixel_spacing_mm


def check_xray_default_placement_shows_image_as_stored_in_axial_view(app, cameras, drr):
    K = cameras[0].intrinsics
    node = mrml.xray_to_volume_node(app.scene, drr, K, "xr")
    M, W, H = mrml_nodes._xray_grid(node)
    p00, p10, p01 = ((M @ np.array([i, j, 0, 1.0]))[:3] for i, j in ((0, 0), (1, 0), (0, 1)))
    # Axial view: screen right = patient left (−R), screen up = anterior (+A).
    assert p10[0] < p00[0] and p01[1] < p00[1]
    np.testing.assert_allclose(np.linalg.norm(p10 - p00), K.pixel_spacing_mm[0])
    np.testing.assert_allclose(np.linalg.norm(p01 - p00), K.pixel_spacing_mm[1])


def check_xray_detector_placement_matches_camera(app, cameras, drr):
    cam = cameras[0]
    node = mrml.xray_to_volume_node(app.scene, drr, cam.intrinsics, "xr", camera=cam)
    M, W, H = mrml_nodes._xray_grid(node)
    uv = np.array([[0, 0], [95, 0], [95, 79], [13.5, 42.25]], dtype=float)
    ras = (np.c_[uv, np.zeros(4), np.ones(4)] @ M.T)[:, :3]
    np.testing.assert_allclose(ras, cam.pixel_to_detector_ras(uv), atol=1e-6)
    np.testing.assert_allclose(cam.project(ras), uv, atol=1e-6)


def check_xray_missing_sdd_names_the_field(app, drr):
    node = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "plain")
    import vtk

    mrml_nodes._set_image(node, drr[None], vtk.VTK_FLOAT)
    node.SetSpacing(0.3, 0.3, 1.0)
    with _raises(GeometryError, match="SDD"):
        mrml.volume_node_to_xray(node)
    K = mrml.volume_node_to_xray(node, {"source_to_detector_mm": 1000.0}).intrinsics
    assert K.pixel_spacing_mm == _approx((0.3, 0.3))
    assert K.principal_point_px == ((96 - 1) / 2, (80 - 1) / 2)


def check_xray_unit_spacing_is_missing_geometry(app, drr):
    """Slicer gives a PNG/JPG/plain-NRRD X-ray 1 mm pixels: that is no detector spacing, so it is asked for, never
    used; an explicit attribute (even 1 mm) or a GUI value is used."""
    import vtk

    node = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "png")
    mrml_nodes._set_image(node, drr[None], vtk.VTK_FLOAT)
    node.SetSpacing(1.0, 1.0, 1.0)
    assert mrml.missing_geometry(node, {"source_to_detector_mm": 1000.0}) == ["pixel_spacing_mm"]
    with _raises(GeometryError, match="pixel spacing"):
        mrml.volume_node_to_xray(node, {"source_to_detector_mm": 1000.0})
    K = mrml.volume_node_to_xray(node, {"source_to_detector_mm": 1000.0, "pixel_spacing_mm": (0.2, 0.25)}).intrinsics
    assert K.pixel_spacing_mm == _approx((0.2, 0.25))
    node.SetAttribute(mrml.ATTR_PIXEL_SPACING, "1,1")
    assert mrml.missing_geometry(node, {"source_to_detector_mm": 1000.0}) == []
    assert mrml.read_xray_geometry(node)["sources"]["pixel_spacing_mm"] == "node attributes"


def check_xray_file_with_sidecar_gets_its_geometry(app, cameras, drr, tmp_path):
    """An X-ray file loaded as Slicer loads it (no RayEmb attributes) takes SDD, pixel spacing and principal point
    from the geometry sidecar beside the file; the pixels are the file's."""
    from RayEmbRegistrationLib.inputs.xray import load_xray, save_xray

    K = cameras[0].intrinsics
    path = tmp_path / "xray.nrrd"
    save_xray(drr, K, path)
    node = app.load_volume(path)
    assert node.GetAttribute(mrml.ATTR_SDD) is None
    geo = mrml.read_xray_geometry(node)
    assert geo["sources"]["source_to_detector_mm"].startswith("sidecar")
    x = mrml.volume_node_to_xray(node)
    assert x.intrinsics == K
    np.testing.assert_array_equal(x.pixels, load_xray(path).pixels)
    (tmp_path / "xray.nrrd.json").unlink()
    assert "source_to_detector_mm" in mrml.missing_geometry(node)


def check_xray_from_rgb_vector_volume(app):
    import vtk

    node = app.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    rgb = np.zeros((1, 4, 5, 3), np.uint8)
    rgb[0, 1, 2] = (30, 60, 90)
    ns = mrml_nodes._numpy_support()
    img = vtk.vtkImageData()
    img.SetDimensions(5, 4, 1)
    a = ns.numpy_to_vtk(rgb.reshape(-1, 3), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    img.GetPointData().SetScalars(a)
    node.SetAndObserveImageData(img)
    px = mrml.volume_node_to_xray(node, {"source_to_detector_mm": 1000.0, "pixel_spacing_mm": 0.3}).pixels
    assert px.shape == (4, 5) and px[1, 2] == _approx(60.0) and px.sum() == _approx(60.0)


# --------------------------------------------------------------------------------------------------------
# Fiducials, cameras, frustum
# --------------------------------------------------------------------------------------------------------


def check_fiducials_roundtrip_world(app, ct):
    labels = ["ASIS-L", "ASIS-R", "PS"]
    ras = ct.center_ras + np.array([[60.0, 10, 20], [-60, 10, 20], [0, 40, -50]])
    node = mrml.fiducials_to_markups_node(app.scene, labels, ras, "F")
    _f = mrml.markups_node_to_fiducials(node)
    l2, r2 = _f.labels, _f.ras
    assert l2 == labels
    np.testing.assert_allclose(r2, ras, atol=1e-9)
    tf = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    tf.SetMatrixTransformToParent(mrml_nodes._matrix_to_vtk(rigid(np.eye(3), [1.0, 2.0, 3.0])))
    node.SetAndObserveTransformNodeID(tf.GetID())
    _f = mrml.markups_node_to_fiducials(node)
    _, r3 = _f.labels, _f.ras
    np.testing.assert_allclose(r3, ras + [1.0, 2.0, 3.0], atol=1e-9)
    with _raises(mrml.MRMLAdapterError, match="labels"):
        mrml.fiducials_to_markups_node(app.scene, labels[:2], ras)


def check_camera_transform_is_world_from_camera(app, cameras):
    cam = cameras[0]
    node = mrml.camera_to_transform_node(app.scene, cam, "cam")
    assert node.GetAttribute(mrml.ATTR_MATRIX) == "world_from_camera"
    tf = node.GetTransformToParent()
    # camera origin → source; a point on the principal axis at SDD → the foot of the principal point
    np.testing.assert_allclose(tf.TransformPoint(0.0, 0.0, 0.0), cam.source_ras, atol=1e-6)
    sdd = cam.intrinsics.source_to_detector_mm
    pp = np.array([cam.intrinsics.principal_point_px])
    np.testing.assert_allclose(tf.TransformPoint(0.0, 0.0, sdd), cam.pixel_to_detector_ras(pp)[0], atol=1e-6)
    back = mrml.transform_node_to_camera(node)
    np.testing.assert_allclose(back.camera_from_world, cam.camera_from_world, atol=1e-9)
    assert back.intrinsics == cam.intrinsics


def check_frustum_model_matches_camera_model(app, cameras):
    true, initial = cameras
    m_true = mrml.frustum_model_node(app.scene, true, "refined")
    m_init = mrml.frustum_model_node(app.scene, initial, "initial")
    pd = m_true.GetPolyData()
    pts = mrml_nodes._numpy_support().vtk_to_numpy(pd.GetPoints().GetData())
    np.testing.assert_allclose(pts, true.frustum_vertices_ras, atol=1e-9)
    # Source, and the detector corners project to the detector's outer pixel edges.
    np.testing.assert_allclose(pts[0], true.source_ras, atol=1e-9)
    W, H = true.intrinsics.size
    np.testing.assert_allclose(true.project(pts[1:]), [[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]], atol=1e-6)
    np.testing.assert_allclose(true.depth(pts[1:]), true.intrinsics.source_to_detector_mm, atol=1e-6)
    lines = pd.GetLines()
    assert lines.GetNumberOfCells() == len(Camera.FRUSTUM_EDGES) == 8
    ids = mrml_nodes._numpy_support().vtk_to_numpy(lines.GetConnectivityArray()).reshape(-1, 2)
    assert {tuple(sorted(e)) for e in ids.tolist()} == {tuple(sorted(e)) for e in Camera.FRUSTUM_EDGES}
    c1, c2 = m_true.GetDisplayNode().GetColor(), m_init.GetDisplayNode().GetColor()
    assert np.linalg.norm(np.subtract(c1, c2)) > 0.5


# --------------------------------------------------------------------------------------------------------
# Overlays, 2D points, table
# --------------------------------------------------------------------------------------------------------


def check_overlay_lower_resolution_covers_same_detector(app, cameras, ct):
    cam = cameras[0]
    xr = mrml.xray_to_volume_node(app.scene, np.zeros((80, 96), np.float32), cam.intrinsics, "xr", camera=cam)
    small = cam.resized(48, 40)
    drr_small = line_integral_drr(ct, small, n_samples=64)
    ov = mrml.overlay_to_volume_node(app.scene, drr_small, xr, "drr")
    M_o, w, h = mrml_nodes._xray_grid(ov)
    assert (w, h) == (48, 40)
    uv_small = np.array([[0.0, 0.0], [47.0, 39.0], [10.0, 20.0]])
    ras = (np.c_[uv_small, np.zeros(3), np.ones(3)] @ M_o.T)[:, :3]
    # each overlay pixel centre is where the same-detector camera at 48×40 puts it
    np.testing.assert_allclose(ras, small.pixel_to_detector_ras(uv_small), atol=1e-6)
    np.testing.assert_allclose(cam.project(ras), small.intrinsics.scale_pixels(uv_small, cam.intrinsics), atol=1e-6)
    # the overlay DRR and a full-resolution DRR agree where they overlap (real image content, same place)
    full = line_integral_drr(ct, cam, n_samples=64)
    down = full.reshape(40, 2, 48, 2).mean(axis=(1, 3))
    assert np.corrcoef(down.ravel(), drr_small.ravel())[0, 1] > 0.95


def check_points_2d_roundtrip_on_xray_slice(app, cameras, ct, drr):
    cam = cameras[0]
    xr = mrml.xray_to_volume_node(app.scene, drr, cam.intrinsics, "xr")
    uv = np.array([[3.0, 4.0], [50.5, 60.25], [np.nan, np.nan], [95.0, 79.0]])
    node = mrml.points_2d_to_markups_node(app.scene, uv, ["a", "b", "behind", "d"], xr, "detected")
    labels, uv2 = mrml.markups_node_to_points_2d(node, xr)
    assert labels == ["a", "b", "d"]
    np.testing.assert_allclose(uv2, uv[[0, 1, 3]], atol=1e-9)
    # points lie on the X-ray's slice (K = 0)
    _f = mrml.markups_node_to_fiducials(node)
    _, ras = _f.labels, _f.ras
    ijk = np.c_[ras, np.ones(3)] @ np.linalg.inv(mrml_nodes._xray_grid(xr)[0]).T
    np.testing.assert_allclose(ijk[:, 2], 0.0, atol=1e-9)


def check_results_table(app, ct, cameras):
    rows = _landmarks(ct, *cameras)
    node = mrml.results_table_node(app.scene, rows)
    assert node.GetNumberOfRows() == len(rows)
    assert [node.GetColumnName(i) for i in range(node.GetNumberOfColumns())] == list(mrml.RESULT_COLUMNS)
    back = mrml.table_node_to_rows(node)
    for r, b in zip(rows, back):
        assert b.label == r[0]
        np.testing.assert_allclose(b.ras, r[1])
        np.testing.assert_allclose(b.detected_px, r[2])
        assert b.error_px == _approx(float(np.linalg.norm(np.subtract(r[2], r[3]))))


# --------------------------------------------------------------------------------------------------------
# Output rules and scene files
# --------------------------------------------------------------------------------------------------------


def _inputs(app, ct, cameras, drr):
    ct_node = mrml.ct_to_volume_node(app.scene, ct, "CT")
    xr = mrml.xray_to_volume_node(app.scene, drr, cameras[0].intrinsics, "X-ray")
    fid = mrml.fiducials_to_markups_node(app.scene, ["a", "b"], ct.center_ras + [[10.0, 0, 0], [0, 10.0, 0]], "F")
    return ct_node, xr, fid


def check_rerun_updates_outputs_and_leaves_inputs_untouched(app, ct, cameras, drr):
    ct_node, xr, fid = _inputs(app, ct, cameras, drr)
    mtimes = [n.GetMTime() for n in (ct_node, xr, fid)]
    attrs = sorted(xr.GetAttributeNames())
    mrml.volume_node_to_ct(ct_node)
    mrml.volume_node_to_xray(xr)
    mrml.markups_node_to_fiducials(fid)
    out1 = mrml.write_registration_outputs(app.scene, xr, _result(ct, cameras, drr))
    n_nodes = app.scene.GetNumberOfNodes()
    assert set(out1) >= {"transform", "frustum.initial", "frustum.refined", "frustum.final", "drr", "points.detected", "points.reprojected", "table"}

    # re-run with another pose: same nodes (IDs), new content, no duplicates
    moved = Camera(cameras[0].intrinsics, rigid(rotation_matrix(np.array([0.0, 0.1, 0.0])), [5.0, 0, 0]) @ cameras[0].camera_from_world)
    res2 = _result(ct, (moved, cameras[1]), drr)
    out2 = mrml.write_registration_outputs(app.scene, xr, res2)
    assert app.scene.GetNumberOfNodes() == n_nodes
    assert {k: v.GetID() for k, v in out1.items()} == {k: v.GetID() for k, v in out2.items()}
    pts = mrml_nodes._numpy_support().vtk_to_numpy(out2["frustum.final"].GetPolyData().GetPoints().GetData())
    np.testing.assert_allclose(pts, moved.frustum_vertices_ras, atol=1e-9)
    np.testing.assert_allclose(mrml.transform_node_to_camera(out2["transform"]).camera_from_world, moved.camera_from_world, atol=1e-9)
    assert len(app.nodes("vtkMRMLModelNode")) == 3

    # inputs untouched
    assert [n.GetMTime() for n in (ct_node, xr, fid)] == mtimes
    assert sorted(xr.GetAttributeNames()) == attrs

    # a second X-ray gets its own outputs
    xr2 = mrml.xray_to_volume_node(app.scene, drr, cameras[0].intrinsics, "X-ray 2")
    out3 = mrml.write_registration_outputs(app.scene, xr2, _result(ct, cameras, drr))
    assert out3["table"].GetID() != out2["table"].GetID()
    assert len(app.nodes("vtkMRMLTableNode")) == 2


def check_failure_leaves_scene_unchanged(app, ct, cameras, drr):
    _, xr, _ = _inputs(app, ct, cameras, drr)
    mrml.write_registration_outputs(app.scene, xr, _result(ct, cameras, drr))
    before = app.snapshot()
    bad_drr = drr.copy()
    bad_drr[3, 3] = np.nan
    for bad in (
        SimpleNamespace(**{**vars(_result(ct, cameras, drr)), "drr": bad_drr}),
        SimpleNamespace(**{**vars(_result(ct, cameras, drr)), "landmarks": [("x", [1, 2], [0, 0], [0, 0], 1.0)]}),
        SimpleNamespace(**{**vars(_result(ct, cameras, drr)), "final": None}),
    ):
        with _raises(mrml.MRMLAdapterError):
            mrml.write_registration_outputs(app.scene, xr, bad)
        assert app.snapshot() == before
    # a failure inside the all-or-nothing block removes what it added
    n = app.scene.GetNumberOfNodes()
    with _raises(RuntimeError):
        with mrml.scene_transaction(app.scene):
            mrml.frustum_model_node(app.scene, cameras[1], "initial", key="other")
            raise RuntimeError("boom")
    assert app.scene.GetNumberOfNodes() == n
    assert mrml.find_output_node(app.scene, "vtkMRMLModelNode", "frustum.initial", "other") is None


def check_mrb_save_and_load_keeps_nodes(app, ct, cameras, drr, tmp_path):
    _, xr, _ = _inputs(app, ct, cameras, drr)
    res = _result(ct, cameras, drr)
    mrml.write_registration_outputs(app.scene, xr, res)
    key = xr.GetID()
    path = tmp_path / "scene.mrb"
    app.save_mrb(path)
    assert path.stat().st_size > 10_000
    with app.fresh() as app2:
        app2.load_mrb(path)
        s = app2.scene
        ct2 = mrml.volume_node_to_ct(s.GetFirstNodeByName("CT"))
        np.testing.assert_array_equal(ct2.hu, ct.hu)
        np.testing.assert_allclose(ct2.ijk_to_ras, ct.ijk_to_ras, atol=1e-6)
        xr2 = s.GetFirstNodeByName("X-ray")
        _x = mrml.volume_node_to_xray(xr2)
        px, K = _x.pixels, _x.intrinsics
        np.testing.assert_array_equal(px, drr)
        assert K == cameras[0].intrinsics
        cam = mrml.transform_node_to_camera(mrml.find_output_node(s, "vtkMRMLLinearTransformNode", "camera.final", key))
        np.testing.assert_allclose(cam.camera_from_world, res.final.camera_from_world, atol=1e-6)
        for stage in ("initial", "refined", "final"):
            m = mrml.find_output_node(s, "vtkMRMLModelNode", f"frustum.{stage}", key)
            assert m is not None, stage
            pts = mrml_nodes._numpy_support().vtk_to_numpy(m.GetPolyData().GetPoints().GetData())
            np.testing.assert_allclose(pts, getattr(res, stage).frustum_vertices_ras, atol=1e-3)
        rows = mrml.table_node_to_rows(mrml.find_output_node(s, "vtkMRMLTableNode", "table", key))
        assert [r.label for r in rows] == [r[0] for r in res.landmarks]
        # Slicer writes tables as TSV with 6 significant digits: enough for a results table.
        np.testing.assert_allclose([r.detected_px for r in rows], [r[2] for r in res.landmarks], rtol=1e-5)
        det = mrml.find_output_node(s, "vtkMRMLMarkupsFiducialNode", "points.detected", key)
        _, uv = mrml.markups_node_to_points_2d(det, xr2)
        np.testing.assert_allclose(uv, [r[2] for r in res.landmarks], atol=1e-6)
        _f = mrml.markups_node_to_fiducials(s.GetFirstNodeByName("F"))
        labels, _ = _f.labels, _f.ras
        assert labels == ["a", "b"]
        # the loaded scene's outputs are found again and updated on a re-run, not duplicated
        n = s.GetNumberOfNodes()
        mrml.write_registration_outputs(s, xr2, res)
        assert s.GetNumberOfNodes() == n


def check_xray_node_keeps_carm_angles_and_converts_raw_intensity(app, cameras, drr):
    """C-arm angles written with the X-ray come back with it (so the registration checks them, also in Slicer);
    a raw-intensity image (bone dark) is log-transformed exactly as ``xray.intensity_to_line_integral``."""
    from RayEmbRegistrationLib.geometry.carm import CarmAngles
    from RayEmbRegistrationLib.inputs.xray import intensity_to_line_integral

    K = cameras[0].intrinsics
    node = mrml.xray_to_volume_node(app.scene, drr, K, "xr", carm=CarmAngles(15.0, -5.0, 700.0))
    x = mrml.volume_node_to_xray(node)
    assert x.carm == CarmAngles(15.0, -5.0, 700.0) and x.intrinsics == K
    raw = np.exp(-drr).astype(np.float32) * 1000.0
    rnode = mrml.xray_to_volume_node(app.scene, raw, K, "raw")
    xr = mrml.volume_node_to_xray(rnode, raw_intensity=True)
    np.testing.assert_allclose(xr.pixels, intensity_to_line_integral(raw.astype(np.float64)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(mrml.volume_node_to_xray(rnode).pixels, raw)  # the node itself is unchanged
    assert xr.carm is None


def check_missing_geometry_names_what_the_gui_must_give(app, drr):
    import vtk

    node = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "plain")
    mrml_nodes._set_image(node, drr[None], vtk.VTK_FLOAT)
    node.SetSpacing(0.0, 0.0, 1.0)
    assert mrml.missing_geometry(node) == ["source_to_detector_mm", "pixel_spacing_mm"]
    assert mrml.missing_geometry(node, {"source_to_detector_mm": 1000.0}) == ["pixel_spacing_mm"]
    assert mrml.missing_geometry(node, {"source_to_detector_mm": 1000.0, "pixel_spacing_mm": (0.3, 0.3)}) == []
    node.SetSpacing(0.3, 0.3, 1.0)
    assert mrml.missing_geometry(node) == ["source_to_detector_mm"]


def check_detection_outputs_points_and_table(app, ct, cameras, drr):
    from RayEmbRegistrationLib.results import DetectionResult

    cam = cameras[0]
    xr = mrml.xray_to_volume_node(app.scene, drr, cam.intrinsics, "xr")
    ras = ct.center_ras + np.array([[0.0, 0.0, 0.0], [20.0, 0.0, -10.0]])
    det = DetectionResult(["a", "b"], ras, cam.project(ras), np.array([0.9, 0.4]))
    out = mrml.write_detection_outputs(app.scene, xr, det)
    labels, uv = mrml.markups_node_to_points_2d(out["points.detected"], xr)
    assert labels == ["a", "b"]
    np.testing.assert_allclose(uv, cam.project(ras), atol=1e-6)
    rows = mrml.table_node_to_rows(out["table"])
    assert [r.label for r in rows] == ["a", "b"] and rows[1].confidence == _approx(0.4)
    n = app.scene.GetNumberOfNodes()
    out2 = mrml.write_detection_outputs(app.scene, xr, det)  # a re-run updates, never duplicates
    assert app.scene.GetNumberOfNodes() == n and out2["table"] is out["table"]


def check_registration_outputs_carry_the_verdict(app, ct, cameras, drr):
    """A rejected registration's nodes say so (name and attribute), so it never looks like a success."""
    from RayEmbRegistrationLib.registration.verdict import Verdict

    cam0, cam1 = cameras
    xr = mrml.xray_to_volume_node(app.scene, drr, cam0.intrinsics, "xr")
    res = SimpleNamespace(initial=cam1, refined=None, final=cam1, landmarks=[], drr=None,
                          verdict=Verdict("rejected", ("the DRR does not match",)))
    out = mrml.write_registration_outputs(app.scene, xr, res)
    assert out["transform"].GetName().endswith("[REJECTED]")
    assert all(n.GetAttribute(mrml.ATTR_VERDICT) == "rejected: the DRR does not match" for n in out.values())
    res.verdict = Verdict("accepted")
    out = mrml.write_registration_outputs(app.scene, xr, res)
    assert out["transform"].GetName() == "xr camera (final)" and out["table"].GetAttribute(mrml.ATTR_VERDICT) == "accepted"


def run_check(check, **fixtures):
    """Call ``check`` with the fixtures its signature names (``app``, ``ct``, ``cameras``, ``drr``, ``tmp_path``)."""
    import inspect

    names = inspect.signature(check).parameters
    return check(**{n: fixtures[n] for n in names})
