"""Synthetic anatomy: a handful of real CTs made into many plausible patients for training.

Owns: ``random_anatomy`` (one random new patient from a CT) and ``AnatomyRanges`` (its ranges, with defaults).

Every variant is a new ``CTVolume`` (the input is never modified) on the same voxel grid as the input after an
optional field-of-view crop, with its own ijk→RAS matrix. In the order applied:

* field-of-view crop: each index axis keeps a random fraction ``crop`` of its extent (always ≥ 16 voxels);
* left–right mirroring: the index axis closest to RAS x is flipped while the matrix is kept, so the anatomy is
  mirrored in the patient frame (a left hip becomes a right hip);
* smooth elastic deformation: a random displacement field on a coarse control grid (``elastic_nodes`` per
  axis, N(0, ``elastic_mm``) per node), upsampled by cubic B-splines to every voxel, applied by trilinear
  resampling (``scipy.ndimage``; outside the CT is air);
* bone density per region: the HU excess above ``volume.BONE_HU`` times a smooth random field in
  ``bone_scale`` (osteoporotic to dense bone, varying across the CT);
* metal implants (probability ``p_metal``): 1–3 straight rods or screws (radius 1–4 mm, length 20–90 mm, HU in
  ``metal_hu``) starting at random bone voxels;
* soft-tissue-free variant (probability ``p_no_soft``): every voxel below ``soft_cut_hu`` becomes air, or (half
  of them) the body becomes water-like (0 HU) with air outside — as some pre-processed CT sets are;
* slice thickness: partial-volume averaging along the slice axis (k) to a random thickness in ``slice_mm``;
* global HU jitter (scale ``1 ± hu_scale``, shift ± ``hu_shift``) and Gaussian noise up to ``noise_hu``;
* anisotropic scaling (each RAS axis × U``(scale)``) and a small shear, in the ijk→RAS matrix about the centre.

Deterministic given the NumPy ``Generator``. Cost: ~0.5–1 s on one core for a 2.5 mm grid of a trunk CT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..inputs.volume import BONE_HU, CTVolume

__all__ = ["AnatomyRanges", "random_anatomy"]

AIR_HU = -1000.0


@dataclass(frozen=True)
class AnatomyRanges:
    """The ranges ``random_anatomy`` draws from (defaults as in the issue: scaling 0.85–1.15, slices 1–5 mm)."""

    crop: tuple[float, float] = (0.6, 1.0)
    p_mirror: float = 0.5
    elastic_nodes: int = 5
    elastic_mm: float = 6.0
    scale: tuple[float, float] = (0.85, 1.15)
    shear: float = 0.05
    bone_scale: tuple[float, float] = (0.6, 1.5)
    p_metal: float = 0.3
    metal_hu: tuple[float, float] = (2500.0, 4000.0)
    p_no_soft: float = 0.15
    soft_cut_hu: float = 150.0
    slice_mm: tuple[float, float] = (1.0, 5.0)
    hu_scale: float = 0.08
    hu_shift: float = 40.0
    noise_hu: float = 30.0


def _crop(hu: np.ndarray, A: np.ndarray, rng, lo_frac: float, hi_frac: float):
    lo = np.zeros(3, int)
    for ax in range(3):
        n = hu.shape[ax]
        keep = max(min(n, 16), int(round(n * rng.uniform(lo_frac, hi_frac))))
        lo[ax] = rng.integers(0, n - keep + 1)
        hu = np.take(hu, np.arange(lo[ax], lo[ax] + keep), axis=ax)
    A = A.copy()
    A[:3, 3] = A[:3, :3] @ lo + A[:3, 3]
    return hu, A


def _smooth_field(shape, nodes: int, rng, n_fields: int) -> np.ndarray:
    """(n_fields, *shape) smooth random fields, N(0, 1) at the control nodes, cubic-spline upsampled."""
    from scipy.ndimage import zoom

    out = np.empty((n_fields, *shape), np.float32)
    for f in range(n_fields):
        ctrl = rng.standard_normal((nodes, nodes, nodes)).astype(np.float32)
        z = zoom(ctrl, [s / nodes for s in shape], order=3, mode="nearest", grid_mode=True)
        out[f] = z[: shape[0], : shape[1], : shape[2]]
    return out


def _elastic(hu: np.ndarray, spacing: np.ndarray, rng, nodes: int, sigma_mm: float) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    disp = _smooth_field(hu.shape, nodes, rng, 3) * np.float32(sigma_mm)
    grid = np.indices(hu.shape, dtype=np.float32)
    coords = grid + disp / spacing.astype(np.float32)[:, None, None, None]
    return map_coordinates(hu, coords, order=1, mode="constant", cval=AIR_HU).astype(np.float32)


def _add_metal(hu: np.ndarray, A: np.ndarray, rng, hu_range) -> np.ndarray:
    bone = np.flatnonzero(hu >= BONE_HU)
    if bone.size == 0:
        return hu
    spacing = np.linalg.norm(A[:3, :3], axis=0)
    grid = np.indices(hu.shape, dtype=np.float32).reshape(3, -1).T * spacing.astype(np.float32)  # (N, 3) mm, ijk axes
    for _ in range(int(rng.integers(1, 4))):
        start = np.array(np.unravel_index(rng.choice(bone), hu.shape), float) * spacing
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        length, radius = rng.uniform(20.0, 90.0), rng.uniform(1.0, 4.0)
        rel = grid - start.astype(np.float32)
        t = np.clip(rel @ d.astype(np.float32), 0.0, length)
        dist = np.linalg.norm(rel - t[:, None] * d.astype(np.float32), axis=1)
        hu.reshape(-1)[dist <= radius] = rng.uniform(*hu_range)
    return hu


def _slice_thickness(hu: np.ndarray, spacing_k: float, thickness_mm: float) -> np.ndarray:
    from scipy.ndimage import uniform_filter1d

    width = int(round(thickness_mm / spacing_k))
    return uniform_filter1d(hu, size=width, axis=2, mode="nearest") if width >= 2 else hu


def random_anatomy(ct: CTVolume, rng: np.random.Generator, ranges: AnatomyRanges = AnatomyRanges()) -> CTVolume:
    """One random new patient made from ``ct`` (see the module docstring for what varies, in which order)."""
    r = ranges
    hu, A = _crop(ct.hu, ct.ijk_to_ras, rng, *r.crop)
    hu = np.array(hu, dtype=np.float32)  # own copy: the input is never modified
    if rng.random() < r.p_mirror:
        lr_axis = int(np.argmax(np.abs(A[0, :3]) / np.linalg.norm(A[:3, :3], axis=0)))
        hu = np.ascontiguousarray(np.flip(hu, axis=lr_axis))
    spacing = np.linalg.norm(A[:3, :3], axis=0)
    if r.elastic_mm > 0:
        hu = _elastic(hu, spacing, rng, r.elastic_nodes, float(rng.uniform(0.3, 1.0)) * r.elastic_mm)
    dens = 0.5 * (_smooth_field(hu.shape, 3, rng, 1)[0] + 1.0)  # ~[0, 1], smooth over the CT
    lo, hi = r.bone_scale
    factor = lo + (hi - lo) * np.clip(0.5 * dens + 0.5 * rng.uniform(), 0.0, 1.0)
    excess = np.clip(hu - BONE_HU, 0.0, None)
    hu = hu - excess + excess * factor.astype(np.float32)
    if rng.random() < r.p_metal:
        hu = _add_metal(hu, A, rng, r.metal_hu)
    if rng.random() < r.p_no_soft:
        if rng.random() < 0.5:
            hu = np.where(hu < r.soft_cut_hu, np.float32(AIR_HU), hu)
        else:
            body = hu > -500.0
            hu = np.where(body & (hu < r.soft_cut_hu), np.float32(0.0), np.where(body, hu, np.float32(AIR_HU)))
    hu = _slice_thickness(hu, float(spacing[2]), float(rng.uniform(*r.slice_mm)))
    hu = hu * np.float32(rng.uniform(1 - r.hu_scale, 1 + r.hu_scale)) + np.float32(rng.uniform(-r.hu_shift, r.hu_shift))
    if r.noise_hu > 0 and rng.random() < 0.5:
        hu = hu + rng.normal(0.0, rng.uniform(0.0, r.noise_hu), hu.shape).astype(np.float32)
    # anisotropic scaling + shear of the grid about its centre (RAS axes), exact (matrix only)
    M = np.eye(3) + rng.uniform(-r.shear, r.shear, (3, 3)) * (1 - np.eye(3))
    M = np.diag(rng.uniform(*r.scale, 3)) @ M
    c_idx = (np.array(hu.shape) - 1) / 2.0
    c_ras = A[:3, :3] @ c_idx + A[:3, 3]
    A2 = np.eye(4)
    A2[:3, :3] = M @ A[:3, :3]
    A2[:3, 3] = c_ras - A2[:3, :3] @ c_idx
    return CTVolume(np.ascontiguousarray(hu, dtype=np.float32), A2, name=f"{ct.name}_synthetic")
