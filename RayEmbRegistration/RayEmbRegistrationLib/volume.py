"""CT volumes in Slicer's world frame: HU voxels plus the ijk→RAS matrix Slicer would show for the file.

Owns: the ``CTVolume`` type, reading NIfTI / NRRD / DICOM series into it (LPS files converted to RAS here,
once), resampling to a coarser grid for speed, and bone statistics used by point sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CTVolume", "VolumeError", "load_ct", "BONE_HU"]

BONE_HU = 350.0  # HU threshold for "bone" (RayEmb paper, DiffDRR)


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

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        """Voxel coordinates (N, 3) → RAS (N, 3)."""
        ijk = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_ijk_points(self, ras: np.ndarray) -> np.ndarray:
        """RAS (N, 3) → voxel coordinates (N, 3)."""
        M = self.ras_to_ijk
        ras = np.asarray(ras, dtype=np.float64).reshape(-1, 3)
        return ras @ M[:3, :3].T + M[:3, 3]


def load_ct(path: str | Path, name: str | None = None) -> CTVolume:
    """Read a CT (NIfTI ``.nii``/``.nii.gz``, NRRD ``.nrrd``/``.nhdr``, or a DICOM series folder/file) into RAS.

    Raises ``VolumeError`` naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"CT file not found: {path}. Give the path of a NIfTI, NRRD or DICOM series.")
    lower = path.name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(path))
            hu = np.asanyarray(img.dataobj).astype(np.float32)
        except Exception as exc:  # nibabel raises many types
            raise VolumeError(f"Cannot read NIfTI CT {path}: {exc}") from exc
        if hu.ndim == 4 and hu.shape[3] == 1:
            hu = hu[..., 0]
        # NIfTI's affine is already voxel → RAS (the frame Slicer shows).
        return CTVolume(hu, img.affine, name or lower.replace(".nii.gz", "").replace(".nii", ""))
    raise VolumeError(f"Unsupported CT format: {path}. Use NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr) or a DICOM series folder.")
