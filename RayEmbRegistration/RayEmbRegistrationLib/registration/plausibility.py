"""Could this CT have produced this X-ray at this pose?

Owns: whether a pose can have produced the X-ray (field of view, recorded C-arm angles).

The geometric plausibility of a pose (the CT in front of the source, nearer than the detector, projecting
inside the image — its centre, or, for a close-up of part of a larger CT, at least ``MIN_BONE_IN_VIEW`` of its
bone) and its agreement with the C-arm angles the X-ray records.

Frames: world = the CT's RAS mm; ``camera.Camera`` (OpenCV).
"""

from __future__ import annotations

import math

import numpy as np

from ..geometry.camera import Camera
from ..geometry.carm import carm_camera_from_world
from ..errors import RegistrationError
from ..inputs.volume import CTVolume

__all__ = ["overlap_problem", "check_overlap", "is_in_view", "carm_disagreement", "bone_in_view", "MIN_BONE_IN_VIEW"]

#: a pose whose view does not contain the CT centre is still plausible when at least this share of the CT's bone
#: projects into the image between source and detector (a close-up of one hip of an abdomen-pelvis CT: measured
#: on the sample CT, half of the clinical C-arm poses about random bone voxels miss the CT centre yet show a median
#: 35 % of its bone)
MIN_BONE_IN_VIEW = 0.05
#: the bone is judged on at most this many voxels (a regular subsample: cheap enough for every PnP hypothesis)
_BONE_SAMPLE = 4000


def _bone_sample(ct: CTVolume) -> np.ndarray:
    """(n, 3) RAS centres of a regular subsample of the CT's bone voxels (deterministic, ≤ ``_BONE_SAMPLE``)."""
    from ..inputs.volume import BONE_HU

    idx = np.flatnonzero(ct.hu >= BONE_HU)
    if idx.size == 0:
        return np.zeros((0, 3))
    idx = idx[:: max(1, idx.size // _BONE_SAMPLE)]
    return ct.ijk_to_ras_points(np.stack(np.unravel_index(idx, ct.shape), -1).astype(np.float64))


def bone_in_view(ct: CTVolume, camera: Camera) -> float:
    """Share of the CT's bone that projects into the image at ``camera``, in front of the source and nearer than
    the detector (0 for a CT without bone)."""
    pts = _bone_sample(ct)
    if len(pts) == 0:
        return 0.0
    depth = camera.depth(pts)
    uv = camera.project(pts)
    W, H = camera.intrinsics.size
    ok = (depth > 0) & (depth < camera.intrinsics.source_to_detector_mm) & np.isfinite(uv).all(1)
    ok &= (uv[:, 0] >= -0.5) & (uv[:, 0] <= W - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= H - 0.5)
    return float(ok.mean())

#: a registered viewing direction more than this far from the DICOM C-arm angles gets a warning
CARM_WARNING_DEG = 30.0
#: ... and a registered source-to-CT distance more than this fraction away from the recorded source-to-isocentre one
SID_WARNING_FRACTION = 0.2


def overlap_problem(ct: CTVolume, camera: Camera, what: str = "pose") -> str | None:
    """Why the CT is not in the X-ray's field of view at ``camera`` (``None`` if it is): the CT centre must lie
    in front of the source, nearer than the detector, and project inside the detector — or, for a view of part of
    the CT, at least ``MIN_BONE_IN_VIEW`` of its bone must (``bone_in_view``)."""
    c = ct.center_ras
    depth = camera.depth(c[None])[0]
    uv = camera.project(c[None])[0]
    W, H = camera.intrinsics.size
    inside = np.isfinite(uv).all() and -0.5 <= uv[0] <= W - 0.5 and -0.5 <= uv[1] <= H - 0.5
    if (depth <= 0 or not inside or depth >= camera.intrinsics.source_to_detector_mm) and \
            bone_in_view(ct, camera) >= MIN_BONE_IN_VIEW:
        return None  # a close-up of part of the CT
    if depth <= 0 or not inside:
        return (
            f"the X-ray and the CT do not overlap at the {what}: the CT centre {np.round(c, 1).tolist()} RAS "
            f"{'is behind the X-ray source' if depth <= 0 else f'projects to pixel {np.round(uv, 1).tolist()}, outside the {W}×{H} image'}"
            f" and less than {100 * MIN_BONE_IN_VIEW:.0f} % of its bone projects into the image. "
            "Check that the X-ray shows the anatomy of this CT and that its geometry (source-to-detector distance, "
            "pixel spacing) is right."
        )
    if depth >= camera.intrinsics.source_to_detector_mm:
        return (
            f"at the {what} the CT centre lies {depth:.0f} mm from the source, beyond the detector "
            f"({camera.intrinsics.source_to_detector_mm:.0f} mm): the pose is implausible."
        )
    return None


def check_overlap(ct: CTVolume, camera: Camera, what: str = "pose") -> None:
    """Raise ``RegistrationError`` if the CT is not in the X-ray's field of view at ``camera`` (see ``overlap_problem``)."""
    problem = overlap_problem(ct, camera, what)
    if problem:
        raise RegistrationError(problem)


def is_in_view(ct: CTVolume, camera: Camera) -> bool:
    """True when ``camera`` is a pose at which ``ct`` can have produced the X-ray (``overlap_problem`` is None)."""
    return overlap_problem(ct, camera) is None


def carm_disagreement(camera: Camera, carm, centre_ras=None) -> str | None:
    """A warning when the pose disagrees with the recorded ``carm.CarmAngles``: its viewing direction by more than
    ``CARM_WARNING_DEG``, or (with ``centre_ras``, the CT's bone centre, and a recorded source-to-isocentre
    distance) its source-to-CT distance by more than ``SID_WARNING_FRACTION`` — the one way a wrong
    source-to-detector distance shows (the image alone cannot tell it: the depth compensates). A warning, not an
    error: table and patient need not be aligned with the C-arm's axes, nor the isocentre with the bone centre."""
    if carm is None:
        return None
    problems = []
    axis = carm_camera_from_world(carm.primary_deg, carm.secondary_deg, 1000.0)[2, :3]
    ang = math.degrees(math.acos(float(np.clip(axis @ camera.principal_axis_ras, -1, 1))))
    if ang > CARM_WARNING_DEG:
        problems.append(f"the registered viewing direction differs by {ang:.0f}° from the C-arm angles recorded with "
                        f"the X-ray (primary {carm.primary_deg:g}°, secondary {carm.secondary_deg:g}°)")
    sid = getattr(carm, "source_to_isocenter_mm", None)
    if sid and centre_ras is not None:
        d = float(camera.depth(np.asarray(centre_ras, dtype=np.float64)[None])[0])
        if abs(d - sid) > SID_WARNING_FRACTION * sid:
            problems.append(f"the CT lies {d:.0f} mm from the source but the X-ray records a source-to-isocentre "
                            f"distance of {sid:.0f} mm (is the source-to-detector distance right?)")
    return "; ".join(problems) + "; check the result." if problems else None
