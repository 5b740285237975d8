"""The registration of X-rays to one CT: ``Registrar(ct, options, model)``.

Owns: ``Registrar``: registering X-rays to one CT (its caches and the three stages).

The ``Registrar`` — the per-CT caches (network, detector with its templates, refiner) and the data path
``register()`` = initial pose (a strategy of ``initial_pose.py``) → refinement → finalisation (with the
verdict of ``verdict.py``), plus ``detect()``.

One ``Registrar`` serves every X-ray of its CT (the benchmark, Slicer re-runs): templates and the resampled CT
are built once. ``register``/``detect`` at module level are one-shot conveniences.
Frames: world = the CT's RAS mm; cameras are ``camera.Camera`` (OpenCV); pixels (u, v) of the X-ray as given.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..geometry.camera import Camera
from ..device import resolve_device
from ..errors import ModelUnavailable, RegistrationError
from .initial_pose import InitialPose, strategy_for
from ..options import RegistrationOptions
from .plausibility import carm_disagreement, is_in_view, overlap_problem
from .pose import DEPTH_VALLEY_FACTORS, MIN_CORRESPONDENCES, PoseError, depth_valley_poses
from ..progress import CancelFn, ProgressFn, check_cancel, sub_progress
from ..results import (DETECTED, NOT_SEEN, OUTSIDE_CT, OUTSIDE_VIEW, DepthSearchSummary, DetectionResult, PoseCheck,
                      RegistrationResult)
from .verdict import DEFAULT_RULE, competitor_margin, judge, match_similarity, neighbour_gain, signal_points, signals
from ..inputs.volume import BONE_HU, CTVolume

__all__ = ["Registrar", "register", "detect"]

#: the starts that the depth search and the rescue search work from (estimates, not a caller's pose): PnP's and the
#: pose-regression network's (both are weakest in depth)
SEARCHED_STARTS = ("rayemb", "regression")
#: the smallest CT (voxels along each axis) a registration accepts
MIN_CT_VOXELS = 8
# Progress ranges of register()'s three stages.
_INITIAL, _REFINE = (0.0, 0.42), (0.42, 0.97)


class Registrar:
    """Registers X-rays to one CT.

    Args:
        ct: the CT (``volume.CTVolume``).
        options: ``options.RegistrationOptions`` (may be replaced later: caches are keyed by what they depend on).
        model: an ``model.EmbeddingNet`` to use instead of loading ``options.model_path``.
    """

    def __init__(self, ct: CTVolume, options: RegistrationOptions | None = None, model=None) -> None:
        self.ct = ct
        self.options = options or RegistrationOptions()
        self._model = model
        self._models: dict = {}
        self._detectors: dict = {}
        self._refiners: dict = {}
        self._hash: str | None = None
        self._view_pool: tuple | None = None

    # --- caches ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return resolve_device(self.options.device, task="register")

    def matches(self, ct: CTVolume) -> bool:
        """True when ``ct`` has the same voxels and affine as this registrar's CT (its caches apply)."""
        from ..detection.templates import ct_hash

        if ct is self.ct:
            return True
        if self._hash is None:
            self._hash = ct_hash(self.ct)
        return ct.shape == self.ct.shape and ct_hash(ct) == self._hash

    def model(self):
        """The network (``options.model_path``, or the bundled one); ``ModelUnavailable`` if none loads."""
        if self._model is not None:
            return self._model
        key = (self.options.model_path, self.device)
        if key not in self._models:
            from ..detection.model import ModelFileError, load_model

            try:
                self._models[key] = load_model(self.options.model_path, device=self.device)
            except (ModelFileError, FileNotFoundError) as exc:
                raise ModelUnavailable(f"no trained ray-embedding network: {exc}") from exc
        return self._models[key]

    def pose_regressor(self):
        """The CT's pose-regression network (``options.regression_path``: a prepared folder's); ``ModelUnavailable``
        when there is none."""
        path = self.options.regression_path
        if not path:
            raise ModelUnavailable("the initial pose 'regression' / 'both' needs the CT's pose-regression network, "
                                   "made by 'rayemb prepare --ct CT' (then give --prepared DIR, or --prepared auto).")
        key = ("regression", path, self.device)
        if key not in self._models:
            from ..detection.model import ModelFileError
            from .pose_regression import load_pose_regressor

            try:
                self._models[key] = load_pose_regressor(path, device=self.device)
            except (ModelFileError, FileNotFoundError) as exc:
                raise ModelUnavailable(f"no pose-regression network: {exc}") from exc
        return self._models[key]

    def detector(self, progress: ProgressFn | None = None):
        """The ``detect.LandmarkDetector`` for this CT (templates built on first use)."""
        from ..detection.detect import LandmarkDetector

        model = self.model()
        o = self.options.detection
        key = (id(model), self.device, o.n_templates)
        if key not in self._detectors:
            self._detectors[key] = LandmarkDetector(model, self.ct, device=self.device, n_templates=o.n_templates,
                                                    cache_dir=o.template_cache, progress=progress)
        return self._detectors[key]

    def refiner(self):
        """The ``refine.Refiner`` for this CT and the current refinement options."""
        from .refine import Refiner

        key = (dataclasses.replace(self.options.refine, enabled=True, depth_search=True), self.device)
        if key not in self._refiners:
            self._refiners[key] = Refiner(self.ct, self.options.refine, self.device)
        return self._refiners[key]

    def bone_candidates(self) -> np.ndarray:
        """(N, 3) RAS bone points to detect (``detection.n_bone_candidates``, seeded by ``options.seed``)."""
        n = self.options.detection.n_bone_candidates
        return self.ct.sample_bone_points(n, np.random.default_rng(self.options.seed))

    def bone_candidates_in_view(self, camera: Camera) -> np.ndarray:
        """(M, 3) RAS bone points that ``camera`` puts inside its image and in front of its source: up to
        ``detection.n_bone_candidates`` of a pool of ``detection.n_view_pool`` bone points drawn once per CT (seeded
        by ``options.seed``), in the pool's random order (``initial_pose.RayEmbPnP``'s view pass)."""
        return self.bone_in_view(camera)[0]

    def view_pool(self) -> np.ndarray:
        """(``detection.n_view_pool``, 3) RAS bone points drawn once per CT (seeded by ``options.seed``): the pool
        from which the points a pose puts in view are taken (``bone_in_view``, the rescue's rotation centres)."""
        d = self.options.detection
        key = (d.n_view_pool, self.options.seed)
        if self._view_pool is None or self._view_pool[0] != key:
            self._view_pool = (key, self.ct.sample_bone_points(d.n_view_pool, np.random.default_rng([self.options.seed, 1])))
        return self._view_pool[1]

    def bone_in_view(self, camera: Camera) -> tuple[np.ndarray, float]:
        """``bone_candidates_in_view(camera)`` and the share (0–1) of the whole view pool that ``camera`` puts inside
        its image and in front of its source (~1 for a view of the whole bone, small for a close-up), from one
        projection of the pool."""
        d = self.options.detection
        pool = self.view_pool()
        inside = camera.intrinsics.contains_pixels(camera.project(pool)) & (camera.depth(pool) > 0)
        return pool[inside][: d.n_bone_candidates], float(inside.mean())

    # --- checks ----------------------------------------------------------------------------------------------
    def check_inputs(self, xray) -> None:
        """``RegistrationError`` for a tiny CT, an X-ray without geometry, a blank X-ray, or a CT without bone."""
        ct = self.ct
        if min(ct.shape) < MIN_CT_VOXELS:
            raise RegistrationError(
                f"CT '{ct.name}' has only {ct.shape} voxels; a registration needs at least {MIN_CT_VOXELS} voxels "
                "along each axis (is this the CT volume, or a thumbnail / a single slice?)."
            )
        if xray is None or getattr(xray, "intrinsics", None) is None:
            raise RegistrationError("the X-ray has no detector geometry; give --geometry JSON (source_to_detector_mm, "
                                    "pixel_spacing_mm).")
        if not np.any(ct.hu >= BONE_HU):
            raise RegistrationError(
                f"CT '{ct.name}' has no bone (no voxel ≥ {BONE_HU:g} HU, max {float(ct.hu.max()):.0f}); "
                "RayEmb registers bone. Is the CT in Hounsfield units?"
            )
        p = np.asarray(xray.pixels)
        if float(p.max() - p.min()) <= 0:
            raise RegistrationError(f"X-ray '{getattr(xray, 'name', '')}' is blank (all pixels equal).")

    # --- detect ----------------------------------------------------------------------------------------------
    def detect(self, xray, points, heatmaps: bool = False, progress: ProgressFn | None = None,
               cancel: CancelFn | None = None, pose_check: bool = True) -> DetectionResult:
        """Detect the 2D projections of ``points`` (``fiducials.Fiducials`` or (N, 3) RAS, labelled P1…PN) in
        the X-ray; ``heatmaps``: also the (N, h, w) score maps at network size.

        ``pose_check`` (with automatic bone points on): the X-ray is registered with these points as fiducials
        (``_pose_check``); when the registration is accepted, a point that projects outside the X-ray at its pose
        is ``OUTSIDE_VIEW`` (no pixel: a network always answers with some pixel, and for such a point it is wrong)
        and every detection is compared with its projection; otherwise the result says its pixels are unverified.
        (An unrefined PnP pose is too rough for this: measured, it put a point 55 px outside a 128² close-up
        inside it.)

        Raises: ModelUnavailable, RegistrationError, progress.Cancelled.
        """
        self.check_inputs(xray)
        if hasattr(points, "labels"):
            labels, ras = list(points.labels), np.asarray(points.ras, dtype=np.float64).reshape(-1, 3)
        else:
            ras = np.asarray(points, dtype=np.float64).reshape(-1, 3)
            labels = [f"P{i + 1}" for i in range(len(ras))]
        if len(ras) == 0:
            raise RegistrationError("no points to detect; give a fiducial file with at least one point.")
        t0 = time.perf_counter()
        checking = pose_check and self.options.detection.auto_bone_points
        split = (0.2, 0.4) if checking else (0.5, 1.0)  # the pose check (a registration) takes the rest
        det = self.detector(sub_progress(progress, 0.0, split[0]))
        check_cancel(cancel, "detection")
        d = det.detect(xray.pixels, xray.intrinsics, ras, heatmaps=heatmaps, progress=sub_progress(progress, *split),
                       cancel=cancel, fast=self.options.detection.fast)
        # A point outside the CT, or one no template view sees, has no subspace to match: no pixel, confidence 0.
        status = np.where(~self.ct.contains(ras), OUTSIDE_CT, np.where(d.confidence > 0, DETECTED, NOT_SEEN))
        check = None
        if checking:
            check = self._pose_check(xray, labels, ras, d.uv, sub_progress(progress, 0.4, 1.0, "pose check: "), cancel)
            if check.verified:
                outside = ~xray.intrinsics.contains_pixels(check.reprojected_px)
                status = np.where((status == DETECTED) & outside, OUTSIDE_VIEW, status)
        found = status == DETECTED
        uv = np.where(found[:, None], d.uv, np.nan)
        conf = np.where(found, d.confidence, 0.0)
        return DetectionResult(labels=labels, ras=ras, uv=uv, confidence=conf, heatmaps=d.heatmaps,
                               heatmap_intrinsics=d.net_intrinsics if heatmaps else None,
                               seconds=time.perf_counter() - t0, status=status.tolist(), pose_check=check)

    def _pose_check(self, xray, labels, ras, detected_uv, progress=None, cancel=None) -> PoseCheck:
        """Register the X-ray with these points as fiducials (the full pipeline: PnP, refinement, verdict); the
        detections are verified when the registration is ``accepted``, and judged against its pose."""
        from ..inputs.fiducials import Fiducials

        thr = self.options.pnp.threshold_px(xray.intrinsics)
        hint = "for a new patient, prepare the CT first (rayemb prepare)"
        inside_ct = self.ct.contains(ras)
        fid = Fiducials([lab for lab, ok in zip(labels, inside_ct) if ok], ras[inside_ct])
        try:
            res = self.register(xray, fid, progress=progress, cancel=cancel)
        except RegistrationError as exc:
            return PoseCheck(False, f"pixels unverified: no C-arm pose agrees with the detections ({exc}); {hint}",
                             threshold_px=thr)
        if res.verdict.status != "accepted":
            return PoseCheck(False, f"pixels unverified: the registration they give is {res.verdict.status} "
                             f"({'; '.join(res.verdict.reasons) or 'no reason given'}); {hint}",
                             inliers=res.inliers, threshold_px=thr)
        uv = res.final.project(ras)
        with np.errstate(invalid="ignore"):
            consistent = np.linalg.norm(uv - np.asarray(detected_uv, dtype=np.float64), axis=1) <= thr
        return PoseCheck(True, f"verified by an accepted registration ({res.inliers} PnP inliers); points outside the "
                         "X-ray at its pose are flagged outside_view", inliers=res.inliers, threshold_px=thr,
                         reprojected_px=uv, consistent=consistent)

    # --- register --------------------------------------------------------------------------------------------
    def register(self, xray, fiducials=None, initial_camera_from_world=None, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> RegistrationResult:
        """Register the X-ray (``xray.XRayImage``) to the CT: initial pose, refinement, finalisation.

        The initial pose comes from ``initial_camera_from_world`` ((4, 4), e.g. a manual start or the
        intensity-only baseline: ``initial_pose.GivenPose``) or, as ``options.initial`` says, from RayEmb detections
        + PnP (``initial_pose.RayEmbPnP``), the pose-regression network (``initial_pose.PoseRegression``) or both
        competing. ``fiducials``: ``fiducials.Fiducials`` to detect and use, or None.

        Raises:
            RegistrationError (bad input, < 6 correspondences, no overlap; ``ModelUnavailable`` if detection is
            needed and no network can be loaded), progress.Cancelled.
        """
        t_start = time.perf_counter()
        self.check_inputs(xray)
        strategy = strategy_for(self.options, initial_camera_from_world)
        init = strategy.initial_pose(self, xray, fiducials, sub_progress(progress, *_INITIAL), cancel)
        check_cancel(cancel, "registration")
        refined, depth, sims, warnings, t_refine = self._refine(xray, init, sub_progress(progress, *_REFINE), cancel)
        result = self._finalise(xray, init, refined, depth, sims, list(warnings))
        if init.alternatives and refined is not None and not result.verdict.accepted:
            check_cancel(cancel, "registration")
            result, init = self._other_starts(xray, init, result, cancel)
        rescue_bases = []
        if self._valley_retry_applies(result):
            check_cancel(cancel, "registration")
            before = result.final.camera_from_world
            result, valley_pose = self._valley_retry(xray, init, result, warnings, cancel)
            rescue_bases = [before] + ([valley_pose] if valley_pose is not None else [])
        if self._rescue_applies(result):
            check_cancel(cancel, "registration")
            result = self._rescue(xray, init, result, warnings, cancel, rescue_bases)
        result.timings_s = {**init.timings_s, **({"refine": t_refine} if refined is not None else {}),
                            **result.timings_s, "total": time.perf_counter() - t_start}
        if progress:
            progress(1.0, f"done ({result.final_stage})")
        return result

    def _other_starts(self, xray, init: InitialPose, result, cancel):
        """``--initial both``, for a result the verdict did not accept: refine from each start of the other strategy
        (``init.alternatives``) as from its own (depth search included) and keep the more similar in-view result,
        finalised and judged with that start → (result, its start). ``timings_s["other_start"]`` says that it ran."""
        t = time.perf_counter()
        for alt in init.alternatives:
            rr, depth, sims, warnings, _ = self._refine(xray, alt, None, cancel)
            if rr is not None and self._improves(result, rr, xray.intrinsics):
                new = self._finalise(xray, alt, rr, depth, sims, list(warnings))
                new.timings_s = {**result.timings_s, **new.timings_s}
                result, init = new, alt
        result.timings_s["other_start"] = time.perf_counter() - t
        return result, init

    def _valley_retry_applies(self, result) -> bool:
        """The depth-valley retry runs for a refined, depth-searched registration from a RayEmb (PnP) start that the
        verdict did not accept *because its DRR does not match the X-ray* (``verdict.match_similarity`` below
        ``VerdictRule.accept_similarity``; ``options.RefineOptions.depth_valley`` ``"retry"``), before the rescue
        search. A result that matches but failed a finer check (the local-optimum or competitor check, the depth
        tolerance) is near a right pose, and a more similar valley pose elsewhere is a look-alike, not a correction
        (on a chest close-up a right pose 0.26 mm off, uncertain by the local-optimum check, would otherwise be
        replaced by a valley pose 30 mm off, more similar, and accepted)."""
        o = self.options.refine
        return (o.enabled and o.depth_valley == "retry" and result.initial_method == "rayemb"
                and result.depth_search is not None and result.verdict is not None and not result.verdict.accepted
                and not match_similarity(result.verdict.signals) >= DEFAULT_RULE.accept_similarity)

    def _valley_retry(self, xray, init: InitialPose, result, warnings, cancel):
        """Refine from the most similar of the PnP pose's depth-valley poses (``_depth_valley``) → (result, the
        refined valley pose or None). The refined pose replaces the result (finalised and judged again,
        ``depth_search.chosen`` = ``"depth-valley start"``) when it is more similar and in view, else the result is
        kept. Either way the refined valley pose is returned: the rescue search, if it still runs, rotates it *and*
        the result's pose from before the retry — a more similar wrong valley pose alone can move the rescue away from
        the pose that leads it to the truth, and a valley pose that is not more similar can still be the one the
        rescue needs (docs/pipeline.md, "Depth valley"). ``timings_s["valley"]`` says that it ran."""
        t = time.perf_counter()
        intr, ds = xray.intrinsics, result.depth_search
        valley = self._depth_valley(init, intr)
        if valley is None:
            result.timings_s["valley"] = time.perf_counter() - t
            return result, None
        refiner = self.refiner()
        j, _ = refiner.most_similar(xray.pixels, intr, valley, ds.grid_px, is_plausible=self._in_view(intr))
        rr = refiner.refine(xray.pixels, intr, valley[j], cancel=cancel)
        if self._improves(result, rr, intr):
            depth = dataclasses.replace(ds, refined_similarity=ds.refined_similarity + (float(rr.similarity_after),),
                                        chosen="depth-valley start", valley_factor=float(DEPTH_VALLEY_FACTORS[j]))
            result = self._adopt(xray, init, result, rr, rr.seconds, depth, warnings)
        result.timings_s["valley"] = time.perf_counter() - t
        return result, rr.camera_from_world

    def _in_view(self, intr):
        """``is_plausible`` of the pose searches: does a pose put this CT in the view of ``intr``?"""
        return lambda T: is_in_view(self.ct, Camera(intr, T))

    def _improves(self, result, found, intr) -> bool:
        """Whether ``found`` (a ``refine.RefineResult`` of a second search: the valley retry, the rescue) should
        replace ``result``: more similar, and the CT in its view (``overlap_problem``)."""
        return (found.similarity_after > result.similarity_after
                and overlap_problem(self.ct, Camera(intr, found.camera_from_world)) is None)

    def _adopt(self, xray, init: InitialPose, result, found, seconds: float, depth, warnings,
               rescued: bool = False) -> RegistrationResult:
        """``result`` replaced by the pose of ``found`` (a second search's ``refine.RefineResult``, ``seconds`` long):
        finalised and judged again (``_finalise``), similarity from the PnP pose's to ``found``'s, ``depth`` as the
        depth-search summary, the timings so far kept."""
        from .refine import RefineResult

        rr = RefineResult(found.camera_from_world, result.similarity_before, found.similarity_after, True,
                          found.history, found.params, seconds)
        new = self._finalise(xray, init, rr, depth, (result.similarity_before, found.similarity_after), list(warnings),
                             rescued=rescued)
        new.timings_s = {**result.timings_s, **new.timings_s}
        return new

    def _rescue_applies(self, result) -> bool:
        """The rescue search runs for a refined registration from a RayEmb (PnP) or regressed start that the verdict
        did not accept (``options.RefineOptions.rescue``); a caller's start pose is refined as given."""
        o = self.options.refine
        return (o.enabled and o.rescue and result.initial_method in SEARCHED_STARTS and result.verdict is not None
                and not result.verdict.accepted)

    def _rescue(self, xray, init: InitialPose, result, warnings, cancel, extra_bases=()):
        """``rescue.search`` from the final pose, ``extra_bases`` ((4, 4) each: the valley retry's) and the start
        (each once); its pose replaces the result (finalised and judged again) when it is more similar and plausible,
        else the result is kept. Either way ``result.rescue`` says what was tried."""
        from . import rescue

        o = self.options.refine
        bases = [result.final.camera_from_world]
        for T in (*extra_bases, init.camera.camera_from_world):
            if not any(np.allclose(T, B) for B in bases):
                bases.append(np.asarray(T, dtype=np.float64))
        # Each base rotates about the bone of the pool that it puts in view (all of the pool when it sees too little).
        best, n_starts, seconds = rescue.search(self.refiner(), xray.pixels, xray.intrinsics, bases, self.view_pool(),
                                               o.rescue_angles_deg, o.rescue_top, o.rescue_grid_px, cancel,
                                               compare_levels=o.rescue_compare_levels or None,
                                               screen_iterations=o.rescue_screen_iterations)
        before = result.similarity_after  # refined (``_rescue_applies``), so measured
        adopt = self._improves(result, best, xray.intrinsics)
        summary = rescue.RescueSummary(
            status_before=result.verdict.status, reasons_before=tuple(result.verdict.reasons), starts=n_starts,
            refined=min(o.rescue_top, n_starts), grid_px=o.rescue_ranking_px, similarity_before=float(before),
            similarity=float(best.similarity_after), adopted=bool(adopt), seconds=seconds,
            screen_iterations=int(o.rescue_screen_iterations))
        if adopt:
            result = self._adopt(xray, init, result, best, seconds, result.depth_search, warnings, rescued=True)
        result.rescue = summary
        result.timings_s["rescue"] = seconds
        return result

    def _refine(self, xray, init: InitialPose, progress, cancel):
        """Refinement stage → (RefineResult or None, DepthSearchSummary or None, (similarity before, after),
        warnings, seconds); all None / empty when refinement is off."""
        o = self.options.refine
        if not o.enabled:
            return None, None, (None, None), [], 0.0
        t = time.perf_counter()
        intr, T0 = xray.intrinsics, init.camera.camera_from_world
        refiner = self.refiner()
        warnings: list[str] = []
        rr = depth = None
        if o.depth_search and init.method in SEARCHED_STARTS:
            # PnP is weakest in depth: also refine from the most similar depth along the viewing ray, and (depth_valley
            # "always") from the most similar pose of its depth valley (depth and tilt refitted to the PnP inliers).
            valley = self._depth_valley(init, intr) if o.depth_valley == "always" else None
            try:
                rr, ds, results, k = refiner.refine_with_depth_search(
                    xray.pixels, intr, T0, progress, cancel, is_plausible=self._in_view(intr),
                    compare_levels=o.depth_compare_levels or None, valley=valley,
                    valley_factors=DEPTH_VALLEY_FACTORS)
            except ValueError as exc:  # the bone centre behind the source: nothing to slide along
                warnings.append(f"depth search skipped: {exc}")
            else:
                depth = DepthSearchSummary(
                    factor=ds.factor, similarity_pnp=ds.similarity_start, similarity=ds.similarity, grid_px=ds.size,
                    candidates=len(ds.factors), refined_similarity=tuple(float(r.similarity_after) for r in results),
                    chosen=ds.starts[k], valley_factor=ds.valley_factor)
        if rr is None:
            rr = refiner.refine(xray.pixels, intr, T0, progress, cancel)
        return rr, depth, (rr.similarity_before, rr.similarity_after), warnings, time.perf_counter() - t

    def _depth_valley(self, init: InitialPose, intr):
        """(F, 4, 4) ``pose.depth_valley_poses`` of the PnP pose from its inliers, or None (too few, their centroid
        behind the source, or a fit that leaves them behind it)."""
        inl = [lm for lm in init.landmarks if lm.inlier and np.isfinite(lm.detected_px).all()]
        if len(inl) < MIN_CORRESPONDENCES:
            return None
        try:
            return depth_valley_poses(np.array([lm.ras for lm in inl]), np.array([lm.detected_px for lm in inl]), intr,
                                      init.camera.camera_from_world, DEPTH_VALLEY_FACTORS,
                                      self.options.pnp.threshold_px(intr))
        except (PoseError, ValueError):  # ValueError: least_squares on non-finite reprojections
            return None

    def _finalise(self, xray, init: InitialPose, rr, depth, sims, warnings,
                  rescued: bool = False) -> RegistrationResult:
        """Choose the final pose (a refined pose that leaves the field of view is rejected), check it against the
        recorded C-arm angles, reproject the landmarks, render the final DRR, give the verdict.
        ``rescued``: the pose comes from the rescue search; the verdict then also asks that it explain enough of the
        detections (``VerdictRule.min_rescued_agreement``), and the competitor check runs on it whatever its
        footprint similarity (a wide search can end in a local optimum near the truth). The same holds for a start
        re-seated in depth (``init.reseated``: PnP found only implausible poses) and for a regressed start (no
        consensus of detections stands behind it)."""
        from .refine import level_intrinsics

        intr = xray.intrinsics
        final, stage, refined = init.camera, "initial", None
        if rr is not None:
            refined = Camera(intr, rr.camera_from_world)
            problem = overlap_problem(self.ct, refined, "refined pose")
            if rr.improved and problem is None:
                final, stage = refined, "refined"
            elif rr.improved:
                # The optimiser drifted to a pose that cannot have produced this X-ray: keep the (plausible) start.
                warnings.append(f"the refinement was rejected ({problem}); the final pose is the {init.method} pose.")
        carm_warning = carm_disagreement(final, getattr(xray, "carm", None), self.refiner().centre_ras)
        if carm_warning:
            warnings.append(carm_warning)
        for lm in init.landmarks:
            lm.reprojected_px = final.project(lm.ras[None])[0]
        t = time.perf_counter()
        drr = self.refiner().drr(intr, final.camera_from_world)
        timings = {"drr": time.perf_counter() - t}
        result = RegistrationResult(
            initial=init.camera, refined=refined, final=final, final_stage=stage, landmarks=init.landmarks,
            n_correspondences=init.n_correspondences, inliers=init.inliers, similarity_before=sims[0],
            similarity_after=sims[1], timings_s=timings, drr=drr,
            drr_intrinsics=level_intrinsics(intr, self.options.refine.levels[-1]), warnings=warnings,
            initial_method=init.method, pnp_rmse_px=init.pnp_rmse_px, initial_reseated=init.reseated, options=self.options,
            pnp_hypotheses=init.hypotheses, depth_search=depth)
        sig = {**signals(result, self.ct, xray, self.refiner()), "rescued": bool(rescued)}
        result.verdict = judge(sig)
        o = self.options.refine
        measure = o.relative_signals_always  # calibration: record them whatever the verdict (it cannot change)
        if (result.verdict.accepted or measure) and stage == "refined" and o.local_check:
            # Cheap (one batch of 9 DRRs): is the accepted pose a local optimum about the bone in view?
            t = time.perf_counter()
            gain, ax, ay = neighbour_gain(self.refiner(), xray, final, self.view_pool())
            result.timings_s["local_check"] = time.perf_counter() - t
            sig = {**sig, "neighbour_gain": gain, "neighbour_ax_deg": ax, "neighbour_ay_deg": ay}
            result.verdict = judge(sig)
        if ((result.verdict.accepted or measure) and stage == "refined" and o.competitor_check
                and (rescued or init.reseated or init.method == "regression" or o.competitor_check_below >= 1.0
                     or not sig.get("footprint_similarity") >= o.competitor_check_below)):
            # Only an accepted result can be changed by this signal, and it costs a batched refinement; clear
            # matches (footprint similarity ≥ competitor_check_below) skip it.
            t = time.perf_counter()
            margin, dist = competitor_margin(self.refiner(), xray, final, signal_points(self.ct), o.competitor_shift_mm,
                                             max_levels=o.competitor_levels or None)
            result.timings_s["competitors"] = time.perf_counter() - t
            result.verdict = judge({**sig, "competitor_margin": margin, "competitor_distance_mm": dist})
        return result


def register(ct: CTVolume, xray, fiducials=None, options: RegistrationOptions | None = None,
             progress: ProgressFn | None = None, cancel: CancelFn | None = None,
             initial_camera_from_world=None) -> RegistrationResult:
    """One-shot ``Registrar(ct, options).register(xray, fiducials, initial_camera_from_world, progress, cancel)``."""
    return Registrar(ct, options).register(xray, fiducials, initial_camera_from_world, progress, cancel)


def detect(ct: CTVolume, xray, points, options: RegistrationOptions | None = None, heatmaps: bool = False,
           progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> DetectionResult:
    """One-shot ``Registrar(ct, options).detect(xray, points, heatmaps, progress, cancel)``."""
    return Registrar(ct, options).detect(xray, points, heatmaps, progress, cancel)
