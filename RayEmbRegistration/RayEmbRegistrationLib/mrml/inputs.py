"""Nodes → library objects: what the Slicer module reads from the scene.

Owns: converting input nodes into the library's own types.

Converting input nodes into the library's own types — ``volume.CTVolume``, ``xray.XRayImage`` (with its
geometry through the one parser ``Intrinsics.from_dict``), ``fiducials.Fiducials``, ``camera.Camera`` — and the
geometry still missing for an X-ray node. Nodes are only read, never modified."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..geometry.camera import Camera, GeometryError, Intrinsics
from ..geometry.carm import CarmAngles
from ..inputs.fiducials import Fiducials
from ..inputs.volume import CTVolume
from ..inputs.xray import XRayImage, intensity_to_line_integral
from .nodes import (ATTR_CARM, ATTR_INTRINSICS, ATTR_PIXEL_SPACING, ATTR_PRINCIPAL_POINT, ATTR_SDD, MRMLAdapterError,
                    _node_label, _node_to_world, _parse_numbers, _read_matrix, _xray_grid,
                    array_from_volume_node)


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
    ijk_to_ras = _node_to_world(node) @ _read_matrix(node.GetIJKToRASMatrix)
    return CTVolume(arr.transpose(2, 1, 0).astype(np.float32), ijk_to_ras, node.GetName())


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


def volume_node_to_xray(node, overrides: dict[str, Any] | None = None, raw_intensity: bool = False) -> XRayImage:
    """X-ray volume node → ``xray.XRayImage`` in line-integral form.

    Geometry: ``overrides`` (e.g. the module's geometry fields, keys of the sidecar format; None values = not
    given) override the node's attributes; the pixel spacing falls back to the node's spacing; a missing
    source-to-detector distance raises ``GeometryError``. ``raw_intensity``: the node holds raw detector
    intensities (bone dark) → ``xray.intensity_to_line_integral``. C-arm angles from ``ATTR_CARM``, if set.
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
    geo = Intrinsics.fields(read_xray_geometry(node), overrides)
    if "source_to_detector_mm" not in geo:
        raise GeometryError(
            f"X-ray '{node.GetName()}' has no source-to-detector distance (attribute {ATTR_SDD}). "
            "Enter SDD (mm) in the module's geometry fields, or load the X-ray with its geometry sidecar JSON."
        )
    H, W = pixels.shape
    notes = []
    if raw_intensity:
        pixels = intensity_to_line_integral(pixels, f"X-ray '{node.GetName()}'", notes).astype(np.float32)
        notes.append("raw intensities log-transformed: log(I0) - log(I)")
    carm = node.GetAttribute(ATTR_CARM)
    return XRayImage(pixels, Intrinsics.from_dict(geo, W, H), node.GetName(),
                     CarmAngles.from_dict(json.loads(carm)) if carm else None,
                     {"source": f"mrml:{node.GetID()}", "format": "mrml", "notes": notes})


def missing_geometry(node, overrides: dict[str, Any] | None = None) -> list[str]:
    """Names of the geometry fields (``"source_to_detector_mm"``, ``"pixel_spacing_mm"``) that neither
    ``overrides`` nor the X-ray node give (unreadable attributes count as missing)."""
    try:
        geo = read_xray_geometry(node)
    except GeometryError:
        geo = {}
    geo = Intrinsics.fields(geo, overrides)
    missing = [] if geo.get("source_to_detector_mm") else ["source_to_detector_mm"]
    ps = geo.get("pixel_spacing_mm")
    if ps is None or min(np.atleast_1d(ps)) <= 0:
        missing.append("pixel_spacing_mm")
    return missing


def markups_node_to_fiducials(node) -> Fiducials:
    """Point-list markups node → ``Fiducials`` (labels, (N, 3) RAS) in world RAS; undefined points are skipped."""
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
    return Fiducials(labels, np.asarray(pts, dtype=np.float64).reshape(-1, 3))


def transform_node_to_camera(node) -> Camera:
    """Inverse of ``camera_to_transform_node`` (world_from_camera in world, through parent transforms)."""
    if node is None or not node.IsA("vtkMRMLLinearTransformNode"):
        raise MRMLAdapterError(f"Expected a linear transform node, got {_node_label(node)}.")
    text = node.GetAttribute(ATTR_INTRINSICS)
    if not text:
        raise MRMLAdapterError(
            f"Transform {_node_label(node)} has no {ATTR_INTRINSICS} attribute: it was not written by RayEmbRegistration."
        )
    world_from_camera = _read_matrix(node.GetMatrixTransformToWorld)
    return Camera(Intrinsics.from_dict(json.loads(text)), np.linalg.inv(world_from_camera))


def markups_node_to_points_2d(node, xray_node) -> tuple[list[str], np.ndarray]:
    """Markups on the X-ray slice → ``(labels, uv (N, 2))`` pixels of the X-ray grid (inverse of the above)."""
    f = markups_node_to_fiducials(node)
    M, _, _ = _xray_grid(xray_node)
    ijk = np.c_[f.ras, np.ones(len(f.ras))] @ np.linalg.inv(M).T
    return f.labels, ijk[:, :2]
