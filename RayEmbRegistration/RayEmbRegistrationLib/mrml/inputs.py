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


#: a node spacing this close to 1 mm is what Slicer gives a file that records no spacing (PNG, JPG, a plain NRRD):
#: it is not taken as the detector's pixel spacing
_UNIT_SPACING_TOL = 1e-6


def node_file_sidecar(node) -> tuple[dict[str, Any], str] | None:
    """The geometry sidecar (``xray.sidecar_candidates``: ``<file>.json`` or ``<stem>.json``) next to the file the
    node was loaded from, as ``(content, path)``; None when the node has no file or no sidecar exists there."""
    from ..inputs.xray import _read_json, sidecar_candidates

    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    name = storage.GetFileName() if storage is not None else None
    if not name:
        return None
    for cand in sidecar_candidates(name):
        if cand.is_file():
            return _read_json(cand, "geometry sidecar"), str(cand)
    return None


def read_xray_geometry(node, dicom_file: str | None = None) -> dict[str, Any]:
    """The detector geometry known for an X-ray node, each field None when unknown:
    ``{"source_to_detector_mm", "pixel_spacing_mm", "principal_point_px", "sources"}``.

    Priority per field: the node's ``RayEmb.*`` attributes; the geometry sidecar next to the file it was loaded from
    (``node_file_sidecar``); the header of ``dicom_file`` (the DICOM file behind the node, which the Slicer module
    finds in Slicer's DICOM database); the node's spacing — but only when it is not 1 mm × 1 mm, the spacing Slicer
    gives a PNG, JPG or plain NRRD that records none: such an X-ray has **no** known pixel spacing (the module then
    asks for it) instead of a silently wrong detector. ``sources`` names where each known field came from."""
    fields = ("source_to_detector_mm", "pixel_spacing_mm", "principal_point_px")
    out: dict[str, Any] = {k: None for k in fields}
    sources: dict[str, str] = {}

    def take(values: dict, source: str) -> None:
        for k in fields:
            if out[k] is None and values.get(k) is not None:
                out[k] = values[k]
                sources[k] = source

    sdd = _parse_numbers(node, ATTR_SDD, 1)
    take({"source_to_detector_mm": sdd[0] if sdd else None, "pixel_spacing_mm": _parse_numbers(node, ATTR_PIXEL_SPACING, 2),
          "principal_point_px": _parse_numbers(node, ATTR_PRINCIPAL_POINT, 2)}, "node attributes")
    side = node_file_sidecar(node)
    if side is not None:
        take(Intrinsics.fields(side[0]), f"sidecar {side[1]}")
    if dicom_file:
        from ..inputs.xray_dicom import read_dicom_geometry

        take(read_dicom_geometry(dicom_file), f"DICOM {dicom_file}")
    sp = node.GetSpacing()
    if out["pixel_spacing_mm"] is None and not (abs(sp[0] - 1.0) < _UNIT_SPACING_TOL and abs(sp[1] - 1.0) < _UNIT_SPACING_TOL):
        take({"pixel_spacing_mm": (float(sp[0]), float(sp[1]))}, "node spacing")
    for k in ("pixel_spacing_mm", "principal_point_px"):
        if out[k] is not None:
            out[k] = tuple(float(x) for x in np.broadcast_to(np.asarray(out[k], dtype=float), (2,)))
    if out["source_to_detector_mm"] is not None:
        out["source_to_detector_mm"] = float(out["source_to_detector_mm"])
    out["sources"] = sources
    return out


def _pixel_value_map(node) -> dict | None:
    side = node_file_sidecar(node)
    return side[0].get("pixel_value_map") if side is not None else None


def volume_node_to_xray(node, overrides: dict[str, Any] | None = None, raw_intensity: bool = False,
                        dicom_file: str | None = None) -> XRayImage:
    """X-ray volume node → ``xray.XRayImage`` in line-integral form.

    Geometry: ``read_xray_geometry(node, dicom_file)`` with ``overrides`` (e.g. the module's geometry fields, keys of
    the sidecar format; None values = not given) applied over it; a missing source-to-detector distance or pixel
    spacing raises ``GeometryError`` naming what to enter. ``raw_intensity``: the node holds raw detector
    intensities (bone dark) → ``xray.intensity_to_line_integral``. Stored values are mapped back with the sidecar's
    ``pixel_value_map`` (a 16-bit PNG written by ``save_xray``). C-arm angles from ``ATTR_CARM``, if set.
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
    geo = Intrinsics.fields(read_xray_geometry(node, dicom_file), overrides)
    if "source_to_detector_mm" not in geo:
        raise GeometryError(
            f"X-ray '{node.GetName()}' has no source-to-detector distance (attribute {ATTR_SDD}). "
            "Enter SDD (mm) in the module's geometry fields, or load the X-ray with its geometry sidecar JSON."
        )
    if "pixel_spacing_mm" not in geo:
        raise GeometryError(
            f"X-ray '{node.GetName()}' has no known detector pixel spacing: its file records none (Slicer shows "
            "1 mm for a PNG, JPG or plain NRRD, which is not the detector's). Enter the pixel spacing (mm) in the "
            "module's geometry fields, or load the X-ray with its geometry sidecar JSON or from DICOM."
        )
    H, W = pixels.shape
    notes = []
    vm = _pixel_value_map(node)
    if vm:
        pixels = (pixels * float(vm.get("scale", 1.0)) + float(vm.get("offset", 0.0))).astype(np.float32)
        notes.append("stored values mapped back with the sidecar's pixel_value_map")
    if raw_intensity:
        pixels = intensity_to_line_integral(pixels, f"X-ray '{node.GetName()}'", notes).astype(np.float32)
        notes.append("raw intensities log-transformed: log(I0) - log(I)")
    carm = node.GetAttribute(ATTR_CARM)
    return XRayImage(pixels, Intrinsics.from_dict(geo, W, H), node.GetName(),
                     CarmAngles.from_dict(json.loads(carm)) if carm else None,
                     {"source": f"mrml:{node.GetID()}", "format": "mrml", "notes": notes})


def missing_geometry(node, overrides: dict[str, Any] | None = None, dicom_file: str | None = None) -> list[str]:
    """Names of the geometry fields (``"source_to_detector_mm"``, ``"pixel_spacing_mm"``) that neither
    ``overrides`` nor ``read_xray_geometry`` give (unreadable attributes count as missing)."""
    try:
        geo = read_xray_geometry(node, dicom_file)
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
