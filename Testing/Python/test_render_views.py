"""Offscreen renders of what the module shows, from a REAL slicer-core scene (VTK EGL, no display needed):

* a 3D view: the CT's bone surface (flying edges on the CT volume node's voxels, placed by its IJKToRAS) and the
  initial/final frustum model nodes, drawn with their display nodes' colours; the frustum's pixels are checked
  against the camera model (source, detector corners and edge points projected by the VTK camera must have the
  frustum colour; pixels away from it must not);
* a 2D slice view rendered by Slicer's own ``vtkMRMLSliceLogic``: the X-ray volume node as background, the DRR
  overlay (green) as foreground, plus detected/reprojected landmarks; the slice image is checked against the
  X-ray pixels (orientation: the image as stored).

PNGs go to ``Testing/Artifacts/`` (only there: a test never writes into the source tree);
``scripts/screenshots.sh`` runs this file and copies them to ``docs/screenshots/`` for the README.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("slicer", reason="slicer-core wheel not installed")
vtk = pytest.importorskip("vtk")

import mrml_checks  # noqa: E402
from mrml_checks import line_integral_drr  # noqa: E402
from slicer_app import SlicerApp  # noqa: E402

from RayEmbRegistrationLib import mrml  # noqa: E402
from RayEmbRegistrationLib.mrml import nodes as mrml_nodes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "Testing" / "Artifacts"
W3D, H3D = 640, 480


def _save_png(rgb: np.ndarray, name: str) -> Path:
    from PIL import Image

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    Image.fromarray(rgb).save(path)
    return path


def _grab(render_window) -> np.ndarray:
    """(H, W, 3) uint8, row 0 at the top."""
    from vtk.util.numpy_support import vtk_to_numpy

    w2i = vtk.vtkWindowToImageFilter()
    w2i.SetInput(render_window)
    w2i.ReadFrontBufferOff()
    w2i.Update()
    img = w2i.GetOutput()
    w, h, _ = img.GetDimensions()
    a = vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[:, :, :3]
    return np.ascontiguousarray(a[::-1])


@pytest.fixture(scope="module")
def scene_with_results(sample_ct):
    """A scene as the module leaves it after a registration (outputs written by mrml.write_registration_outputs)."""
    app = SlicerApp()
    cameras = mrml_checks.make_cameras(sample_ct)
    true, initial = cameras
    drr = mrml_checks.make_drr(sample_ct, cameras)
    ct_node = mrml.ct_to_volume_node(app.scene, sample_ct, "CT")
    xr = mrml.xray_to_volume_node(app.scene, drr, true.intrinsics, "X-ray")
    res = mrml_checks._result(sample_ct, cameras, line_integral_drr(sample_ct, true.resized(48, 40), n_samples=64))
    res.refined = None
    out = mrml.write_registration_outputs(app.scene, xr, res)
    yield app, ct_node, xr, out, cameras, drr
    app.close()


def _bone_actor(ct_node, hu: float = 250.0):
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(ct_node.GetImageData())  # voxel (i, j, k) space, spacing 1, origin 0
    fe.SetValue(0, hu)
    m = vtk.vtkMatrix4x4()
    ct_node.GetIJKToRASMatrix(m)
    tf = vtk.vtkTransform()
    tf.SetMatrix(m)
    tpd = vtk.vtkTransformPolyDataFilter()
    tpd.SetInputConnection(fe.GetOutputPort())
    tpd.SetTransform(tf)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(tpd.GetOutputPort())
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(normals.GetOutputPort())
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(0.93, 0.88, 0.78)
    return actor


def _model_actor(model_node):
    """A model node drawn as Slicer would: its polydata, display colour, line width; lines unlit."""
    disp = model_node.GetDisplayNode()
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(model_node.GetPolyData())
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    prop = actor.GetProperty()
    prop.SetColor(*disp.GetColor())
    prop.SetLineWidth(disp.GetLineWidth() + 1)
    prop.SetLighting(False)
    actor.SetVisibility(bool(disp.GetVisibility()))
    return actor


def _near_colour(img: np.ndarray, xy, rgb, radius: int = 2, tol: float = 40.0) -> bool:
    x, y = int(round(xy[0])), int(round(xy[1]))
    patch = img[max(0, y - radius): y + radius + 1, max(0, x - radius): x + radius + 1].astype(float)
    return bool((np.linalg.norm(patch - np.asarray(rgb) * 255.0, axis=-1) < tol).any())


def _render_3d(ct_node, model_nodes, camera, zoom: float):
    """Offscreen 3D view of the CT's bone and ``model_nodes``, looking from the patient's left, anterior and above at
    the middle of ``camera``'s frustum → ``(renderer, its render window, (H, W, 3) image)``; keep the window while the
    renderer converts world points to display points."""
    ren = vtk.vtkRenderer()
    ren.SetBackground(0.08, 0.1, 0.16)
    ren.AddActor(_bone_actor(ct_node))
    for node in model_nodes:
        ren.AddActor(_model_actor(node))
    rw = vtk.vtkRenderWindow()
    rw.SetOffScreenRendering(1)
    rw.SetSize(W3D, H3D)
    rw.AddRenderer(ren)
    cam = ren.GetActiveCamera()
    centre = camera.frustum_vertices_ras.mean(axis=0)
    cam.SetFocalPoint(*centre)
    cam.SetPosition(*(centre + np.array([-1700.0, 1100.0, 1000.0])))
    cam.SetViewUp(0.0, 0.0, 1.0)
    cam.Zoom(zoom)
    ren.ResetCameraClippingRange()
    rw.Render()
    return ren, rw, _grab(rw)


def test_3d_view_ct_and_frusta(scene_with_results):
    app, ct_node, xr, out, (true, initial), _ = scene_with_results
    frusta = {stage: out[f"frustum.{stage}"] for stage in ("initial", "final")}
    ren, _window, img = _render_3d(ct_node, frusta.values(), true, 1.5)
    path = _save_png(img, "view3d_ct_frustum.png")
    assert path.stat().st_size > 5000

    def to_px(p):
        ren.SetWorldPoint(float(p[0]), float(p[1]), float(p[2]), 1.0)
        ren.WorldToDisplay()
        x, y, _ = ren.GetDisplayPoint()
        return x, H3D - 1 - y  # display y is bottom-up

    colour = frusta["final"].GetDisplayNode().GetColor()
    V = true.frustum_vertices_ras
    checks = [V[0], *V[1:]]  # source and the 4 detector corners
    for a, b in ((1, 2), (2, 3), (3, 4), (4, 1)):
        checks.append(0.5 * (V[a] + V[b]))  # detector edges
    for c in range(1, 5):
        checks.append(V[0] + 0.1 * (V[c] - V[0]))  # source-to-corner edges near the source
    hits = [_near_colour(img, to_px(p), colour) for p in checks]
    assert all(hits), f"frustum colour missing at checks {[i for i, h in enumerate(hits) if not h]}"
    # the projected geometry spans the image sensibly (all check points inside the view)
    pts = np.array([to_px(p) for p in checks])
    assert (pts[:, 0] > 0).all() and (pts[:, 0] < W3D).all() and (pts[:, 1] > 0).all() and (pts[:, 1] < H3D).all()
    # away from the frustum there is no frustum colour: a point 120 mm beyond the source, off-axis
    off = V[0] - 120.0 * true.principal_axis_ras + 120.0 * true.R[0]
    assert not _near_colour(img, to_px(off), colour, radius=1)
    # the initial frustum is drawn too, in its own colour
    c_init = frusta["initial"].GetDisplayNode().GetColor()
    assert _near_colour(img, to_px(initial.source_ras), c_init, radius=3)
    # the bone is visible (bone-coloured pixels near the CT centre)
    cx, cy = to_px(ct_node and mrml.volume_node_to_ct(ct_node).center_ras)
    patch = img[int(cy) - 40: int(cy) + 40, int(cx) - 40: int(cx) + 40].astype(float)
    assert (np.linalg.norm(patch - [230, 220, 195], axis=-1) < 90).mean() > 0.05


def _render_slice(red, xr, width: int, height: int):
    """The Red slice view (``red``, a slice logic) fitted to the X-ray node ``xr``, rendered by Slicer's own slice
    logic → ``(rgb (h, w, 3) uint8 row 0 at the top, xy_to_ras (4, 4), u, v, inside)``: for every view pixel, the
    X-ray pixel (u, v) it shows and whether it lies on the X-ray."""
    from vtk.util.numpy_support import vtk_to_numpy

    sn = red.GetSliceNode()
    sn.SetDimensions(width, height, 1)
    sn.RotateToVolumePlane(xr)
    red.FitSliceToAll()
    producer = red.GetImageDataConnection().GetProducer()
    producer.Update()
    img = producer.GetOutputDataObject(0)
    w, h, _ = img.GetDimensions()
    rgba = vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)
    rgb = np.ascontiguousarray(rgba[::-1, :, :3]).astype(np.uint8)
    # slice pixel (x, y) (VTK, bottom-up) → RAS → X-ray IJK: the X-ray pixel the view shows there
    xy_to_ras = np.array([[sn.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    M, W, H = mrml_nodes._xray_grid(xr)
    ys, xs = np.mgrid[0:h, 0:w]
    xy = np.stack([xs.ravel(), (h - 1 - ys).ravel(), np.zeros(xs.size), np.ones(xs.size)], axis=1)
    ijk = xy @ (np.linalg.inv(M) @ xy_to_ras).T
    u, v = np.rint(ijk[:, 0]).astype(int), np.rint(ijk[:, 1]).astype(int)
    return rgb, xy_to_ras, u, v, (u >= 0) & (u < W) & (v >= 0) & (v < H)


def test_slice_view_xray_with_overlay(scene_with_results):
    from PIL import Image, ImageDraw

    app, ct_node, xr, out, (true, initial), drr = scene_with_results
    red = app.slice_logics.get("Red") or app.add_slice_view("Red")
    ov = out["drr"]
    ov.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeGreen")
    assert mrml.show_in_slice_views(app.scene, xr, ov, 0.4) == 1
    rgb, xy_to_ras, u, v, inside = _render_slice(red, xr, 96 * 4, 80 * 4)
    h, w = rgb.shape[:2]
    assert mrml_nodes._xray_grid(xr)[1:] == (96, 80)
    assert inside.mean() > 0.8, "the X-ray should fill most of the fitted slice view"
    shown = rgb.reshape(-1, 3)[inside].astype(float)
    # the red channel carries only the X-ray (the overlay is green): it must follow the X-ray's pixels
    corr = np.corrcoef(shown[:, 0], drr[v[inside], u[inside]])[0, 1]
    assert corr > 0.9, f"slice view does not show the X-ray as stored (corr {corr:.2f})"
    # the overlay adds green
    assert shown[:, 1].mean() > shown[:, 0].mean() + 5
    # image as stored: pixel (0, 0) is at the top-left of the view
    top_left = np.argwhere(inside.reshape(h, w))[0]
    assert top_left[0] < h // 4 and top_left[1] < w // 4

    # landmarks (the markups of the module) drawn where the slice view puts them
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    inv = np.linalg.inv(xy_to_ras)
    for kind, colour in (("detected", (255, 230, 0)), ("reprojected", (255, 50, 200))):
        _f = mrml.markups_node_to_fiducials(out[f"points.{kind}"])
        _, ras = _f.labels, _f.ras
        for p in ras:
            x, y = (inv @ np.r_[p, 1.0])[:2]
            y = h - 1 - y
            if kind == "detected":
                draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=colour, width=2)
            else:
                draw.line([x - 5, y, x + 5, y], fill=colour, width=2)
                draw.line([x, y - 5, x, y + 5], fill=colour, width=2)
    # the detected points of the true camera land on the projected landmark pixels of the X-ray grid
    _, uv = mrml.markups_node_to_points_2d(out["points.detected"], xr)
    labels_ras = np.array([r[1] for r in mrml_checks._result(mrml.volume_node_to_ct(ct_node), (true, initial), drr).landmarks])
    np.testing.assert_allclose(uv, true.project(labels_ras), atol=1e-6)
    path = _save_png(np.asarray(canvas), "slice_xray_overlay.png")
    assert path.stat().st_size > 5000


def test_walkthrough_views_of_a_real_registration(tmp_path):
    """docs/slicer.md's walkthrough pictures: the sample CT and the sample X-ray loaded from their files, three
    fiducials, Register through the module's workflow — then the Red slice view (X-ray, DRR at the found pose in
    green, the fiducials' reprojections) and a 3D view (bone, initial and final frusta) rendered from that scene.
    Checked: the slice view shows the X-ray as stored; the final frustum's source is drawn in its colour."""
    from PIL import Image, ImageDraw

    from RayEmbRegistrationLib.mrml.workflow import ModuleInputs, Workflow
    from RayEmbRegistrationLib.resources import SAMPLE_CT, SAMPLE_XRAY

    with SlicerApp() as app:
        ct_node, xr = app.load_volume(str(SAMPLE_CT)), app.load_volume(str(SAMPLE_XRAY))
        flow = Workflow(app.scene)
        inp = ModuleInputs(ct_node=ct_node, xray_node=xr)
        ct = flow.ct(inp)
        pts = ct.sample_bone_points(3, np.random.default_rng(1))
        inp.fiducials_node = mrml.fiducials_to_markups_node(app.scene, ["F-1", "F-2", "F-3"], pts, "F")
        result = flow.register(inp)
        out = flow.outputs
        assert result.verdict.status == "accepted"

        # Red slice view, as RayEmbRegistrationLogic.showOutputs sets it up
        red = app.add_slice_view("Red")
        out["drr"].GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeGreen")
        mrml.show_in_slice_views(app.scene, xr, out["drr"], 0.35)
        rgb, xy_to_ras, u, v, inside = _render_slice(red, xr, 512, 512)
        h = rgb.shape[0]
        pixels = mrml.volume_node_to_xray(xr).pixels
        corr = np.corrcoef(rgb.reshape(-1, 3)[inside][:, 0].astype(float), pixels[v[inside], u[inside]])[0, 1]
        assert corr > 0.9, corr
        canvas = Image.fromarray(rgb)
        draw = ImageDraw.Draw(canvas)
        inv = np.linalg.inv(xy_to_ras)
        for p in mrml.markups_node_to_fiducials(out["points.reprojected"]).ras:
            x, y = (inv @ np.r_[p, 1.0])[:2]
            y = h - 1 - y
            draw.line([x - 6, y, x + 6, y], fill=(255, 50, 200), width=2)
            draw.line([x, y - 6, x, y + 6], fill=(255, 50, 200), width=2)
        _save_png(np.asarray(canvas), "walkthrough_slice.png")

        # 3D view: bone and the initial / final frusta
        final = result.final
        ren, _window, img3 = _render_3d(ct_node, [out["frustum.initial"], out["frustum.final"]], final, 1.4)
        ren.SetWorldPoint(*final.source_ras, 1.0)
        ren.WorldToDisplay()
        x, y, _ = ren.GetDisplayPoint()
        assert _near_colour(img3, (x, H3D - 1 - y), out["frustum.final"].GetDisplayNode().GetColor(), radius=3)
        _save_png(img3, "walkthrough_3d.png")
