"""Simulated X-rays of a CT at known poses (the demo, the benchmark and the tests).

Owns: simulated X-rays of a CT at known poses.

``simulate_xray`` (a realistic X-ray from a DRR: bone multiplier, quantum and detector noise, heel effect,
gamma), the random visible poses it is taken at and the intensity-only baseline's perturbed start.

Frames: poses are ``camera_from_world`` (4, 4) (RAS mm → OpenCV camera); images (H, W) float32 line integrals.
"""

from __future__ import annotations

import numpy as np

from ..geometry.camera import Camera, Intrinsics
from ..geometry.carm import CLINICAL_SAMPLER, RAYEMB_SAMPLER, PoseSampler
from ..errors import RegistrationError
from ..registration.plausibility import is_in_view
from ..inputs.volume import CTVolume

__all__ = ["POSE_SETS", "simulate_xray", "sample_visible_pose", "perturbed_start", "BASELINE_ROT_STD_RAD", "BASELINE_TRANS_STD_MM"]

# The intensity-only baseline's start: the true pose perturbed by rotations N(0, 0.05 rad) about the camera axes
# through the bone centre and translations N(0, 10/10/20 mm) (u, v, depth) — the magnitudes of carm.MILD_SAMPLER.
BASELINE_ROT_STD_RAD = 0.05
BASELINE_TRANS_STD_MM = (10.0, 10.0, 20.0)
def simulate_xray(ct: CTVolume, intrinsics: Intrinsics, camera_from_world, rng: np.random.Generator | int | None = 0,
                  renderer=None, photons: float = 3e4, record: dict | None = None) -> np.ndarray:
    """A realistic X-ray (H, W) float32 in line-integral form from the CT at a known pose.

    A DRR with a random bone attenuation multiplier (U[1.5, 3.5]), then Poisson quantum noise (``photons`` per
    pixel before attenuation, line integrals scaled so the densest ray keeps ≥ ~1 % of the photons), Gaussian
    detector noise, a smooth intensity ramp (heel effect) and a random gamma on the line integrals. ``record``, if
    given, receives the parameters drawn (``bone_multiplier``, ``heel_u``, ``heel_v``, ``gamma``, ``photons``).
    """
    from .render import DRRRenderer

    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    bm = float(rng.uniform(1.5, 3.5))
    if renderer is None:
        renderer = DRRRenderer(ct, intrinsics, bone_multiplier=bm)
    else:
        renderer.set_bone_multiplier(bm)
        if renderer.intrinsics != intrinsics:
            renderer.set_intrinsics(intrinsics)
    L = renderer.render_numpy(np.asarray(camera_from_world, dtype=np.float64)).astype(np.float64)
    L = np.clip(L, 0, None)
    scale = 4.5 / max(float(L.max()), 1e-6)  # densest ray: exp(-4.5) ≈ 1.1 % transmission
    H, W = L.shape
    v, u = np.mgrid[0:H, 0:W]
    heel_u, heel_v = 0.15 * rng.uniform(-1, 1), 0.15 * rng.uniform(-1, 1)
    heel = 1.0 + heel_u * (u / max(W - 1, 1) - 0.5) + heel_v * (v / max(H - 1, 1) - 0.5)
    I = rng.poisson(photons * heel * np.exp(-L * scale)).astype(np.float64)
    I += rng.normal(0, 0.002 * photons, I.shape)
    I = np.clip(I, 1.0, None)
    out = np.log(photons) - np.log(I)
    gamma = float(rng.uniform(0.8, 1.25))
    out = np.clip(out, 0, None) ** gamma
    if record is not None:
        record.update(bone_multiplier=bm, heel_u=float(heel_u), heel_v=float(heel_v), gamma=gamma,
                      photons=float(photons))
    return out.astype(np.float32)


#: the pose distributions of the benchmark and the demo (``--poses``)
POSE_SETS = ("rayemb", "clinical")


def sample_visible_pose(ct: CTVolume, intrinsics: Intrinsics, rng: np.random.Generator,
                        sampler: PoseSampler | None = None, tries: int = 1000, poses: str = "rayemb") -> np.ndarray:
    """A random pose at which the CT is in view (``plausibility.is_in_view``, the pipeline's own rule); (4, 4)
    camera_from_world. ``poses="rayemb"``: ``sampler`` (default ``RAYEMB_SAMPLER``) around the CT centre, as the
    RayEmb/DiffPose benchmarks; ``"clinical"``: ``carm.CLINICAL_SAMPLER`` (LAO/RAO ±45°, cranial/caudal ±30°, roll
    ±20°, source-to-isocentre 450–900 mm) about a random bone voxel — the poses of real C-arm use."""
    if poses not in POSE_SETS:
        raise ValueError(f"poses must be one of {POSE_SETS}, got {poses!r}")
    sampler = sampler or RAYEMB_SAMPLER
    for _ in range(tries):
        if poses == "clinical":
            T = CLINICAL_SAMPLER.sample(1, ct.sample_bone_points(1, rng)[0], rng)[0]
        else:
            T = sampler.sample(1, ct.center_ras, rng)[0]
        if is_in_view(ct, Camera(intrinsics, T)):
            return T
    raise RegistrationError(f"could not sample a pose at which CT '{ct.name}' is in view ({tries} tries)")


def perturbed_start(ct: CTVolume, intrinsics: Intrinsics, camera_from_world, centre_ras, radius_mm: float,
                    rng: np.random.Generator, tries: int = 50) -> np.ndarray:
    """The intensity-only baseline's start: the true pose perturbed as ``BASELINE_*`` say (rotations about
    ``centre_ras``, in mm of arc at ``radius_mm``, as ``refine.Refiner`` parameterises poses), redrawn until the
    CT is in view (at most ``tries`` draws; the last draw otherwise)."""
    from ..registration.refine import perturbation_numpy

    for _ in range(tries):
        p = np.r_[rng.normal(0, BASELINE_ROT_STD_RAD * radius_mm, 3), rng.normal(0, BASELINE_TRANS_STD_MM)]
        start = perturbation_numpy(p, camera_from_world, centre_ras, radius_mm)
        if is_in_view(ct, Camera(intrinsics, start)):
            break
    return start
