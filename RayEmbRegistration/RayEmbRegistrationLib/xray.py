"""X-ray images: reading radiographs / fluoroscopy frames / DRRs with their detector geometry, and writing DRRs.

Owns: ``XRayImage`` (pixels in line-integral form + ``camera.Intrinsics``), ``CarmAngles``, ``load_xray``,
``save_xray`` and the geometry sidecar file lookup. The camera model itself lives in ``camera.py``.

Conventions (see ``docs/io.md``):

* ``pixels`` is ``(H, W)`` float32, indexed ``pixels[v, u]`` (row v, column u) **exactly as stored** in the
  file: no flips, no rotations, whatever the file's own orientation tags say.
* ``pixels`` is in **line-integral form**, like a DRR: higher = more attenuation, bone bright. Raw intensity
  images (bone dark) become ``log(I0) - log(I)`` with ``I0`` the image maximum (``log_transform``); display
  images stored inverted (DICOM MONOCHROME1) are flipped as ``max - p``. Values are defined up to an affine
  intensity map; the registration normalises them.
* Geometry: ``Intrinsics`` from DICOM tags, or from a JSON sidecar ``{"source_to_detector_mm": 1020,
  "pixel_spacing_mm": [du, dv], "principal_point_px": [cu, cv]}`` (principal point optional → image centre).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .camera import GeometryError, Intrinsics
from .volume import is_dicom_file

__all__ = [
    "XRayImage",
    "CarmAngles",
    "XRayError",
    "GeometryError",
    "load_xray",
    "save_xray",
    "sidecar_candidates",
    "GEOMETRY_EXAMPLE",
]

GEOMETRY_EXAMPLE = '{"source_to_detector_mm": 1020, "pixel_spacing_mm": [0.194, 0.194]}'

_DICOM_EXT = (".dcm", ".dicom", ".ima")
_CV2_EXT = (".png", ".jpg", ".jpeg", ".bmp")
_TIFF_EXT = (".tif", ".tiff")
_ITK_EXT = (".nrrd", ".nhdr", ".nii", ".nii.gz")
_ALL_EXT = _DICOM_EXT + _CV2_EXT + _TIFF_EXT + _ITK_EXT + (".npy",)


class XRayError(ValueError):
    """An unreadable or unusable X-ray image (the message names the file, the problem and the fix)."""


@dataclass(frozen=True)
class CarmAngles:
    """C-arm positioner angles as DICOM records them.

    Attributes:
        primary_deg: PositionerPrimaryAngle (0018,1510), positive toward LAO.
        secondary_deg: PositionerSecondaryAngle (0018,1511), positive toward cranial.
        source_to_isocenter_mm: DistanceSourceToIsocenter (0018,9402) or DistanceSourceToPatient (0018,1111)
            (source → isocenter), or ``None`` if not recorded.
    """

    primary_deg: float
    secondary_deg: float
    source_to_isocenter_mm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "primary_deg": self.primary_deg,
            "secondary_deg": self.secondary_deg,
            "source_to_isocenter_mm": self.source_to_isocenter_mm,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CarmAngles":
        try:
            sid = d.get("source_to_isocenter_mm")
            return cls(float(d["primary_deg"]), float(d["secondary_deg"]), None if sid is None else float(sid))
        except (KeyError, TypeError, ValueError) as exc:
            raise GeometryError(
                f"'carm' must be {{\"primary_deg\": .., \"secondary_deg\": .., \"source_to_isocenter_mm\": ..}}, got {d!r}."
            ) from exc


@dataclass(frozen=True)
class XRayImage:
    """An X-ray (or DRR) with its detector geometry.

    Attributes:
        pixels: (H, W) float32 in line-integral form (higher = more attenuation), ``pixels[v, u]`` as stored.
        intrinsics: the detector as a pinhole camera; ``intrinsics.size == (W, H)``.
        name: display name (file stem by default).
        carm: C-arm angles from DICOM or the sidecar, if known.
        metadata: provenance: ``source``, ``format``, ``geometry_source``, ``intensity`` (what was done to
            the stored values), ``notes`` (list of str) and, for DICOM, a few tags.
    """

    pixels: np.ndarray = field(repr=False)
    intrinsics: Intrinsics
    name: str = "X-ray"
    carm: CarmAngles | None = None
    metadata: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        p = np.asarray(self.pixels)
        if p.ndim != 2:
            raise XRayError(f"X-ray '{self.name}': pixels must be 2D (H, W), got shape {p.shape}.")
        if p.size == 0:
            raise XRayError(f"X-ray '{self.name}' is empty (shape {p.shape}).")
        if not np.isfinite(p).all():
            raise XRayError(f"X-ray '{self.name}' contains NaN or infinite pixels; fill or crop them first.")
        H, W = p.shape
        if (self.intrinsics.width, self.intrinsics.height) != (W, H):
            raise GeometryError(
                f"X-ray '{self.name}': intrinsics are for {self.intrinsics.width}×{self.intrinsics.height} pixels "
                f"but the image has W×H = {W}×{H}. Fix width/height in the geometry (or omit them)."
            )
        object.__setattr__(self, "pixels", np.ascontiguousarray(p, dtype=np.float32))

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    def resized(self, width: int, height: int | None = None) -> "XRayImage":
        """Area-resample to ``width × height`` (same physical detector; intrinsics via ``Intrinsics.resized``)."""
        import cv2

        height = width if height is None else height
        H, W = self.shape
        interp = cv2.INTER_AREA if (width <= W and height <= H) else cv2.INTER_LINEAR
        px = cv2.resize(self.pixels, (int(width), int(height)), interpolation=interp)
        return XRayImage(px, self.intrinsics.resized(width, height), self.name, self.carm, dict(self.metadata))


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------


def _lower_ext(path: Path) -> str:
    lower = path.name.lower()
    for ext in sorted(_ALL_EXT + (".json",), key=len, reverse=True):
        if lower.endswith(ext):
            return ext
    return path.suffix.lower()


def _stem(path: Path) -> str:
    ext = _lower_ext(path)
    return path.name[: -len(ext)] if ext and path.name.lower().endswith(ext) else path.name


def sidecar_candidates(path: str | Path) -> list[Path]:
    """Geometry sidecars looked for next to an image, in priority order: ``<name>.json`` (``xray.png.json``)
    then ``<stem>.json`` (``xray.json``). The first that exists wins; the other is ignored."""
    path = Path(path)
    return [path.with_name(path.name + ".json"), path.with_name(_stem(path) + ".json")]


def _to_gray(arr: np.ndarray, path: Path, notes: list[str], channel_axis_last: bool = True) -> np.ndarray:
    """Accept (H, W), (H, W, 1), (H, W, 3|4) with equal colour channels, (1, H, W). Anything else → XRayError."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] == 1 and not (channel_axis_last and a.shape[-1] in (1, 3, 4)):
        a = a[0]
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4) and channel_axis_last:
        if a.shape[-1] == 1:
            a = a[..., 0]
        else:
            rgb = a[..., :3]
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise XRayError(
                    f"{path} is a colour image (its R, G, B channels differ); a radiograph must be grayscale. "
                    "Convert it to a single-channel image yourself (the weighting is your call)."
                )
            notes.append(f"{a.shape[-1]}-channel image with identical colour channels: used one channel")
            a = rgb[..., 0]
    if a.ndim != 2:
        raise XRayError(
            f"{path}: an X-ray must be one 2D image, got an array of shape {a.shape}. "
            "Give a single 2D image (a 3D file must have exactly one slice)."
        )
    return a


def _check_pixels(a: np.ndarray, path: Path) -> None:
    if a.size == 0 or min(a.shape) == 0:
        raise XRayError(f"{path} holds an empty image (shape {a.shape}).")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        n = int((~np.isfinite(a)).sum())
        raise XRayError(f"{path} contains {n} NaN/infinite pixels; fill them (e.g. with the background value) first.")
    if a.min() == a.max():
        raise XRayError(f"{path} is constant (every pixel = {a.flat[0]!r}); it carries no image.")


def _log_transform(I: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """Raw intensity → line integral ``log(I0) - log(I)``, I0 = max(I); non-positive values clipped."""
    I = I.astype(np.float64)
    I0 = float(I.max())
    if I0 <= 0:
        raise XRayError(f"{path}: cannot log-transform, no pixel has a positive intensity (max {I0}).")
    pos = I[I > 0]
    lo = float(pos.min())
    n_clip = int((I <= 0).sum())
    if n_clip:
        notes.append(f"log transform: {n_clip} non-positive pixels clipped to the smallest positive value {lo:g}")
    return np.log(I0) - np.log(np.maximum(I, lo))


def _read_json(path: Path, what: str) -> dict:
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GeometryError(f"{what} file not found: {path}.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise GeometryError(f"{what} {path} is not valid JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise GeometryError(f"{what} {path} must hold a JSON object like {GEOMETRY_EXAMPLE}.")
    return d


# ------------------------------------------------------------------------------------------------------------
# Readers: return (array as stored, format, extra)
# ------------------------------------------------------------------------------------------------------------


def _read_plain(path: Path, notes: list[str]) -> tuple[np.ndarray, str]:
    ext = _lower_ext(path)
    if ext in _CV2_EXT:
        import cv2

        a = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if a is None:
            raise XRayError(f"Cannot decode image {path} (corrupt or not a {ext} file).")
        return _to_gray(a, path, notes), ext[1:]
    if ext in _TIFF_EXT:
        import tifffile

        try:
            a = tifffile.imread(str(path))
        except Exception as exc:
            raise XRayError(f"Cannot read TIFF {path}: {exc}") from exc
        return _to_gray(a, path, notes), "tiff"
    if ext == ".npy":
        try:
            a = np.load(str(path), allow_pickle=False)
        except Exception as exc:
            raise XRayError(f"Cannot read NumPy array {path}: {exc}") from exc
        return _to_gray(a, path, notes, channel_axis_last=a.ndim == 3 and a.shape[-1] in (3, 4)), "npy"
    if ext in _ITK_EXT:
        import SimpleITK as sitk

        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise XRayError(f"Cannot read {path}: {exc}") from exc
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise XRayError(f"{path} has {img.GetNumberOfComponentsPerPixel()} components per pixel; give a scalar image.")
        size = img.GetSize()
        if img.GetDimension() > 2 and any(s != 1 for s in size[2:]):
            raise XRayError(
                f"{path} is a {img.GetDimension()}D image of size {size}; an X-ray must be 2D or a 3D image with "
                "exactly one slice (size [W, H, 1])."
            )
        a = sitk.GetArrayFromImage(img).reshape(size[1], size[0])  # [row v, column u] as stored
        return a, ext.lstrip(".").replace(".gz", "").replace("nhdr", "nrrd")
    raise XRayError(
        f"Unsupported X-ray format: {path}. Use DICOM, PNG, TIFF, NRRD, NIfTI or NPY (with a geometry sidecar)."
    )


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


def _read_dicom(path: Path, frame: int | None, log_transform: bool | None, notes: list[str]):
    import pydicom
    from pydicom.pixels import apply_modality_lut

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
    if log_transform is None:
        if relationship == "LIN":
            log_transform, reason = True, "PixelIntensityRelationship = LIN (linear in X-ray intensity)"
        elif relationship == "LOG":
            log_transform, reason = False, "PixelIntensityRelationship = LOG"
        elif modality in ("XA", "RF"):
            log_transform, reason = True, f"Modality {modality} without PixelIntensityRelationship LOG (fluoroscopy: bone dark)"
        else:
            log_transform, reason = False, f"Modality {modality or '?'} display image"
    else:
        reason = f"log_transform={log_transform} requested"
    if log_transform:
        if sign == -1:  # PhotometricInterpretation only affects display; the sign says how values follow intensity
            p = p.max() + p.min() - p  # stored values fall with intensity: put them back in intensity order
            notes.append("values reversed before the log (PixelIntensityRelationshipSign -1)")
        out = _log_transform(p, path, notes)
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
    carm = None
    prim, sec = _ds_float(ds, "PositionerPrimaryAngle"), _ds_float(ds, "PositionerSecondaryAngle")
    if isinstance(prim, float) or isinstance(sec, float):
        sid = _ds_float(ds, "DistanceSourceToIsocenter")
        if not isinstance(sid, float):
            sid = _ds_float(ds, "DistanceSourceToPatient")
        carm = CarmAngles(prim if isinstance(prim, float) else 0.0, sec if isinstance(sec, float) else 0.0,
                          sid if isinstance(sid, float) else None)
        if not (isinstance(prim, float) and isinstance(sec, float)):
            notes.append("only one positioner angle recorded; the other taken as 0°")
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


# ------------------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------------------


def _geometry_dict(geometry, path: Path, notes: list[str]) -> tuple[dict | Intrinsics | None, str]:
    if geometry is None:
        for cand in sidecar_candidates(path):
            if cand.is_file():
                return _read_json(cand, "geometry sidecar"), f"sidecar {cand}"
        return None, "none"
    if isinstance(geometry, Intrinsics):
        return geometry, "explicit Intrinsics"
    if isinstance(geometry, dict):
        return dict(geometry), "explicit dict"
    if isinstance(geometry, (str, Path)):
        return _read_json(Path(geometry), "geometry"), f"geometry file {geometry}"
    raise GeometryError(f"geometry must be a JSON path, a dict or an Intrinsics, got {type(geometry).__name__}.")


def load_xray(
    path: str | Path,
    geometry: str | Path | dict | Intrinsics | None = None,
    log_transform: bool | None = None,
    *,
    frame: int | None = None,
    name: str | None = None,
) -> XRayImage:
    """Read an X-ray image with its detector geometry, in line-integral form.

    Args:
        path: DICOM (XA, RF, CR, DX, …; one frame), PNG/JPEG/BMP (8/16-bit), TIFF (any dtype), NRRD/NIfTI
            (2D or one-slice 3D) or ``.npy`` (2D). The file is only read.
        geometry: ``None`` → DICOM tags and/or the sidecar ``<name>.json`` (wins) or ``<stem>.json``;
            a JSON path or a dict in the sidecar format (its keys override DICOM tags; missing keys are taken
            from the tags); or an ``Intrinsics`` (used as is; size must match the image).
        log_transform: ``True``: the stored values are raw intensity (bone dark) → ``log(I0) - log(I)``;
            ``False``: they are already attenuation-like (only DICOM polarity is applied); ``None``: decide
            from the sidecar key ``"log_transform"`` or the DICOM tags (see ``docs/io.md``), else ``False``.
        frame: frame index for multi-frame DICOM.
        name: display name (default: file stem).

    Returns:
        ``XRayImage`` with ``pixels`` (H, W) float32 ``[v, u]`` as stored.

    Raises:
        XRayError (unreadable/unusable image), GeometryError (missing or contradictory geometry; the message
        names the field and how to supply it).
    """
    path = Path(path)
    if not path.is_file():
        raise XRayError(f"X-ray file not found: {path}.")
    notes: list[str] = []
    user, geometry_source = _geometry_dict(geometry, path, notes)
    user_dict = user if isinstance(user, dict) else {}
    if log_transform is None and user_dict.get("log_transform") is not None:
        log_transform = bool(user_dict["log_transform"])
    carm = CarmAngles.from_dict(user_dict["carm"]) if user_dict.get("carm") else None
    meta: dict[str, Any] = {"source": str(path)}
    if is_dicom_file(path):
        pixels, dcm_carm, dcm_geom, why, dmeta = _read_dicom(path, frame, log_transform, notes)
        meta.update(format="dicom", **dmeta)
        carm = carm or dcm_carm
    else:
        a, fmt = _read_plain(path, notes)
        _check_pixels(a, path)
        p = a.astype(np.float64)
        vm = user_dict.get("pixel_value_map")
        if vm:
            p = p * float(vm.get("scale", 1.0)) + float(vm.get("offset", 0.0))
            notes.append("stored values mapped back with the sidecar's pixel_value_map")
        if log_transform:
            pixels = _log_transform(p, path, notes)
            meta["intensity"] = "log-transformed: log(I0) - log(I) (log_transform=True)"
        else:
            pixels = p
            meta["intensity"] = "as stored (line-integral form assumed; pass log_transform=True for raw intensity)"
        meta["format"] = fmt
        dcm_geom, why = {}, {
            "source_to_detector_mm": f"{fmt.upper()} files carry no X-ray geometry",
            "pixel_spacing_mm": f"{fmt.upper()} files carry no X-ray geometry",
        }
    H, W = pixels.shape
    if isinstance(user, Intrinsics):
        if user.size != (W, H):
            raise GeometryError(
                f"geometry is for {user.width}×{user.height} pixels but {path} has W×H = {W}×{H}."
            )
        intr = user
        meta["geometry_source"] = geometry_source
    else:
        merged = {k: v for k, v in dcm_geom.items()}
        merged.update({k: v for k, v in user_dict.items() if v is not None and k not in ("log_transform", "carm", "pixel_value_map")})
        missing = [k for k in ("source_to_detector_mm", "pixel_spacing_mm") if k not in merged]
        if missing:
            reasons = "; ".join(f"{k}: {why.get(k, 'not given')}" for k in missing)
            side = sidecar_candidates(path)[0]
            raise GeometryError(
                f"{path}: missing X-ray geometry ({reasons}). Supply it as a JSON file with "
                f"--geometry geometry.json (load_xray(..., geometry=...)) or a sidecar {side.name} next to the "
                f"image, e.g. {GEOMETRY_EXAMPLE} (principal_point_px [cu, cv] optional, default image centre)."
            )
        try:
            intr = Intrinsics.from_dict(merged, width=W, height=H)
        except GeometryError as exc:
            raise GeometryError(f"{path} ({geometry_source if user_dict else 'DICOM tags'}): {exc}") from None
        srcs = [s for s, used in (("DICOM tags", bool(dcm_geom)), (geometry_source, bool(user_dict))) if used]
        meta["geometry_source"] = " + ".join(srcs) if srcs else "none"
    meta["notes"] = notes
    return XRayImage(pixels.astype(np.float32), intr, name or _stem(path), carm, meta)


def save_xray(
    pixels: np.ndarray,
    intrinsics: Intrinsics,
    path: str | Path,
    *,
    carm: CarmAngles | None = None,
) -> tuple[Path, Path]:
    """Write a line-integral image (e.g. a DRR) and its geometry sidecar ``<path>.json``.

    Formats by extension: ``.npy`` (float32), ``.tif``/``.tiff`` (float32), ``.nrrd`` (float32, spacing =
    pixel spacing), ``.png`` (16-bit; values mapped linearly to 0…65535, the map is stored in the sidecar as
    ``pixel_value_map`` so ``load_xray`` restores the values to within (max-min)/65535).

    Args:
        pixels: (H, W) finite array, ``[v, u]``.
        intrinsics: geometry; its size must be (W, H).
        path: output image path (the sidecar goes to ``<path>.json``).
        carm: optional C-arm angles, stored in the sidecar.
    Returns:
        ``(image_path, sidecar_path)``.
    """
    path = Path(path)
    p = np.asarray(pixels, dtype=np.float32)
    if p.ndim != 2 or p.size == 0:
        raise XRayError(f"save_xray: pixels must be a non-empty 2D (H, W) array, got shape {p.shape}.")
    if not np.isfinite(p).all():
        raise XRayError("save_xray: pixels contain NaN or infinity.")
    H, W = p.shape
    if intrinsics.size != (W, H):
        raise GeometryError(f"save_xray: intrinsics are {intrinsics.width}×{intrinsics.height} but pixels are W×H = {W}×{H}.")
    side = intrinsics.to_dict()
    ext = _lower_ext(path)
    if ext == ".npy":
        np.save(str(path), p)
    elif ext in _TIFF_EXT:
        import tifffile

        tifffile.imwrite(str(path), p)
    elif ext == ".nrrd":
        import nrrd

        du, dv = intrinsics.pixel_spacing_mm
        nrrd.write(str(path), p, {"space dimension": 2, "space directions": [[du, 0.0], [0.0, dv]],
                                  "kinds": ["domain", "domain"]}, index_order="C")
    elif ext == ".png":
        import cv2

        lo, hi = float(p.min()), float(p.max())
        scale = (hi - lo) / 65535.0 if hi > lo else 1.0
        q = np.clip(np.round((p - lo) / scale), 0, 65535).astype(np.uint16)
        if not cv2.imwrite(str(path), q):
            raise XRayError(f"save_xray: could not write {path}.")
        side["pixel_value_map"] = {"scale": scale, "offset": lo}
    else:
        raise XRayError(f"save_xray: unsupported output {path}; use .npy, .png, .tif or .nrrd.")
    if carm is not None:
        side["carm"] = carm.to_dict()
    side_path = path.with_name(path.name + ".json")
    side_path.write_text(json.dumps(side, indent=2))
    return path, side_path
