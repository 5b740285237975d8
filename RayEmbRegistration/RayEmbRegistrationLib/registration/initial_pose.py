"""Where a registration's initial pose comes from: interchangeable strategies (as xvr's pose initialisers).

Owns: the strategies that give a registration its initial pose.

The ``InitialPose`` result and its three strategies — ``GivenPose`` (a caller's start: manual, the
intensity-only baseline), ``RayEmbPnP`` (landmark detection of fiducials + bone points, then PnP + RANSAC; with
``regression`` its PnP poses compete with the pose-regression network's: ``--initial both``) and ``PoseRegression``
(the CT's pose-regression network alone, ``pose_regression.py``: the DiffPose / xvr initialiser).

A strategy's ``initial_pose(registrar, xray, fiducials, progress, cancel)`` returns an ``InitialPose`` or raises
``errors.RegistrationError``; it uses the ``pipeline.Registrar``'s cached detector and refiner.
Frames: world = the CT's RAS mm; poses ``camera_from_world`` (4, 4); pixels (u, v) of the X-ray as given.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..geometry.camera import Camera
from ..errors import ModelUnavailable, RegistrationError
from .plausibility import check_overlap, is_in_view
from ..progress import check_cancel, sub_progress
from ..results import Landmark, PnPHypothesis

__all__ = ["InitialPose", "GivenPose", "RayEmbPnP", "PoseRegression", "DetectionPass", "strategy_for"]

#: a PnP pose that puts fewer bone candidates than this inside the X-ray gets no view pass (too few for PnP)
_MIN_VIEW_POINTS = 50


@dataclass
class InitialPose:
    """The start of the refinement: camera, how it was found, and what the finding produced."""

    camera: Camera
    method: str  # "given" | "rayemb" | "regression"
    landmarks: list[Landmark] = field(default_factory=list)
    n_correspondences: int = 0
    inliers: int = 0
    pnp_rmse_px: float | None = None
    hypotheses: list[PnPHypothesis] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    #: PnP found only implausible poses and the start is one of them re-seated in depth (``RayEmbPnP``)
    reseated: bool = False
    #: the other strategy's start that lost the competition to this one (``--initial both``: the regressed start, or
    #: the best PnP start when the regressed one won), as ``InitialPose``s: a result the verdict does not accept is
    #: refined again from it and the more similar result wins (``pipeline.Registrar._other_starts``)
    alternatives: list["InitialPose"] = field(default_factory=list)


@dataclass(frozen=True)
class GivenPose:
    """The caller's start pose ``camera_from_world`` (4, 4); it must see the CT."""

    camera_from_world: np.ndarray

    def initial_pose(self, registrar, xray, fiducials=None, progress=None, cancel=None) -> InitialPose:
        cam = Camera(xray.intrinsics, np.asarray(self.camera_from_world, dtype=np.float64))
        check_overlap(registrar.ct, cam, "given start pose")
        return InitialPose(camera=cam, method="given")


def _fiducial_landmarks(fiducials) -> list[Landmark]:
    """The fiducials as landmarks without detections (a start that detects nothing still reprojects them)."""
    if fiducials is None:
        return []
    return [Landmark(label=lab, ras=np.asarray(p, dtype=np.float64), detected_px=np.full(2, np.nan),
                     reprojected_px=np.full(2, np.nan), confidence=0.0, kind="fiducial", inlier=False)
            for lab, p in zip(fiducials.labels, np.asarray(fiducials.ras, dtype=np.float64).reshape(-1, 3))]


@dataclass(frozen=True)
class PoseRegression:
    """The pose the CT's pose-regression network reads off the whole X-ray (``pose_regression.predict_pose``;
    ``Registrar.pose_regressor``: from the prepared folder). Detects nothing; the fiducials are only reprojected."""

    def initial_pose(self, registrar, xray, fiducials=None, progress=None, cancel=None) -> InitialPose:
        t = time.perf_counter()
        cam = regressed_camera(registrar, xray)
        check_overlap(registrar.ct, cam, "regressed pose")
        if progress:
            progress(1.0, "pose regression")
        return InitialPose(camera=cam, method="regression", landmarks=_fiducial_landmarks(fiducials),
                           timings_s={"regression": time.perf_counter() - t})


def regressed_camera(registrar, xray) -> Camera:
    """The pose-regression network's camera for ``xray``."""
    from .pose_regression import predict_pose

    return Camera(xray.intrinsics, predict_pose(registrar.pose_regressor(), xray))


def strategy_for(options, initial_camera_from_world=None):
    """The strategy of a registration: ``GivenPose`` when the caller gives a start, else by ``options.initial``
    (``"auto"``: both starts when the CT's pose-regression network is there, else RayEmb's)."""
    if initial_camera_from_world is not None:
        return GivenPose(initial_camera_from_world)
    if options.initial == "regression":
        return PoseRegression()
    both = options.initial == "both" or (options.initial == "auto" and bool(options.regression_path))
    return RayEmbPnP(regression=both)


@dataclass
class DetectionPass:
    """One detection pass of ``RayEmbPnP``: the points detected (fiducials first, then bone points), their
    detections, and which of them go to PnP (the usable fiducials and the ``n_bone_keep`` most confident bone
    points). ``pts`` (N, 3) RAS; ``uv`` (N, 2) X-ray pixels; ``conf`` (N,); ``use`` indices into them."""

    pts: np.ndarray
    uv: np.ndarray
    conf: np.ndarray
    usable: np.ndarray
    n_fiducials: int
    bone_idx: np.ndarray
    use: np.ndarray
    label: str  # "all bone" | "in view of PnP pose k (s % of the bone)"

    def landmarks(self, fid_labels, inliers) -> list[Landmark]:
        """All fiducials (detected or not) + the bone points given to PnP; ``inliers`` indexes ``use``."""
        nf, inlier_set = self.n_fiducials, set(self.use[inliers].tolist())
        return [
            Landmark(label=fid_labels[i] if i < nf else f"bone-{i - nf + 1:05d}", ras=self.pts[i],
                     detected_px=self.uv[i] if self.usable[i] else np.full(2, np.nan),
                     reprojected_px=np.full(2, np.nan), confidence=float(self.conf[i]),
                     kind="fiducial" if i < nf else "bone", inlier=i in inlier_set)
            for i in list(range(nf)) + self.bone_idx.tolist()
        ]


@dataclass(frozen=True)
class RayEmbPnP:
    """Detect the fiducials and ``n_bone_candidates`` random bone points, keep the fiducials and the
    ``n_bone_keep`` most confident bone points, and solve PnP (MAGSAC++ RANSAC + LM polish) on them.

    With ``detection.view_pass`` (default) — always, or with ``detection.view_pass_if_inliers_below`` < 1 only
    when the first pass's largest consensus has fewer inliers than that share of its correspondences — a second
    pass follows for each plausible PnP pose: the bone points *that pose* puts inside the X-ray are detected and PnP is solved on them. A close-up
    shows a small part of the bone, so most random bone points are not in the image and their detections are
    noise; among the points in view of a roughly right pose, far more detections are right (docs/pipeline.md,
    "View pass"). Its poses join the first pass's.

    When every PnP pose of the first pass is implausible (``pnp.reseat_implausible``, refinement on), the refused
    poses are re-seated in depth (``_reseat``) and take the first pass's place; ``InitialPose.reseated`` says when the
    start is one of them (the verdict then judges it by the detections that agree with the final pose).

    With ``pnp.hypotheses > 1`` (or the view pass), refinement on and ``compare_hypotheses``, the plausible poses
    each get the coarsest refinement level and the one whose DRR matches the X-ray best wins (the largest consensus
    is not always the right pose); without, the largest consensus of the first pass is taken.

    With ``regression`` (``--initial both``) the pose-regression network's pose joins that competition as one more
    start when the CT is in its view (it wins when its coarse refinement matches the X-ray best: the start is then
    ``method="regression"``, with the detections kept as landmarks), and it is the start when detection or PnP finds
    no pose at all. The other strategy's best start is kept in ``InitialPose.alternatives``: a result the verdict does
    not accept is refined again from it, and the more similar result wins (a coarse level alone can pick the wrong one
    of two starts: on a pelvis close-up the PnP start won, ended 11.1 mm off and was not accepted, while the regressed
    start refines to 3.4 mm).
    """

    compare_hypotheses: bool = True
    regression: bool = False

    def initial_pose(self, registrar, xray, fiducials=None, progress=None, cancel=None) -> InitialPose:
        o = registrar.options
        fid_labels = list(fiducials.labels) if fiducials is not None else []
        fid_ras = np.asarray(fiducials.ras, dtype=np.float64).reshape(-1, 3) if fiducials is not None else np.zeros((0, 3))
        if len(fid_ras) == 0 and not o.detection.auto_bone_points:
            raise RegistrationError("nothing to detect: give fiducials or enable automatic bone points.")
        timings: dict[str, float] = {}
        reg = None
        if self.regression:
            t = time.perf_counter()
            reg = regressed_camera(registrar, xray)
            timings["regression"] = time.perf_counter() - t
        try:
            return self._initial_pose(registrar, xray, fid_labels, fid_ras, timings, reg, progress, cancel)
        except RegistrationError as exc:
            if reg is None or isinstance(exc, ModelUnavailable):
                raise
            check_overlap(registrar.ct, reg, "regressed pose")  # raises when it cannot be a start either
            return InitialPose(camera=reg, method="regression", landmarks=_fiducial_landmarks(fiducials),
                               timings_s=timings, hypotheses=[PnPHypothesis(
                                   inliers=0, coarse_similarity=math.nan, chosen=True,
                                   detection=f"pose regression (RayEmb found no pose: {exc})"[:200])])

    def _initial_pose(self, registrar, xray, fid_labels, fid_ras, timings, reg, progress, cancel) -> InitialPose:
        from .pose import PoseError

        o = registrar.options
        ct, intr = registrar.ct, xray.intrinsics
        t = time.perf_counter()
        det = registrar.detector(sub_progress(progress, 0.0, 0.3))
        timings["detector_setup"] = time.perf_counter() - t
        check_cancel(cancel, "registration")
        bone = registrar.bone_candidates() if o.detection.auto_bone_points else np.zeros((0, 3))
        t = time.perf_counter()
        first = self._detect(det, registrar, xray, fid_ras, bone, "all bone", sub_progress(progress, 0.3, 0.6), cancel)
        timings["detection"] = time.perf_counter() - t
        check_cancel(cancel, "registration")
        t = time.perf_counter()
        reseated = False
        try:
            hyps = self._solve(registrar, intr, first, max(1, o.pnp.hypotheses))
        except PoseError as exc:
            timings["pnp"] = time.perf_counter() - t
            t = time.perf_counter()
            hyps = self._reseat(registrar, xray, first, exc.implausible[: max(1, o.pnp.hypotheses)])
            timings["reseat"] = time.perf_counter() - t
            if not hyps:
                raise RegistrationError(f"pose estimation failed: {exc}") from exc
            reseated = True
        else:
            timings["pnp"] = time.perf_counter() - t
        cands = [(h, first) for h in hyps]
        below = o.detection.view_pass_if_inliers_below
        weak = below >= 1.0 or hyps[0].n_inliers < below * len(first.use)  # 1.0: always
        if o.detection.view_pass and o.detection.auto_bone_points and weak:
            t = time.perf_counter()
            for k, h in enumerate(hyps):
                check_cancel(cancel, "registration")
                sub = sub_progress(progress, 0.6 + 0.2 * k / len(hyps), 0.6 + 0.2 * (k + 1) / len(hyps),
                                   f"view pass {k + 1}/{len(hyps)}: ")
                in_view, share = registrar.bone_in_view(Camera(intr, h.camera_from_world))
                if len(in_view) < _MIN_VIEW_POINTS:
                    continue
                second = self._detect(det, registrar, xray, fid_ras, in_view,
                                      f"in view of PnP pose {k + 1} ({share:.0%} of the bone)", sub, cancel)
                try:
                    cands.append((self._solve(registrar, intr, second, 1)[0], second))
                except PoseError:
                    continue
            timings["view_pass"] = time.perf_counter() - t
        n_reseated = len(hyps) if reseated else 0  # the first pass's candidates are the re-seated ones
        (pnp, used), ranked, best, pnp_best = cands[0], [], 0, 0
        if reg is not None and not is_in_view(ct, reg):  # a regressed pose that cannot have made the X-ray
            reg = None
        starts = [h.camera_from_world for h, _ in cands] + ([reg.camera_from_world] if reg is not None else [])
        if len(starts) > 1 and o.refine.enabled and self.compare_hypotheses:
            t = time.perf_counter()
            coarse, best = registrar.refiner().refine_from_starts(
                xray.pixels, intr, starts, sub_progress(progress, 0.8, 1.0, "comparing PnP poses: "), cancel,
                max_levels=1)
            ranked = [PnPHypothesis(inliers=h.n_inliers, coarse_similarity=float(r.similarity_after), chosen=k == best,
                                    detection=p.label + (" (re-seated in depth)" if k < n_reseated else ""))
                      for k, ((h, p), r) in enumerate(zip(cands, coarse))]
            if reg is not None:
                ranked.append(PnPHypothesis(inliers=0, coarse_similarity=float(coarse[-1].similarity_after),
                                            chosen=best == len(cands), detection="pose regression"))
            timings["hypotheses"] = time.perf_counter() - t
            pnp_best = best if best < len(cands) else int(np.argmax([r.similarity_after for r in coarse[:-1]]))
            pnp, used = cands[pnp_best]
        initial = Camera(intr, pnp.camera_from_world)
        check_overlap(ct, initial, "PnP pose")
        pnp_start = InitialPose(camera=initial, method="rayemb", landmarks=used.landmarks(fid_labels, pnp.inliers),
                                n_correspondences=len(used.use), inliers=pnp.n_inliers,
                                pnp_rmse_px=pnp.rmse_inliers_px, hypotheses=ranked, timings_s=timings,
                                reseated=pnp_best < n_reseated)
        if reg is None:
            if progress:
                progress(1.0, f"PnP: {pnp.n_inliers}/{len(used.use)} inliers, {pnp.rmse_inliers_px:.2f} px RMS")
            return pnp_start
        # the regressed start keeps the detections as landmarks (none an inlier); the loser is the winner's alternative
        reg_start = InitialPose(camera=reg, method="regression", landmarks=first.landmarks(fid_labels, []),
                                n_correspondences=len(first.use), hypotheses=ranked, timings_s=timings)
        won, lost = (reg_start, pnp_start) if best == len(cands) else (pnp_start, reg_start)
        won.alternatives = [lost]
        if progress:
            progress(1.0, f"the {'regressed' if won is reg_start else 'PnP'} pose matches the X-ray best")
        return won

    @staticmethod
    def _detect(det, registrar, xray, fid_ras, bone, label, progress, cancel) -> DetectionPass:
        """Detect the fiducials and ``bone``; keep the usable fiducials and the ``n_bone_keep`` bone points whose peaks
        stand out most (``detect.peak_contrast``; not the highest peak scores: see there). A detection on a pixel the
        X-ray's keep-mask drops (``xray_mask``: behind a collimator shutter, in a clipped region) is not usable."""
        o = registrar.options.detection
        pts = np.vstack([fid_ras, bone])
        d = det.detect(xray.pixels, xray.intrinsics, pts, progress=progress, cancel=cancel, fast=o.fast)
        nf = len(fid_ras)
        conf = np.asarray(d.confidence, dtype=np.float64)
        uv = np.asarray(d.uv, dtype=np.float64)
        usable = np.isfinite(uv).all(1) & (conf > o.min_confidence)
        keep = registrar.refiner().keep_mask(xray.pixels)  # None with --no-xray-mask or nothing dropped
        if keep is not None:  # a peak behind a collimator shutter or in a clipped region shows nothing of the CT
            q = np.rint(np.where(np.isfinite(uv), uv, 0.0)).astype(int)
            usable &= keep[np.clip(q[:, 1], 0, keep.shape[0] - 1), np.clip(q[:, 0], 0, keep.shape[1] - 1)]
        keep_f = np.flatnonzero(usable[:nf])
        bone_idx = nf + np.flatnonzero(usable[nf:])
        bone_idx = bone_idx[np.argsort(-d.contrast[bone_idx], kind="stable")[: o.n_bone_keep]]  # detect.peak_contrast
        use = np.concatenate([keep_f, bone_idx]).astype(int)
        return DetectionPass(pts=pts, uv=uv, conf=conf, usable=usable, n_fiducials=nf, bone_idx=bone_idx, use=use,
                             label=label)

    @staticmethod
    def _reseat(registrar, xray, p: DetectionPass, implausible) -> list:
        """PnP poses (``pose.PnPResult``) that PnP found but the field-of-view test refused, each slid along the
        viewing ray of its inliers' centroid to the most similar depth (``refine.Refiner.search_depth``: the
        refinement's own depth search, 0.3–0.95 × SDD, here from a start far outside that range); the plausible
        ones, with their inliers counted again at the new depth (``PnPOptions.reseat_implausible``). Empty when the
        option or the refinement is off."""
        from .pose import PnPResult, reprojection_errors

        o = registrar.options
        if not (o.pnp.reseat_implausible and o.refine.enabled) or not implausible:
            return []
        intr, ct = xray.intrinsics, registrar.ct
        X, x = p.pts[p.use], p.uv[p.use]
        thr = o.pnp.threshold_px(intr)
        out = []
        for h in implausible:
            centre = X[h.inliers].mean(0)
            try:
                ds = registrar.refiner().search_depth(xray.pixels, intr, h.camera_from_world, centre_ras=centre)
            except ValueError:  # its inliers behind the source: no ray to slide along
                continue
            T = ds.camera_from_world
            if not is_in_view(ct, Camera(intr, T)):
                continue
            err = reprojection_errors(T, intr, X, x)
            inl = np.flatnonzero(err <= thr)
            rmse = float(np.sqrt(np.mean(err[inl] ** 2))) if len(inl) else float("nan")
            out.append(PnPResult(T, inl, h.n_correspondences, err, rmse, h.method + " re-seated", h.attempts))
        return out

    @staticmethod
    def _solve(registrar, intr, p: DetectionPass, max_hypotheses: int):
        """The plausible PnP poses of one pass (``pose.solve_pnp_hypotheses``; raises ``pose.PoseError``)."""
        from .pose import solve_pnp_hypotheses

        o, ct = registrar.options, registrar.ct
        return solve_pnp_hypotheses(p.pts[p.use], p.uv[p.use], intr, threshold_px=o.pnp.threshold_px(intr),
                                    iterations=o.pnp.ransac_iterations, confidence=o.pnp.ransac_confidence,
                                    seed=o.seed, max_hypotheses=max_hypotheses,
                                    is_plausible=lambda T: is_in_view(ct, Camera(intr, T)))
