"""C-arm angles and pose sampling: where a C-arm can stand relative to the patient, in the world frame of
``camera.py``.

Owns: C-arm angles (DICOM convention) and random C-arm poses.

The DICOM C-arm angle convention (``CarmAngles``, ``carm_camera_from_world``) and the random C-arm poses
(``PoseSampler``, ``RAYEMB_SAMPLER``, ``MILD_SAMPLER``) used by training, simulation, evaluation and tests.

DICOM (0018,1510/1511): primary angle positive toward LAO, secondary angle positive toward cranial. At 0°/0° the
source is posterior, the detector anterior (under-table tube), the beam runs posterior → anterior, image rows run
from the patient's head to the feet and image columns toward the patient's right (the image as the detector sees
it, not mirrored). Poses are ``camera_from_world`` (4, 4) float64 (RAS mm → OpenCV camera, see ``camera.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .camera import DEEPFLUORO_SDD_MM, GeometryError, _finite_positive, rigid, rotation_matrix

__all__ = [
    "CarmAngles",
    "carm_camera_from_world",
    "PoseSampler",
    "ClinicalSampler",
    "RAYEMB_SAMPLER",
    "MILD_SAMPLER",
    "CLINICAL_SAMPLER",
]


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


@dataclass(frozen=True)
class ClinicalSampler:
    """C-arm poses of real intra-operative use, uniform over: primary angle (LAO/RAO) ``±primary_deg``, secondary
    angle (cranial/caudal) ``±secondary_deg``, detector roll ``±roll_deg``, source-to-isocentre distance
    ``source_to_isocenter_mm`` (close-ups to the usual ~700 mm); the isocentre is the given point (e.g. a random
    bone voxel: the X-ray may show any part of the CT)."""

    primary_deg: float = 45.0
    secondary_deg: float = 30.0
    roll_deg: float = 20.0
    source_to_isocenter_mm: tuple[float, float] = (450.0, 900.0)

    def sample(self, n: int, isocenter_ras: Sequence[float], rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n`` poses about ``isocenter_ras``; ``camera_from_world`` (n, 4, 4) float64."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        out = np.empty((n, 4, 4))
        for k in range(n):
            a, b, g = (rng.uniform(-x, x) for x in (self.primary_deg, self.secondary_deg, self.roll_deg))
            d = rng.uniform(*self.source_to_isocenter_mm)
            out[k] = carm_camera_from_world(a, b, d, isocenter_ras, inplane_deg=g)
        return out


CLINICAL_SAMPLER = ClinicalSampler()
