"""Library objects → nodes: every output of a registration or detection in the scene, all or nothing.

Owns: writing the outputs of a registration or detection into the scene, all or nothing.

Writing (or updating on a re-run) the output nodes — CT and X-ray volumes, fiducials, the camera transform
(world_from_camera), frustum models per stage, DRR / heatmap overlays on the X-ray, detected / reprojected 2D
points, the results table — and showing them in the slice views. Conventions: ``mrml/__init__.py``."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from ..geometry.camera import Camera, Intrinsics
from ..inputs.volume import CTVolume
from .nodes import (ATTR_CARM, ATTR_INTRINSICS, ATTR_MATRIX, ATTR_PIXEL_SPACING, ATTR_PRINCIPAL_POINT, ATTR_SDD,
                    ATTR_VERDICT,
                    MRMLAdapterError, _check_points, _node_label, _ensure_display, _fmt, _get_or_add, _matrix_to_vtk, _set_control_points,
                    _set_image, _vtk, _xray_grid, find_output_node, scene_transaction)
from .table import LandmarkRow, results_table_node


# RGB in [0, 1]: initial pose (PnP) orange, refined (image similarity) green, final cyan.
FRUSTUM_COLORS: dict[str, tuple[float, float, float]] = {
    "initial": (1.0, 0.55, 0.0),
    "refined": (0.1, 0.9, 0.2),
    "final": (0.0, 0.8, 1.0),
}


POINT_COLORS: dict[str, tuple[float, float, float]] = {
    "detected": (1.0, 0.9, 0.0),
    "reprojected": (1.0, 0.2, 0.8),
}


def ct_to_volume_node(scene, ct: CTVolume, name: str | None = None, node=None):
    """CTVolume → scalar volume node (new, or ``node`` updated). Voxels float32 HU, IJKToRAS = ``ct.ijk_to_ras``."""
    vtk = _vtk()
    if not isinstance(ct, CTVolume):
        raise MRMLAdapterError(f"ct_to_volume_node needs a CTVolume, got {type(ct).__name__}.")
    arr = np.ascontiguousarray(ct.hu.transpose(2, 1, 0))  # (K, J, I)
    node = _get_or_add(scene, "vtkMRMLScalarVolumeNode", None, "", name or ct.name, node)
    _set_image(node, arr, vtk.VTK_FLOAT)
    node.SetIJKToRASMatrix(_matrix_to_vtk(ct.ijk_to_ras))
    _ensure_display(node)
    return node


def xray_ijk_to_ras(intrinsics: Intrinsics, camera: Camera | None = None, slice_thickness_mm: float = 1.0) -> np.ndarray:
    """(4, 4) IJKToRAS of an X-ray volume, IJK = (u, v, 0).

    Without ``camera``: the image as stored in the Red (axial) slice view (I → −R·Δu, J → −A·Δv, K → +S), the
    image centre at the origin. With ``camera``: the pixels on that camera's detector plane in RAS (K along
    the principal axis, away from the source).
    """
    du, dv = intrinsics.pixel_spacing_mm
    if camera is None:
        M = np.diag([-du, -dv, slice_thickness_mm, 1.0])
        centre = np.array([(intrinsics.width - 1) / 2.0, (intrinsics.height - 1) / 2.0, 0.0])
        M[:3, 3] = -M[:3, :3] @ centre
        return M
    # Detector plane: X(u, v) = Rᵀ (SDD · K⁻¹ [u, v, 1] − t), affine in (u, v).
    R = camera.R
    origin = camera.pixel_to_detector_ras(np.array([[0.0, 0.0]]))[0]
    M = np.eye(4)
    M[:3, 0] = R[0] * du  # camera x (= +u) in RAS
    M[:3, 1] = R[1] * dv  # camera y (= +v) in RAS
    M[:3, 2] = R[2] * slice_thickness_mm
    M[:3, 3] = origin
    return M


def _set_geometry_attributes(node, intrinsics: Intrinsics) -> None:
    node.SetAttribute(ATTR_SDD, repr(float(intrinsics.source_to_detector_mm)))
    node.SetAttribute(ATTR_PIXEL_SPACING, _fmt(intrinsics.pixel_spacing_mm))
    node.SetAttribute(ATTR_PRINCIPAL_POINT, _fmt(intrinsics.principal_point_px))


def xray_to_volume_node(
    scene,
    pixels: np.ndarray,
    intrinsics: Intrinsics,
    name: str = "X-ray",
    camera: Camera | None = None,
    node=None,
    role: str | None = None,
    key: str = "",
    carm=None,
):
    """X-ray pixels ``(H, W)`` + intrinsics → single-slice scalar volume node with the geometry attributes.

    ``role``/``key`` mark it as an output (found again on a re-run); inputs loaded by the user have neither.
    ``carm``: the X-ray's ``carm.CarmAngles``, kept in ``ATTR_CARM`` (the registration checks its pose against them).
    """
    vtk = _vtk()
    px = np.asarray(pixels)
    if px.ndim != 2:
        raise MRMLAdapterError(f"X-ray pixels must be a 2D array (H, W), got shape {px.shape}.")
    H, W = px.shape
    if (W, H) != intrinsics.size:
        raise MRMLAdapterError(
            f"X-ray '{name}' is {W}×{H} pixels but its geometry says {intrinsics.width}×{intrinsics.height}."
        )
    if not np.isfinite(px).all():
        raise MRMLAdapterError(f"X-ray '{name}' contains NaN or infinite pixels.")
    M = xray_ijk_to_ras(intrinsics, camera)
    node = _get_or_add(scene, "vtkMRMLScalarVolumeNode", role, key, name, node)
    _set_image(node, px.astype(np.float32)[None], vtk.VTK_FLOAT)
    node.SetIJKToRASMatrix(_matrix_to_vtk(M))
    _set_geometry_attributes(node, intrinsics)
    if carm is not None:
        node.SetAttribute(ATTR_CARM, json.dumps(carm.to_dict()))
    _ensure_display(node)
    return node


def fiducials_to_markups_node(
    scene, labels: Sequence[str], ras, name: str = "Fiducials", node=None, role: str | None = None, key: str = ""
):
    """Labels + RAS points ``(N, 3)`` → point-list markups node (control points in world RAS)."""
    P = _check_points(labels, ras, f"fiducials '{name}'")
    node = _get_or_add(scene, "vtkMRMLMarkupsFiducialNode", role, key, name, node)
    _set_control_points(node, labels, P)
    _ensure_display(node)
    return node


def camera_to_transform_node(scene, camera: Camera, name: str = "X-ray camera", role: str | None = None, key: str = "", node=None):
    """Camera → linear transform node whose matrix-to-parent is ``camera.world_from_camera`` (camera → RAS).

    The intrinsics go to the ``ATTR_INTRINSICS`` attribute (JSON) so ``transform_node_to_camera`` restores it.
    """
    if not isinstance(camera, Camera):
        raise MRMLAdapterError(f"camera_to_transform_node needs a Camera, got {type(camera).__name__}.")
    M = _matrix_to_vtk(camera.world_from_camera)
    node = _get_or_add(scene, "vtkMRMLLinearTransformNode", role, key, name, node)
    node.SetMatrixTransformToParent(M)
    node.SetAttribute(ATTR_MATRIX, "world_from_camera")
    node.SetAttribute(ATTR_INTRINSICS, json.dumps(camera.intrinsics.to_dict()))
    return node


def frustum_polydata(camera: Camera, detector_surface: bool = False):
    """vtkPolyData: the 5 frustum vertices (RAS) and the 8 edge lines; optionally the detector as a quad."""
    vtk = _vtk()
    V = camera.frustum_vertices_ras
    points = vtk.vtkPoints()
    points.SetDataTypeToDouble()
    for p in V:
        points.InsertNextPoint(float(p[0]), float(p[1]), float(p[2]))
    lines = vtk.vtkCellArray()
    for a, b in Camera.FRUSTUM_EDGES:
        lines.InsertNextCell(2)
        lines.InsertCellPoint(a)
        lines.InsertCellPoint(b)
    pd = vtk.vtkPolyData()
    pd.SetPoints(points)
    pd.SetLines(lines)
    if detector_surface:
        polys = vtk.vtkCellArray()
        polys.InsertNextCell(4)
        for i in (1, 2, 3, 4):
            polys.InsertCellPoint(i)
        pd.SetPolys(polys)
    return pd


def frustum_model_node(
    scene,
    camera: Camera,
    stage: str = "final",
    name: str | None = None,
    key: str = "",
    color: tuple[float, float, float] | None = None,
    line_width: float = 3.0,
    node=None,
):
    """Camera → model node of its frustum (RAS), role ``"frustum.<stage>"``, colour ``FRUSTUM_COLORS[stage]``."""
    if not isinstance(camera, Camera):
        raise MRMLAdapterError(f"frustum_model_node needs a Camera, got {type(camera).__name__}.")
    pd = frustum_polydata(camera)
    node = _get_or_add(scene, "vtkMRMLModelNode", f"frustum.{stage}", key, name or f"Frustum ({stage})", node)
    node.SetAndObservePolyData(pd)
    node.SetAttribute(ATTR_INTRINSICS, json.dumps(camera.intrinsics.to_dict()))
    disp = _ensure_display(node)
    rgb = color or FRUSTUM_COLORS.get(stage, (1.0, 1.0, 0.0))
    disp.SetColor(*rgb)
    disp.SetLineWidth(line_width)
    disp.SetVisibility(True)
    if hasattr(disp, "SetVisibility2D"):
        disp.SetVisibility2D(False)
    return node


def overlay_to_volume_node(
    scene,
    image: np.ndarray,
    xray_node,
    role: str = "drr",
    key: str = "",
    name: str | None = None,
    color_node_id: str | None = None,
    node=None,
):
    """An image ``(h, w)`` on the X-ray's detector (DRR, heatmap, any resolution) → scalar volume node.

    Its IJKToRAS = X-ray IJKToRAS · S, S the pixel-edge-preserving map of overlay pixels to X-ray pixels
    (``u = (u' + ½)·W/w − ½``), so it lies exactly over the X-ray in any view.
    """
    vtk = _vtk()
    img = np.asarray(image)
    if img.ndim != 2:
        raise MRMLAdapterError(f"Overlay '{role}' must be a 2D array (h, w), got shape {img.shape}.")
    if not np.isfinite(img).all():
        raise MRMLAdapterError(f"Overlay '{role}' contains NaN or infinite values.")
    M_x, W, H = _xray_grid(xray_node)
    h, w = img.shape
    S = np.eye(4)
    S[0, 0], S[1, 1] = W / w, H / h
    S[0, 3], S[1, 3] = 0.5 * W / w - 0.5, 0.5 * H / h - 0.5
    M = M_x @ S
    node = _get_or_add(scene, "vtkMRMLScalarVolumeNode", role, key, name or f"{xray_node.GetName()} {role}", node)
    _set_image(node, img.astype(np.float32)[None], vtk.VTK_FLOAT)
    node.SetIJKToRASMatrix(_matrix_to_vtk(M))
    disp = _ensure_display(node)
    if color_node_id and scene.GetNodeByID(color_node_id) is not None:
        disp.SetAndObserveColorNodeID(color_node_id)
    lo, hi = float(img.min()), float(img.max())
    if hasattr(disp, "SetAutoWindowLevel"):
        disp.SetAutoWindowLevel(False)
        disp.SetWindowLevelMinMax(lo, hi if hi > lo else lo + 1.0)
    return node


def points_2d_to_markups_node(
    scene,
    uv: np.ndarray,
    labels: Sequence[str],
    xray_node,
    kind: str = "detected",
    key: str = "",
    name: str | None = None,
    node=None,
):
    """Pixels ``(N, 2)`` = (u, v) of the X-ray grid → markups points on the X-ray slice (role ``"points.<kind>"``).

    Rows with NaN (e.g. points behind the source) are skipped.
    """
    UV = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    if len(labels) != len(UV):
        raise MRMLAdapterError(f"2D points '{kind}': {len(labels)} labels for {len(UV)} points.")
    M, _, _ = _xray_grid(xray_node)
    ok = np.isfinite(UV).all(axis=1)
    ijk = np.c_[UV[ok], np.zeros(ok.sum()), np.ones(ok.sum())]
    ras = (ijk @ M.T)[:, :3]
    kept = [str(l) for l, k in zip(labels, ok) if k]
    node = _get_or_add(scene, "vtkMRMLMarkupsFiducialNode", f"points.{kind}", key, name or f"{xray_node.GetName()} {kind}", node)
    _set_control_points(node, kept, ras)
    node.SetAttribute("RayEmb.XRayNodeID", xray_node.GetID() or "")
    disp = _ensure_display(node)
    disp.SetSelectedColor(*POINT_COLORS.get(kind, (1.0, 1.0, 0.0)))
    disp.SetColor(*POINT_COLORS.get(kind, (1.0, 1.0, 0.0)))
    node.SetLocked(True)
    return node


def write_registration_outputs(scene, xray_node, result: Any, key: str | None = None) -> dict[str, Any]:
    """Write (or update) every output node of a registration result in one all-or-nothing step.

    ``result`` needs ``initial: Camera``, ``refined: Camera | None``, ``final: Camera``, ``landmarks``
    (see ``LandmarkRow.coerce``) and optionally ``drr`` ((h, w), at the final pose). Everything is
    validated and built before the scene is touched; ``key`` defaults to the X-ray node's ID.

    Returns ``{"transform", "frustum.initial", "frustum.refined" (if any), "frustum.final", "drr" (if any),
    "points.detected", "points.reprojected", "table"}`` → nodes.
    """
    if xray_node is None or scene.GetNodeByID(xray_node.GetID() or "") is not xray_node:
        raise MRMLAdapterError(f"The X-ray node {_node_label(xray_node)} is not in this scene.")
    key = xray_node.GetID() if key is None else key
    cams = {"initial": getattr(result, "initial", None), "refined": getattr(result, "refined", None), "final": getattr(result, "final", None)}
    for stage in ("initial", "final"):
        if not isinstance(cams[stage], Camera):
            raise MRMLAdapterError(f"Registration result has no '{stage}' camera.")
    if cams["refined"] is not None and not isinstance(cams["refined"], Camera):
        raise MRMLAdapterError("Registration result 'refined' must be a Camera or None.")
    rows = [LandmarkRow.coerce(x) for x in (getattr(result, "landmarks", None) or [])]
    drr = getattr(result, "drr", None)
    if drr is not None:
        drr = np.asarray(drr, dtype=np.float32)
        if drr.ndim != 2 or not np.isfinite(drr).all():
            raise MRMLAdapterError(f"Registration result 'drr' must be a finite (H, W) image, got shape {drr.shape}.")
    _xray_grid(xray_node)  # validates
    labels = [r.label for r in rows]
    det = np.array([r.detected_px for r in rows], dtype=np.float64).reshape(-1, 2)
    rep = np.array([r.reprojected_px for r in rows], dtype=np.float64).reshape(-1, 2)
    base = xray_node.GetName()

    out: dict[str, Any] = {}
    with scene_transaction(scene):
        out["transform"] = camera_to_transform_node(scene, cams["final"], f"{base} camera (final)", "camera.final", key)
        for stage, cam in cams.items():
            if cam is not None:
                out[f"frustum.{stage}"] = frustum_model_node(scene, cam, stage, f"{base} frustum ({stage})", key)
            else:
                stale = find_output_node(scene, "vtkMRMLModelNode", f"frustum.{stage}", key)
                if stale is not None:
                    stale.GetDisplayNode().SetVisibility(False) if stale.GetDisplayNode() else None
        if drr is not None:
            out["drr"] = overlay_to_volume_node(scene, drr, xray_node, "drr", key, f"{base} DRR (final)")
        out["points.detected"] = points_2d_to_markups_node(scene, det, labels, xray_node, "detected", key, f"{base} detected")
        out["points.reprojected"] = points_2d_to_markups_node(scene, rep, labels, xray_node, "reprojected", key, f"{base} reprojected")
        out["table"] = results_table_node(scene, rows, f"{base} landmarks", key)
        verdict = getattr(result, "verdict", None)
        if verdict is not None:  # a rejected pose is kept for inspection, but never looks like a success
            tag = "" if verdict.status == "accepted" else f" [{verdict.status.upper()}]"
            out["transform"].SetName(f"{base} camera (final){tag}")
            for node in out.values():
                node.SetAttribute(ATTR_VERDICT, verdict.line())
    return out


def show_in_slice_views(scene, background=None, foreground=None, opacity: float | None = None, layouts: Sequence[str] | None = None) -> int:
    """Set background/foreground volumes (and foreground opacity) of the slice views; returns how many changed.

    ``layouts``: slice view names (e.g. ``["Red"]``); all when None. A headless scene without slice views → 0.
    """
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    n = 0
    for i in range(nodes.GetNumberOfItems()):
        comp = nodes.GetItemAsObject(i)
        if layouts is not None and comp.GetLayoutName() not in layouts:
            continue
        if background is not None:
            comp.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            comp.SetForegroundVolumeID(foreground.GetID())
        if opacity is not None:
            comp.SetForegroundOpacity(float(opacity))
        n += 1
    return n


def write_detection_outputs(scene, xray_node, detection, key: str | None = None) -> dict[str, Any]:
    """Write (or update) the outputs of a ``results.DetectionResult``: the detected 2D points on the X-ray and the
    table; all or nothing. Returns ``{"points.detected", "table"}`` → nodes."""
    if xray_node is None or scene.GetNodeByID(xray_node.GetID() or "") is not xray_node:
        raise MRMLAdapterError(f"The X-ray node {_node_label(xray_node)} is not in this scene.")
    key = xray_node.GetID() if key is None else key
    rows = [LandmarkRow.coerce(r) for r in detection.rows()]
    with scene_transaction(scene):
        return {
            "points.detected": points_2d_to_markups_node(scene, detection.uv, list(detection.labels), xray_node,
                                                         "detected", key),
            "table": results_table_node(scene, rows, f"{xray_node.GetName()} landmarks", key),
        }
