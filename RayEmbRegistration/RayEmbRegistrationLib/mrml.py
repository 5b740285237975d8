"""Adapters between RayEmbRegistrationLib objects and a GIVEN MRML scene (3D Slicer or the slicer-core wheel).

Owns: every conversion between the library's NumPy objects (``CTVolume``, X-ray pixels + ``Intrinsics``,
fiducial labels + RAS points, ``Camera``, DRRs, heatmaps, per-landmark results) and MRML nodes, and the rules
for output nodes (found again and updated on a re-run, never duplicated; inputs never modified; a failure
leaves the scene as it was). The scene is always an argument: nothing here touches ``slicer.mrmlScene``,
``slicer.app``, Qt or the GUI, so the same code runs inside Slicer and on a headless slicer-core scene.
``vtk`` and ``slicer`` are imported lazily, inside the functions.

Frames and conventions (geometry itself is ``camera.py``'s):

* World = RAS mm = Slicer's world. A node under a parent transform is read in world coordinates.
* CT volume node: ``CTVolume.hu[i, j, k]`` ↔ vtkImageData scalars, whose NumPy view is ``(k, j, i)``;
  ``CTVolume.ijk_to_ras`` ↔ the node's IJKToRAS matrix.
* X-ray volume node: a single-slice volume, ``pixels[v, u]`` at IJK ``(i, j, k) = (u, v, 0)`` (column, row),
  so pixel coordinates of the library are the node's I, J voxel coordinates. Its IJKToRAS places it either
  (default) so that the Red (axial) slice view shows the image as stored (row 0 at the top, column 0 on the
  left: I → −R·Δu, J → −A·Δv, like Slicer shows a 2D PNG), or, given a ``Camera``, on that camera's detector
  plane in RAS. The detector geometry is stored as node attributes (``ATTR_SDD``, ``ATTR_PIXEL_SPACING``,
  ``ATTR_PRINCIPAL_POINT``, plain numbers separated by commas) and read back by ``volume_node_to_xray``.
* Camera transform node: the matrix-to-parent is **world_from_camera** (OpenCV camera frame → RAS), i.e. the
  pose of the X-ray source in Slicer's world, the usual "ToolToReference" convention of Slicer transforms:
  anything built in camera coordinates and placed under this transform appears where the camera sees it.
  The intrinsics are stored in the attribute ``ATTR_INTRINSICS`` (JSON), so ``transform_node_to_camera``
  restores the whole ``Camera``.
* Frustum model node: the 5 vertices of ``Camera.frustum_vertices_ras`` (source, then the 4 detector corners)
  in RAS, with the 8 line cells of ``Camera.FRUSTUM_EDGES``; colours per stage in ``FRUSTUM_COLORS``.
* 2D points (detected / reprojected landmarks, pixels ``(u, v)`` of the X-ray grid) are control points placed
  on the X-ray volume's slice: RAS = IJKToRAS · (u, v, 0, 1); ``markups_node_to_points_2d`` inverts it.
* Overlay volumes (DRR, heatmaps) with a different pixel grid cover the same detector: their IJKToRAS is the
  X-ray's composed with the pixel-edge-preserving scaling of ``Intrinsics.resized``.

Output nodes carry ``ATTR_ROLE`` (what they are, e.g. ``"frustum.initial"``) and ``ATTR_KEY`` (which input
they belong to, normally the X-ray node's ID); ``find_output_node`` finds them again after a re-run or after a
scene was saved to ``.mrb`` and loaded back.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .camera import Camera, GeometryError, Intrinsics
from .volume import CTVolume

__all__ = [
    "MRMLAdapterError",
    "ATTR_ROLE",
    "ATTR_KEY",
    "ATTR_SDD",
    "ATTR_PIXEL_SPACING",
    "ATTR_PRINCIPAL_POINT",
    "ATTR_INTRINSICS",
    "ATTR_MATRIX",
    "FRUSTUM_COLORS",
    "RESULT_COLUMNS",
    "LandmarkRow",
    "array_from_volume_node",
    "ct_to_volume_node",
    "volume_node_to_ct",
    "xray_to_volume_node",
    "xray_ijk_to_ras",
    "volume_node_to_xray",
    "read_xray_geometry",
    "fiducials_to_markups_node",
    "markups_node_to_fiducials",
    "camera_to_transform_node",
    "transform_node_to_camera",
    "frustum_polydata",
    "frustum_model_node",
    "overlay_to_volume_node",
    "points_2d_to_markups_node",
    "markups_node_to_points_2d",
    "results_table_node",
    "table_node_to_rows",
    "find_output_node",
    "scene_transaction",
    "write_registration_outputs",
    "show_in_slice_views",
    "save_scene_mrb",
    "load_scene_mrb",
]

ATTR_ROLE = "RayEmb.Role"
ATTR_KEY = "RayEmb.Key"
ATTR_SDD = "RayEmb.SourceToDetectorMM"
ATTR_PIXEL_SPACING = "RayEmb.PixelSpacingMM"
ATTR_PRINCIPAL_POINT = "RayEmb.PrincipalPointPx"
ATTR_INTRINSICS = "RayEmb.Intrinsics"
ATTR_MATRIX = "RayEmb.Matrix"  # always "world_from_camera" on camera transform nodes

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

RESULT_COLUMNS = (
    "Label",
    "R",
    "A",
    "S",
    "Detected u",
    "Detected v",
    "Reprojected u",
    "Reprojected v",
    "Error px",
    "Confidence",
)


class MRMLAdapterError(ValueError):
    """A node that cannot be converted (the message names the node, the problem and what to do)."""


# ------------------------------------------------------------------------------------------------------------
# Small VTK helpers (lazy imports)
# ------------------------------------------------------------------------------------------------------------


def _vtk():
    import vtk  # noqa: PLC0415  (lazy by design: only this module may import vtk, and only when used)

    return vtk


def _numpy_support():
    from vtk.util import numpy_support  # noqa: PLC0415

    return numpy_support


def _matrix_to_vtk(M: np.ndarray):
    vtk = _vtk()
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(M[r, c]))
    return m


def _vtk_to_matrix(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _node_label(node) -> str:
    if node is None:
        return "None"
    return f"'{node.GetName()}' ({node.GetClassName()})"


def _node_to_world(node) -> np.ndarray:
    """(4, 4) matrix from the node's coordinates to world, through its parent transforms (linear only)."""
    parent = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise MRMLAdapterError(
            f"{_node_label(node)} is under the non-linear transform '{parent.GetName()}'. "
            "Harden the transform (Data module, right-click → Harden transform) and try again."
        )
    vtk = _vtk()
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return _vtk_to_matrix(m)


def _set_image(node, arr_kji: np.ndarray, vtk_type: int) -> None:
    """Put a (K, J, I) array into the node as new vtkImageData (a deep copy)."""
    vtk = _vtk()
    ns = _numpy_support()
    arr = np.ascontiguousarray(arr_kji)
    img = vtk.vtkImageData()
    img.SetDimensions(int(arr.shape[2]), int(arr.shape[1]), int(arr.shape[0]))
    scalars = ns.numpy_to_vtk(arr.ravel(), deep=True, array_type=vtk_type)
    scalars.SetName("ImageScalars")
    img.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(img)


def array_from_volume_node(node) -> np.ndarray:
    """A copy of the node's voxels as ``(K, J, I)`` (scalar) or ``(K, J, I, C)`` (vector) NumPy array."""
    if node is None or not node.IsA("vtkMRMLVolumeNode"):
        raise MRMLAdapterError(f"Expected a volume node, got {_node_label(node)}. Select a volume.")
    img = node.GetImageData()
    if img is None or img.GetPointData() is None or img.GetPointData().GetScalars() is None:
        raise MRMLAdapterError(f"Volume {_node_label(node)} has no voxels. Load the image again.")
    ns = _numpy_support()
    I, J, K = img.GetDimensions()
    scalars = img.GetPointData().GetScalars()
    a = ns.vtk_to_numpy(scalars).copy()
    C = scalars.GetNumberOfComponents()
    return a.reshape(K, J, I, C) if C > 1 else a.reshape(K, J, I)


def find_output_node(scene, class_name: str, role: str, key: str = ""):
    """The first node of ``class_name`` whose ``ATTR_ROLE`` is ``role`` and ``ATTR_KEY`` is ``key``, or None."""
    nodes = scene.GetNodesByClass(class_name)
    try:
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            if node.GetAttribute(ATTR_ROLE) == role and (node.GetAttribute(ATTR_KEY) or "") == (key or ""):
                return node
    finally:
        # GetNodesByClass returns a new reference in C++; the Python wrapper handles it, nothing to free here.
        pass
    return None


def _get_or_add(scene, class_name: str, role: str | None, key: str, name: str, node=None):
    """The node to write to: ``node`` if given, else the existing output (role, key), else a new one."""
    if node is None and role is not None:
        node = find_output_node(scene, class_name, role, key)
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
        if node is None:
            raise MRMLAdapterError(f"The scene cannot create a {class_name} (is its module logic registered?).")
    elif not node.IsA(class_name):
        raise MRMLAdapterError(f"Output node {_node_label(node)} must be a {class_name}.")
    if name:
        node.SetName(name)
    if role is not None:
        node.SetAttribute(ATTR_ROLE, role)
        node.SetAttribute(ATTR_KEY, key or "")
    return node


def _ensure_display(node):
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node.GetDisplayNode()


@contextmanager
def scene_transaction(scene):
    """All-or-nothing block: nodes added inside it are removed again if it raises; scene events are batched.

    Write functions validate and build all their data before touching the scene, so an exception during
    the block means no existing node was changed either.
    """
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    scene.StartState(scene.BatchProcessState)
    try:
        yield
    except BaseException:
        added = [
            scene.GetNthNode(i)
            for i in range(scene.GetNumberOfNodes())
            if scene.GetNthNode(i).GetID() not in before
        ]
        for node in reversed(added):
            if scene.IsNodePresent(node):
                scene.RemoveNode(node)
        raise
    finally:
        scene.EndState(scene.BatchProcessState)


# ------------------------------------------------------------------------------------------------------------
# CT
# ------------------------------------------------------------------------------------------------------------


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


def volume_node_to_ct(node) -> CTVolume:
    """Scalar volume node → CTVolume (a copy; world coordinates if the node is under a linear transform)."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise MRMLAdapterError(f"The CT must be a scalar volume node, got {_node_label(node)}. Select a CT volume.")
    arr = array_from_volume_node(node)
    if arr.ndim != 3:
        raise MRMLAdapterError(f"The CT {_node_label(node)} has vector voxels; select a grayscale CT volume.")
    if min(arr.shape) < 2:
        raise MRMLAdapterError(
            f"{_node_label(node)} has shape {arr.shape[::-1]} (I, J, K): that is a 2D image, not a CT. "
            "Select the CT volume in 'CT volume'."
        )
    vtk = _vtk()
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = _node_to_world(node) @ _vtk_to_matrix(m)
    return CTVolume(arr.transpose(2, 1, 0).astype(np.float32), ijk_to_ras, node.GetName())


# ------------------------------------------------------------------------------------------------------------
# X-ray
# ------------------------------------------------------------------------------------------------------------


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


def _fmt(values: Iterable[float]) -> str:
    return ",".join(repr(float(v)) for v in values)


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
):
    """X-ray pixels ``(H, W)`` + intrinsics → single-slice scalar volume node with the geometry attributes.

    ``role``/``key`` mark it as an output (found again on a re-run); inputs loaded by the user have neither.
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
    _ensure_display(node)
    return node


def _parse_numbers(node, attr: str, n: int) -> tuple[float, ...] | None:
    text = node.GetAttribute(attr)
    if text is None or not text.strip():
        return None
    try:
        vals = tuple(float(x) for x in text.replace(";", ",").split(","))
    except ValueError:
        raise GeometryError(
            f"X-ray node '{node.GetName()}' attribute {attr} = {text!r} is not a list of numbers; "
            "correct it in the module's geometry fields."
        ) from None
    if len(vals) == 1 and n == 2:
        vals = (vals[0], vals[0])
    if len(vals) != n:
        raise GeometryError(f"X-ray node '{node.GetName()}' attribute {attr} = {text!r} must hold {n} numbers.")
    return vals


def read_xray_geometry(node) -> dict[str, Any]:
    """The geometry attributes of an X-ray node: ``{"source_to_detector_mm", "pixel_spacing_mm",
    "principal_point_px"}``, each None when absent (the pixel spacing then falls back to the node's spacing)."""
    sdd = _parse_numbers(node, ATTR_SDD, 1)
    ps = _parse_numbers(node, ATTR_PIXEL_SPACING, 2)
    pp = _parse_numbers(node, ATTR_PRINCIPAL_POINT, 2)
    if ps is None:
        sp = node.GetSpacing()
        ps = (float(sp[0]), float(sp[1]))
    return {
        "source_to_detector_mm": sdd[0] if sdd else None,
        "pixel_spacing_mm": ps,
        "principal_point_px": pp,
    }


def volume_node_to_xray(
    node,
    source_to_detector_mm: float | None = None,
    pixel_spacing_mm: Sequence[float] | None = None,
    principal_point_px: Sequence[float] | None = None,
) -> tuple[np.ndarray, Intrinsics]:
    """X-ray volume node → ``(pixels (H, W) float32, Intrinsics)``.

    Geometry: the arguments (e.g. the module's geometry fields) override the node's attributes; the pixel
    spacing falls back to the node's spacing; a missing source-to-detector distance raises ``GeometryError``.
    A vector (RGB) image is averaged to grayscale. Pixels are indexed ``[v, u]`` = ``[J, I]``.
    """
    arr = array_from_volume_node(node)
    if arr.ndim == 4:
        arr = arr[..., :3].mean(axis=-1)
    if arr.shape[0] != 1:
        raise MRMLAdapterError(
            f"The X-ray {_node_label(node)} has {arr.shape[0]} slices; it must be a single 2D image "
            "(one slice). Select the radiograph, not the CT."
        )
    pixels = arr[0].astype(np.float32)
    geo = read_xray_geometry(node)
    sdd = source_to_detector_mm if source_to_detector_mm is not None else geo["source_to_detector_mm"]
    ps = tuple(pixel_spacing_mm) if pixel_spacing_mm is not None else geo["pixel_spacing_mm"]
    pp = tuple(principal_point_px) if principal_point_px is not None else geo["principal_point_px"]
    if sdd is None:
        raise GeometryError(
            f"X-ray '{node.GetName()}' has no source-to-detector distance (attribute {ATTR_SDD}). "
            "Enter SDD (mm) in the module's geometry fields, or load the X-ray with its geometry sidecar JSON."
        )
    H, W = pixels.shape
    return pixels, Intrinsics(sdd, ps, W, H, pp)


# ------------------------------------------------------------------------------------------------------------
# Fiducials
# ------------------------------------------------------------------------------------------------------------


def _set_control_points(node, labels: Sequence[str], ras: np.ndarray) -> None:
    vtk = _vtk()
    wasModifying = node.StartModify()
    try:
        node.RemoveAllControlPoints()
        for label, p in zip(labels, ras):
            node.AddControlPoint(vtk.vtkVector3d(float(p[0]), float(p[1]), float(p[2])), str(label))
    finally:
        node.EndModify(wasModifying)


def _check_points(labels: Sequence[str], ras, what: str) -> np.ndarray:
    P = np.asarray(ras, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3:
        raise MRMLAdapterError(f"{what}: points must have shape (N, 3), got {P.shape}.")
    if len(labels) != len(P):
        raise MRMLAdapterError(f"{what}: {len(labels)} labels for {len(P)} points.")
    if not np.isfinite(P).all():
        raise MRMLAdapterError(f"{what}: points contain NaN or infinity.")
    return P


def fiducials_to_markups_node(
    scene, labels: Sequence[str], ras, name: str = "Fiducials", node=None, role: str | None = None, key: str = ""
):
    """Labels + RAS points ``(N, 3)`` → point-list markups node (control points in world RAS)."""
    P = _check_points(labels, ras, f"fiducials '{name}'")
    node = _get_or_add(scene, "vtkMRMLMarkupsFiducialNode", role, key, name, node)
    _set_control_points(node, labels, P)
    _ensure_display(node)
    return node


def markups_node_to_fiducials(node) -> tuple[list[str], np.ndarray]:
    """Point-list markups node → ``(labels, ras (N, 3) float64)`` in world RAS; undefined points are skipped."""
    if node is None or not node.IsA("vtkMRMLMarkupsNode"):
        raise MRMLAdapterError(f"Fiducials must be a markups point list, got {_node_label(node)}.")
    labels: list[str] = []
    pts: list[list[float]] = []
    defined = getattr(node, "PositionDefined", None)
    for i in range(node.GetNumberOfControlPoints()):
        if defined is not None and node.GetNthControlPointPositionStatus(i) != defined:
            continue
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        labels.append(node.GetNthControlPointLabel(i) or f"{node.GetName()}-{i + 1}")
        pts.append(p)
    return labels, np.asarray(pts, dtype=np.float64).reshape(-1, 3)


# ------------------------------------------------------------------------------------------------------------
# Cameras
# ------------------------------------------------------------------------------------------------------------


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


def transform_node_to_camera(node) -> Camera:
    """Inverse of ``camera_to_transform_node`` (world_from_camera in world, through parent transforms)."""
    if node is None or not node.IsA("vtkMRMLLinearTransformNode"):
        raise MRMLAdapterError(f"Expected a linear transform node, got {_node_label(node)}.")
    text = node.GetAttribute(ATTR_INTRINSICS)
    if not text:
        raise MRMLAdapterError(
            f"Transform {_node_label(node)} has no {ATTR_INTRINSICS} attribute: it was not written by RayEmbRegistration."
        )
    vtk = _vtk()
    m = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToWorld(m)
    world_from_camera = _vtk_to_matrix(m)
    return Camera(Intrinsics.from_dict(json.loads(text)), np.linalg.inv(world_from_camera))


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


# ------------------------------------------------------------------------------------------------------------
# 2D overlays on the X-ray
# ------------------------------------------------------------------------------------------------------------


def _xray_grid(xray_node) -> tuple[np.ndarray, int, int]:
    """(IJKToRAS in world (4, 4), W, H) of an X-ray node."""
    if xray_node is None or not xray_node.IsA("vtkMRMLVolumeNode") or xray_node.GetImageData() is None:
        raise MRMLAdapterError(f"Expected the X-ray volume node, got {_node_label(xray_node)}.")
    vtk = _vtk()
    m = vtk.vtkMatrix4x4()
    xray_node.GetIJKToRASMatrix(m)
    W, H, _ = xray_node.GetImageData().GetDimensions()
    return _node_to_world(xray_node) @ _vtk_to_matrix(m), W, H


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


def markups_node_to_points_2d(node, xray_node) -> tuple[list[str], np.ndarray]:
    """Markups on the X-ray slice → ``(labels, uv (N, 2))`` pixels of the X-ray grid (inverse of the above)."""
    labels, ras = markups_node_to_fiducials(node)
    M, _, _ = _xray_grid(xray_node)
    ijk = np.c_[ras, np.ones(len(ras))] @ np.linalg.inv(M).T
    return labels, ijk[:, :2]


# ------------------------------------------------------------------------------------------------------------
# Results table
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandmarkRow:
    """One landmark of a registration: label, 3D RAS (3,), detected and reprojected pixels (2,), confidence."""

    label: str
    ras: tuple[float, float, float]
    detected_px: tuple[float, float]
    reprojected_px: tuple[float, float]
    confidence: float

    @property
    def error_px(self) -> float:
        d = np.subtract(self.detected_px, self.reprojected_px)
        return float(np.hypot(*d)) if np.isfinite(d).all() else math.nan

    @classmethod
    def coerce(cls, x: Any) -> "LandmarkRow":
        """From a LandmarkRow, a dict, an object with these attributes, or a 5-sequence in field order."""
        if isinstance(x, cls):
            return x
        names = ("label", "ras", "detected_px", "reprojected_px", "confidence")
        if isinstance(x, dict):
            vals = [x.get(n) for n in names]
        elif all(hasattr(x, n) for n in names):
            vals = [getattr(x, n) for n in names]
        elif isinstance(x, (tuple, list)) and len(x) == 5:
            vals = list(x)
        else:
            raise MRMLAdapterError(f"Cannot read a landmark result from {x!r}: need {', '.join(names)}.")

        def vec(v, n):
            if v is None:
                return (math.nan,) * n
            a = np.asarray(v, dtype=np.float64).reshape(-1)
            if a.size != n:
                raise MRMLAdapterError(f"Landmark '{vals[0]}': expected {n} numbers, got {a.size}.")
            return tuple(float(t) for t in a)

        conf = math.nan if vals[4] is None else float(vals[4])
        return cls(str(vals[0]), vec(vals[1], 3), vec(vals[2], 2), vec(vals[3], 2), conf)


def results_table_node(scene, landmarks: Sequence[Any], name: str = "RayEmb landmarks", key: str = "", node=None):
    """Per-landmark results → table node (columns ``RESULT_COLUMNS``; role ``"table"``)."""
    vtk = _vtk()
    rows = [LandmarkRow.coerce(x) for x in landmarks]
    table = vtk.vtkTable()
    label_col = vtk.vtkStringArray()
    label_col.SetName(RESULT_COLUMNS[0])
    for r in rows:
        label_col.InsertNextValue(r.label)
    table.AddColumn(label_col)
    numeric = [
        [r.ras[0] for r in rows],
        [r.ras[1] for r in rows],
        [r.ras[2] for r in rows],
        [r.detected_px[0] for r in rows],
        [r.detected_px[1] for r in rows],
        [r.reprojected_px[0] for r in rows],
        [r.reprojected_px[1] for r in rows],
        [r.error_px for r in rows],
        [r.confidence for r in rows],
    ]
    for col_name, values in zip(RESULT_COLUMNS[1:], numeric):
        arr = vtk.vtkDoubleArray()
        arr.SetName(col_name)
        for v in values:
            arr.InsertNextValue(float(v))
        table.AddColumn(arr)
    node = _get_or_add(scene, "vtkMRMLTableNode", "table", key, name, node)
    node.SetAndObserveTable(table)
    node.SetUseColumnTitleAsColumnHeader(True) if hasattr(node, "SetUseColumnTitleAsColumnHeader") else None
    node.SetLocked(True) if hasattr(node, "SetLocked") else None
    return node


def table_node_to_rows(node) -> list[LandmarkRow]:
    """Read a results table back (tables loaded from .mrb store numbers; empty cells become NaN)."""
    t = node.GetTable()
    cols = {t.GetColumn(c).GetName(): t.GetColumn(c) for c in range(t.GetNumberOfColumns())}
    missing = [c for c in RESULT_COLUMNS if c not in cols]
    if missing:
        raise MRMLAdapterError(f"Table {_node_label(node)} lacks the columns {missing}.")

    def num(col, i):
        v = cols[col].GetValue(i)
        try:
            return float(v.ToDouble()) if hasattr(v, "ToDouble") else float(v)
        except (TypeError, ValueError):
            return math.nan

    rows = []
    for i in range(t.GetNumberOfRows()):
        label = cols["Label"].GetValue(i)
        label = label.ToString() if hasattr(label, "ToString") else str(label)
        rows.append(
            LandmarkRow(
                label,
                (num("R", i), num("A", i), num("S", i)),
                (num("Detected u", i), num("Detected v", i)),
                (num("Reprojected u", i), num("Reprojected v", i)),
                num("Confidence", i),
            )
        )
    return rows


# ------------------------------------------------------------------------------------------------------------
# All outputs of a registration, at once
# ------------------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------------------
# Scene files
# ------------------------------------------------------------------------------------------------------------


def save_scene_mrb(scene, path) -> None:
    """Write the scene to a Medical Reality Bundle (``.mrb``); raises ``MRMLAdapterError`` on failure."""
    path = str(path)
    if not path.lower().endswith(".mrb"):
        raise MRMLAdapterError(f"Scene bundle file name must end with .mrb, got {path}.")
    if not scene.WriteToMRB(path):
        raise MRMLAdapterError(f"Could not write the scene to {path} (see the log for the node that failed).")


def load_scene_mrb(scene, path, clear: bool = True) -> None:
    """Read a ``.mrb`` into ``scene`` (the scene needs a data IO manager with a cache directory, which Slicer
    and ``HeadlessSlicerApp`` provide)."""
    path = str(path)
    if not scene.ReadFromMRB(path, clear):
        raise MRMLAdapterError(f"Could not read the scene bundle {path} (see the log for details).")

# ------------------------------------------------------------------------------------------------------------
# A headless application context (slicer-core): scene + the logics Slicer's application attaches to it
# ------------------------------------------------------------------------------------------------------------
# Used by the CLI to write scene.mrb and by the tests. Creates a real MRML scene with the application logic
# (vtkSlicerApplicationLogic), the module logics that register node classes and defaults (markups, volumes,
# models, transforms, tables, colors), a data IO manager with a cache directory (needed to read .mrb bundles),
# optional slice views (vtkMRMLSliceLogic renders slice images exactly as Slicer's slice views do) and .mrb
# save/load. No Qt, no slicer.app. Inside Slicer, use slicer.mrmlScene instead.


def _slicer_core():
    import slicer  # noqa: PLC0415  (the slicer-core wheel, or Slicer itself: MRML and logics)

    return slicer


class HeadlessSlicerApp:
    """A scene plus the logics Slicer's application would attach to it (see the module docstring)."""

    def __init__(self, temp_dir: str | os.PathLike | None = None, color_nodes: bool = True) -> None:
        slicer = _slicer_core()
        self._own_temp = temp_dir is None
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rayemb-slicer-") if temp_dir is None else temp_dir)
        (self.temp_dir / "cache").mkdir(parents=True, exist_ok=True)

        self.scene = slicer.vtkMRMLScene()
        self.scene.SetRootDirectory(str(self.temp_dir))

        # Remote IO: a cache manager + data IO manager (ReadFromMRB needs the cache directory).
        self.cache_manager = slicer.vtkCacheManager()
        self.cache_manager.SetRemoteCacheDirectory(str(self.temp_dir / "cache"))
        self.data_io_manager = slicer.vtkDataIOManager()
        self.data_io_manager.SetCacheManager(self.cache_manager)
        self.scene.SetCacheManager(self.cache_manager)
        self.scene.SetDataIOManager(self.data_io_manager)

        self.app_logic = slicer.vtkSlicerApplicationLogic()
        # The colour logic looks for colour files under the home directory; an empty one means "none extra".
        # Slicer looks for them in <home>/<share>/ColorFiles (share is relative to home).
        (self.temp_dir / "home" / "share" / "ColorFiles").mkdir(parents=True, exist_ok=True)
        self.app_logic.SetHomeDirectory(str(self.temp_dir / "home"))
        self.app_logic.SetShareDirectory("share")
        self.app_logic.SetMRMLScene(self.scene)

        self.logics = {}
        for name, cls in (
            ("Colors", "vtkSlicerColorLogic"),
            ("Markups", "vtkSlicerMarkupsLogic"),
            ("Volumes", "vtkSlicerVolumesLogic"),
            ("Models", "vtkSlicerModelsLogic"),
            ("Transforms", "vtkSlicerTransformLogic"),
            ("Tables", "vtkSlicerTablesLogic"),
        ):
            if name == "Colors" and not color_nodes:
                continue
            logic = getattr(slicer, cls)()
            if hasattr(logic, "SetMRMLApplicationLogic"):
                logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.logics[name] = logic
            if hasattr(self.app_logic, "SetModuleLogic"):
                self.app_logic.SetModuleLogic(name, logic)
        self.slice_logics: dict[str, object] = {}

    # --- views ----------------------------------------------------------------------------------------------
    def add_slice_view(self, layout_name: str = "Red", orientation: str = "Axial"):
        """Create a slice node + composite node and a ``vtkMRMLSliceLogic`` for them; returns the logic."""
        slicer = _slicer_core()
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(self.app_logic)
        logic.SetMRMLScene(self.scene)
        slice_node = logic.AddSliceNode(layout_name)
        slice_node.SetOrientation(orientation)
        self.slice_logics[layout_name] = logic
        return logic

    # --- files ----------------------------------------------------------------------------------------------
    def save_mrb(self, path: str | os.PathLike) -> None:
        save_scene_mrb(self.scene, path)

    def load_mrb(self, path: str | os.PathLike, clear: bool = True) -> None:
        load_scene_mrb(self.scene, path, clear)

    # --- lifetime -------------------------------------------------------------------------------------------
    def close(self) -> None:
        for logic in self.slice_logics.values():
            logic.SetMRMLScene(None)
        self.slice_logics.clear()
        self.scene.Clear(True)
        if self._own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "HeadlessSlicerApp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fresh(self) -> "HeadlessSlicerApp":
        """Another application context with an empty scene (use as ``with app.fresh() as other:``)."""
        return HeadlessSlicerApp()

    def nodes(self, class_name: str = "vtkMRMLNode") -> list:
        """All nodes of a class (including subclasses) in scene order."""
        col = self.scene.GetNodesByClass(class_name)
        return [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]

    def snapshot(self) -> list[tuple[str, str, int]]:
        """``(ID, class, MTime)`` of every node: equal snapshots ⇒ no node added, removed or modified."""
        return [
            (n.GetID(), n.GetClassName(), int(n.GetMTime()))
            for n in (self.scene.GetNthNode(i) for i in range(self.scene.GetNumberOfNodes()))
        ]


def headless_scene() -> HeadlessSlicerApp:
    """A new headless application context (``.scene``, ``.close()``); needs the slicer-core wheel."""
    try:
        return HeadlessSlicerApp()
    except ImportError as exc:
        raise MRMLAdapterError(
            "writing a Slicer scene outside Slicer needs the slicer-core package (pip install slicer-core==5.12.4.0 "
            "vtk==9.6.0), which scripts/env.sh installs; or pass --no-scene."
        ) from exc
