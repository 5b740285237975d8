"""X-ray images: reading radiographs / fluoroscopy frames / DRRs with their detector geometry, and writing DRRs.

Owns: the X-ray image type, its readers and writer, and its geometry sidecar.

``XRayImage`` (pixels in line-integral form + ``camera.Intrinsics``), ``load_xray``,
``save_xray`` and the geometry sidecar file lookup. The camera model itself lives in ``camera.py``.

Conventions (see ``docs/io.md``):

* ``pixels`` is ``(H, W)`` float32, indexed ``pixels[v, u]`` (row v, column u) **exactly as stored** in the
  file: no flips, no rotations, whatever the file's own orientation tags say.
* ``pixels`` is in **line-integral form**, like a DRR: higher = more attenuation, bone bright. Raw intensity
  images (bone dark) become ``log(I0) - log(I)`` with ``I0`` the image maximum (``intensity_to_line_integral``); display
  images stored inverted (DICOM MONOCHROME1) are flipped as ``max - p``. Values are defined up to an affine
  intensity map; the registration normalises them.
* Geometry: ``Intrinsics`` from DICOM tags, or from a JSON sidecar ``{"source_to_detector_mm": 1020,
  "pixel_spacing_mm": [du, dv], "principal_point_px": [cu, cv]}`` (principal point optional → image centre).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry.camera import GeometryError, Intrinsics
from ..geometry.carm import CarmAngles
from .volume import is_dicom_file

__all__ = [
    "XRayImage",
    "intensity_to_line_integral",
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


def intensity_to_line_integral(I: np.ndarray, path: Path | str = "X-ray", notes: list[str] | None = None) -> np.ndarray:
    """Raw intensity (bone dark) → line integral ``log(I0) - log(I)`` (float64), I0 = max(I); non-positive
    values are clipped to the smallest positive one (said in ``notes``). ``path`` names the image in errors."""
    notes = [] if notes is None else notes
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

        try:
            a = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            a = None
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
    if path.stat().st_size == 0:
        raise XRayError(f"X-ray file {path} is empty (0 bytes); the copy or export failed — take the file again.")
    notes: list[str] = []
    user, geometry_source = _geometry_dict(geometry, path, notes)
    user_dict = user if isinstance(user, dict) else {}
    if log_transform is None and user_dict.get("log_transform") is not None:
        log_transform = bool(user_dict["log_transform"])
    carm = CarmAngles.from_dict(user_dict["carm"]) if user_dict.get("carm") else None
    meta: dict[str, Any] = {"source": str(path)}
    if is_dicom_file(path):
        from .xray_dicom import read_dicom_xray

        pixels, dcm_carm, dcm_geom, why, dmeta = read_dicom_xray(path, frame, log_transform, notes)
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
            pixels = intensity_to_line_integral(p, path, notes)
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
        merged = Intrinsics.fields(dcm_geom, overrides=user_dict)
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
    extra: dict | None = None,
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
        extra: more JSON-ready keys for the sidecar (e.g. ``camera_from_world``; ignored by ``load_xray``).
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
    side.update(extra or {})
    side_path = path.with_name(path.name + ".json")
    side_path.write_text(json.dumps(side, indent=2))
    return path, side_path
