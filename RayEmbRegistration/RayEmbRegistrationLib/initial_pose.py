"""Where a registration's initial pose comes from: interchangeable strategies (as xvr's pose initialisers).

Owns: the strategies that give a registration its initial pose.

The ``InitialPose`` result and its two strategies — ``GivenPose`` (a caller's start: manual, the
intensity-only baseline) and ``RayEmbPnP`` (landmark detection of fiducials + bone points, then PnP + RANSAC).

A strategy's ``initial_pose(registrar, xray, fiducials, progress, cancel)`` returns an ``InitialPose`` or raises
``errors.RegistrationError``; it uses the ``pipeline.Registrar``'s cached detector and refiner.
Frames: world = the CT's RAS mm; poses ``camera_from_world`` (4, 4); pixels (u, v) of the X-ray as given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .camera import Camera
from .errors import RegistrationError
from .plausibility import check_overlap, is_in_view
from .progress import check_cancel, sub_progress
from .results import Landmark, PnPHypothesis

__all__ = ["InitialPose", "GivenPose", "RayEmbPnP"]


@dataclass
class InitialPose:
    """The start of the refinement: camera, how it was found, and what the finding produced."""

    camera: Camera
    method: str  # "given" | "rayemb"
    landmarks: list[Landmark] = field(default_factory=list)
    n_correspondences: int = 0
    inliers: int = 0
    pnp_rmse_px: float | None = None
    hypotheses: list[PnPHypothesis] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GivenPose:
    """The caller's start pose ``camera_from_world`` (4, 4); it must see the CT."""

    camera_from_world: np.ndarray

    def initial_pose(self, registrar, xray, fiducials=None, progress=None, cancel=None) -> InitialPose:
        cam = Camera(xray.intrinsics, np.asarray(self.camera_from_world, dtype=np.float64))
        check_overlap(registrar.ct, cam, "given start pose")
        return InitialPose(camera=cam, method="given")


@dataclass(frozen=True)
class RayEmbPnP:
    """Detect the fiducials and ``n_bone_candidates`` random bone points, keep the fiducials and the
    ``n_bone_keep`` most confident bone points, and solve PnP (MAGSAC++ RANSAC + LM polish) on them.

    With ``pnp.hypotheses > 1``, refinement on and ``compare_hypotheses``, the plausible hypotheses each get the
    coarsest refinement level and the one whose DRR matches the X-ray best wins (the largest consensus is not always
    the right pose); without, the largest consensus is taken (``Registrar.detect``'s quick pose check).
    """

    compare_hypotheses: bool = True

    def initial_pose(self, registrar, xray, fiducials=None, progress=None, cancel=None) -> InitialPose:
        from .pose import PoseError, solve_pnp_hypotheses

        o = registrar.options
        ct, intr = registrar.ct, xray.intrinsics
        fid_labels = list(fiducials.labels) if fiducials is not None else []
        fid_ras = np.asarray(fiducials.ras, dtype=np.float64).reshape(-1, 3) if fiducials is not None else np.zeros((0, 3))
        if len(fid_ras) == 0 and not o.detection.auto_bone_points:
            raise RegistrationError("nothing to detect: give fiducials or enable automatic bone points.")
        timings: dict[str, float] = {}
        t = time.perf_counter()
        det = registrar.detector(sub_progress(progress, 0.0, 0.4))
        timings["detector_setup"] = time.perf_counter() - t
        check_cancel(cancel, "registration")
        bone = registrar.bone_candidates() if o.detection.auto_bone_points else np.zeros((0, 3))
        pts = np.vstack([fid_ras, bone])
        t = time.perf_counter()
        d = det.detect(xray.pixels, intr, pts, progress=sub_progress(progress, 0.4, 0.9), cancel=cancel,
                       fast=o.detection.fast)
        timings["detection"] = time.perf_counter() - t
        nf = len(fid_ras)
        conf = np.asarray(d.confidence, dtype=np.float64)
        uv = np.asarray(d.uv, dtype=np.float64)
        usable = np.isfinite(uv).all(1) & (conf > o.detection.min_confidence)
        keep_f = np.flatnonzero(usable[:nf])
        bone_idx = nf + np.flatnonzero(usable[nf:])
        bone_idx = bone_idx[np.argsort(-conf[bone_idx], kind="stable")[: o.detection.n_bone_keep]]
        use = np.concatenate([keep_f, bone_idx]).astype(int)
        check_cancel(cancel, "registration")
        t = time.perf_counter()
        try:
            hyps = solve_pnp_hypotheses(pts[use], uv[use], intr, threshold_px=o.pnp.threshold_px(intr),
                                        iterations=o.pnp.ransac_iterations, confidence=o.pnp.ransac_confidence,
                                        seed=o.seed, max_hypotheses=max(1, o.pnp.hypotheses),
                                        is_plausible=lambda T: is_in_view(ct, Camera(intr, T)))
        except PoseError as exc:
            raise RegistrationError(f"pose estimation failed: {exc}") from exc
        timings["pnp"] = time.perf_counter() - t
        pnp, ranked = hyps[0], []
        if len(hyps) > 1 and o.refine.enabled and self.compare_hypotheses:
            t = time.perf_counter()
            coarse, best = registrar.refiner().refine_from_starts(
                xray.pixels, intr, [h.camera_from_world for h in hyps],
                sub_progress(progress, 0.9, 1.0, "comparing PnP hypotheses: "), cancel, max_levels=1)
            pnp = hyps[best]
            ranked = [PnPHypothesis(inliers=h.n_inliers, coarse_similarity=float(r.similarity_after), chosen=k == best)
                      for k, (h, r) in enumerate(zip(hyps, coarse))]
            timings["hypotheses"] = time.perf_counter() - t
        initial = Camera(intr, pnp.camera_from_world)
        check_overlap(ct, initial, "PnP pose")
        inlier_set = set(use[pnp.inliers].tolist())
        # Landmarks: all fiducials (detected or not) + the bone points given to PnP.
        landmarks = [
            Landmark(label=fid_labels[i] if i < nf else f"bone-{i - nf + 1:05d}", ras=pts[i],
                     detected_px=uv[i] if usable[i] else np.full(2, np.nan), reprojected_px=np.full(2, np.nan),
                     confidence=float(conf[i]), kind="fiducial" if i < nf else "bone", inlier=i in inlier_set)
            for i in list(range(nf)) + bone_idx.tolist()
        ]
        if progress:
            progress(1.0, f"PnP: {pnp.n_inliers}/{len(use)} inliers, {pnp.rmse_inliers_px:.2f} px RMS")
        return InitialPose(camera=initial, method="rayemb", landmarks=landmarks, n_correspondences=len(use),
                           inliers=pnp.n_inliers, pnp_rmse_px=pnp.rmse_inliers_px, hypotheses=ranked, timings_s=timings)
