"""DICOM radiographs and fluoroscopy frames (XA, RF, CR, DX): pixels, polarity, geometry and C-arm tags.

Owns: reading DICOM X-rays (pixels, polarity, geometry and C-arm tags).

Reading one DICOM X-ray image into line-integral pixels plus the geometry fields and ``CarmAngles`` its
tags record (``read_dicom_xray``, used by ``xray.load_xray``; ``read_carm_angles`` for a DICOM file that another
reader, e.g. Slicer's DICOM module, has already loaded). Conventions: ``xray.py`` and ``docs/io.md``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry.carm import CarmAngles
from .xray import XRayError, _check_pixels, _to_gray, intensity_to_line_integral

__all__ = ["read_dicom_xray", "read_carm_angles"]


def _ds_float(ds, keyword: str):
    """A numeric DICOM value as float / list of floats, or ``None`` if absent, empty or not numeric."""
    from pydicom.multival import MultiValue

    v = ds.get(keyword)
    if v is None or v == "":
        return None
    try:
        return [float(x) for x in v] if isinstance(v, (MultiValue, list, tuple)) else float(v)
    except (TypeError, ValueError):
        return None


def _dicom_geometry(ds, H: int, W: int, notes: list[str]) -> tuple[dict, dict]:
    """Geometry fields from DICOM tags → (values, reasons the missing ones are missing)."""
    vals: dict[str, Any] = {}
    why: dict[str, str] = {}
    sdd = _ds_float(ds, "DistanceSourceToDetector")
    if isinstance(sdd, float) and sdd > 0:
        vals["source_to_detector_mm"] = sdd
    else:
        why["source_to_detector_mm"] = (
            "DICOM tag DistanceSourceToDetector (0018,1110) is "
            + ("missing" if sdd is None else f"invalid ({ds.get('DistanceSourceToDetector')!r})")
        )
    spacing_src = None
    for kw in ("ImagerPixelSpacing", "PixelSpacing"):
        ps = _ds_float(ds, kw)
        if isinstance(ps, list) and len(ps) == 2 and all(math.isfinite(x) and x > 0 for x in ps):
            row, col = ps  # DICOM order: row spacing (Δv) \ column spacing (Δu)
            if kw == "PixelSpacing" and ds.get("PixelSpacingCalibrationType"):
                mag = _ds_float(ds, "EstimatedRadiographicMagnificationFactor")
                if isinstance(mag, float) and mag > 0:
                    row, col = row * mag, col * mag
                    notes.append("PixelSpacing is calibrated in the patient plane: multiplied by "
                                 f"EstimatedRadiographicMagnificationFactor {mag:g} to get detector spacing")
                else:
                    notes.append("PixelSpacing is calibrated in the patient plane and no magnification factor "
                                 "is given: used as detector spacing (check it)")
            vals["pixel_spacing_mm"] = [col, row]
            spacing_src = kw
            break
        if ps is not None and kw == "PixelSpacing":
            why["pixel_spacing_mm"] = f"DICOM tag PixelSpacing (0028,0030) is invalid ({ds.get(kw)!r})"
    if spacing_src is None and "pixel_spacing_mm" not in why:
        why["pixel_spacing_mm"] = "DICOM tags ImagerPixelSpacing (0018,1164) and PixelSpacing (0028,0030) are missing"
    if spacing_src:
        notes.append(f"pixel spacing from {spacing_src}")
    pp = _dicom_principal_point(ds, vals.get("pixel_spacing_mm"), notes)
    if pp is not None:
        vals["principal_point_px"] = pp
    return vals, why


def _dicom_principal_point(ds, spacing_uv, notes: list[str]):
    """Principal point (c_u, c_v) from PositionOfIsocenterProjection (0018,9430) (the central ray passes
    through the isocenter), FieldOfViewOrigin (0018,7030) and DetectorElementSpacing (0018,7022); ``None``
    (→ image centre) if any is missing or the field of view is rotated/flipped."""
    iso = _ds_float(ds, "PositionOfIsocenterProjection")  # along column direction (v), along row direction (u), elements
    fov = _ds_float(ds, "FieldOfViewOrigin")  # row offset, column offset, physical elements (edge to edge)
    elem = _ds_float(ds, "DetectorElementSpacing")  # row spacing, column spacing, mm
    if not (isinstance(iso, list) and isinstance(fov, list) and len(iso) == 2 and len(fov) == 2 and spacing_uv):
        return None
    rot = _ds_float(ds, "FieldOfViewRotation") or 0.0
    flip = str(ds.get("FieldOfViewHorizontalFlip", "NO")).upper()
    if rot not in (0.0,) or flip == "YES":
        notes.append("principal point: field of view rotated/flipped; using the image centre")
        return None
    if not (isinstance(elem, list) and len(elem) == 2):
        elem = [spacing_uv[1], spacing_uv[0]]
        notes.append("principal point: DetectorElementSpacing missing, assumed equal to the image pixel spacing")
    du, dv = spacing_uv
    cv = ((iso[0] + 0.5 - fov[0]) * elem[0]) / dv - 0.5
    cu = ((iso[1] + 0.5 - fov[1]) * elem[1]) / du - 0.5
    notes.append("principal point from PositionOfIsocenterProjection and FieldOfViewOrigin")
    return [cu, cv]


def read_dicom_xray(path: Path, frame: int | None, log: bool | None, notes: list[str]):
    """Pixels (H, W) in line-integral form, ``CarmAngles`` or None, geometry fields, why missing fields are
    missing, and metadata of the DICOM X-ray ``path`` (``log``: as ``load_xray``'s ``log_transform``)."""
    import pydicom

    try:
        from pydicom.pixels import apply_modality_lut  # pydicom >= 3
    except ImportError:  # pydicom 2.x (3D Slicer 5.10 ships 2.4)
        from pydicom.pixel_data_handlers.util import apply_modality_lut

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise XRayError(f"Cannot read DICOM file {path}: {exc}") from exc
    try:
        raw = ds.pixel_array
        a = apply_modality_lut(raw, ds)
    except Exception as exc_pd:  # compressed syntax pydicom cannot decode: let GDCM (SimpleITK) try
        import SimpleITK as sitk

        try:
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # GDCM applies the modality rescale
        except RuntimeError:
            raise XRayError(f"Cannot decode the pixel data of {path}: {exc_pd}") from exc_pd
        notes.append("pixel data decoded by GDCM (SimpleITK)")
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if n_frames > 1:
        if frame is None:
            raise XRayError(f"{path} is a multi-frame DICOM ({n_frames} frames); choose one with frame=<0..{n_frames - 1}>.")
        if not 0 <= frame < n_frames:
            raise XRayError(f"{path}: frame {frame} out of range 0..{n_frames - 1}.")
        a = a[frame]
        notes.append(f"frame {frame} of {n_frames}")
    a = _to_gray(a, path, notes, channel_axis_last=spp > 1)
    _check_pixels(a, path)
    modality = str(ds.get("Modality", "")).upper()
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    relationship = str(ds.get("PixelIntensityRelationship", "")).upper()
    sign = ds.get("PixelIntensityRelationshipSign")
    sign = int(sign) if sign not in (None, "") else None
    p = a.astype(np.float64)
    if log is None:
        if relationship == "LIN":
            log, reason = True, "PixelIntensityRelationship = LIN (linear in X-ray intensity)"
        elif relationship == "LOG":
            log, reason = False, "PixelIntensityRelationship = LOG"
        elif modality in ("XA", "RF"):
            log, reason = True, f"Modality {modality} without PixelIntensityRelationship LOG (fluoroscopy: bone dark)"
        else:
            log, reason = False, f"Modality {modality or '?'} display image"
    else:
        reason = f"log_transform={log} requested"
    if log:
        if sign == -1:  # PhotometricInterpretation only affects display; the sign says how values follow intensity
            p = p.max() + p.min() - p  # stored values fall with intensity: put them back in intensity order
            notes.append("values reversed before the log (PixelIntensityRelationshipSign -1)")
        out = intensity_to_line_integral(p, path, notes)
        intensity = f"log-transformed: log(I0) - log(I) ({reason})"
    elif relationship == "LOG" and sign is not None:
        # +1: lower value = less intensity = more attenuation → invert; -1: higher value = more attenuation.
        out = p.max() - p if sign == 1 else p - p.min()
        intensity = f"log image, PixelIntensityRelationshipSign {sign:+d}: " + ("inverted" if sign == 1 else "as stored")
    elif photometric == "MONOCHROME1":
        out = p.max() - p
        intensity = f"MONOCHROME1 (minimum displayed white): inverted as max - p ({reason})"
    elif modality in ("XA", "RF"):
        out = p.max() - p
        intensity = f"{photometric} fluoroscopy (displayed bone dark): inverted as max - p ({reason})"
    else:
        out = p - p.min()
        intensity = f"{photometric}: as stored, minus its minimum ({reason})"
    carm = _carm_angles(ds, notes)
    H, W = out.shape
    geom, why = _dicom_geometry(ds, H, W, notes)
    meta = {
        "modality": modality,
        "photometric_interpretation": photometric,
        "pixel_intensity_relationship": relationship or None,
        "pixel_intensity_relationship_sign": sign,
        "intensity": intensity,
    }
    return out, carm, geom, why, meta


def _carm_angles(ds, notes: list[str]) -> CarmAngles | None:
    """PositionerPrimary/SecondaryAngle (0018,1510/1511) and DistanceSourceToIsocenter (0018,9402), else
    DistanceSourceToPatient (0018,1111), as ``CarmAngles``; None if no angle is recorded."""
    prim, sec = _ds_float(ds, "PositionerPrimaryAngle"), _ds_float(ds, "PositionerSecondaryAngle")
    if isinstance(prim, float) or isinstance(sec, float):
        sid = _ds_float(ds, "DistanceSourceToIsocenter")
        if not isinstance(sid, float):
            sid = _ds_float(ds, "DistanceSourceToPatient")
        if not (isinstance(prim, float) and isinstance(sec, float)):
            notes.append("only one positioner angle recorded; the other taken as 0°")
        return CarmAngles(prim if isinstance(prim, float) else 0.0, sec if isinstance(sec, float) else 0.0,
                          sid if isinstance(sid, float) else None)
    return None


def read_dicom_geometry(path: str | Path) -> dict:
    """The geometry fields the DICOM X-ray ``path`` records (header only): any of ``source_to_detector_mm``,
    ``pixel_spacing_mm`` [du, dv], ``principal_point_px``; a field it does not record is absent."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:
        raise XRayError(f"Cannot read DICOM file {path}: {exc}") from exc
    vals, _why = _dicom_geometry(ds, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), [])
    return vals


def read_carm_angles(path: str | Path) -> CarmAngles | None:
    """The C-arm angles recorded in the DICOM file ``path`` (header only), or None if it records none."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:
        raise XRayError(f"Cannot read DICOM file {path}: {exc}") from exc
    return _carm_angles(ds, [])
