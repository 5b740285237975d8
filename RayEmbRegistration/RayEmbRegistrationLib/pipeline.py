"""The registration data path: detection → PnP (RANSAC) → intensity refinement, with progress and cancel.

Owns: ``RegistrationOptions``, ``register`` / ``detect`` and their results, the input checks that make a
registration fail loudly instead of returning a wrong pose (no geometry, no bone in the CT, < 6 usable
correspondences, X-ray and CT that do not overlap), ``simulate_xray`` (a realistic X-ray from a CT at a known
pose, used by the demo, the benchmark and the tests) and the pose-error metrics of the benchmark.

Frames: world = the CT's RAS mm; cameras are ``camera.Camera`` (OpenCV); pixels (u, v) of the X-ray as given.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .camera import Camera, Intrinsics, carm_camera_from_world
from .volume import BONE_HU, CTVolume

__all__ = [
    "RegistrationError",
    "RegistrationCancelled",
    "ModelUnavailable",
    "RegistrationOptions",
    "Landmark",
    "DetectionResult",
    "RegistrationResult",
    "register",
    "detect",
    "resolve_device",
    "refinement_schedule",
    "check_overlap",
    "simulate_xray",
    "pose_errors",
]

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class RegistrationError(ValueError):
    """The registration cannot be done or would not be trustworthy (message says why and what to do)."""


class ModelUnavailable(RegistrationError):
    """No trained ray-embedding network could be loaded (landmark detection is not available)."""


class RegistrationCancelled(Exception):
    """The user cancelled (the ``cancel`` callback returned True). Nothing was written."""


@dataclass
class RegistrationOptions:
    """Settings of ``register`` / ``detect`` (defaults = the CLI's defaults).

    Attributes:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``.
        model_path: network weights (``.safetensors``); None = the bundled model.
        n_templates: template views per CT for the detector.
        auto_bone_points: also detect automatically sampled bone points (HU ≥ 350) of the CT.
        n_bone_candidates: how many bone points are detected (paper: 10 000); None → 10 000 on CUDA, 2 000 on CPU.
        n_bone_keep: how many of them, the most confident, go to PnP (paper: 600).
        min_confidence: detections below this confidence are not used for PnP.
        fast_detection: ``LandmarkDetector.detect(fast=True)`` (coarse map, full resolution around 4 peaks).
        ransac_threshold_px: RANSAC inlier threshold in pixels of the X-ray as given (its full resolution).
        ransac_iterations, ransac_confidence: RANSAC settings (10 000, 0.9999).
        pnp_hypotheses: how many plausible PnP poses (sequential RANSAC, disjoint consensus sets) compete; with
            more than one and ``refine``, each gets the coarsest refinement level and the most similar one wins.
            Default 1: on 10 simulated pelvis cases, 3 hypotheses changed no outcome and cost ~6 s.
        refine: run the intensity refinement after PnP.
        depth_search: before refining a PnP pose, slide the CT along the viewing ray of its centre and start
            from the most similar depth (``Refiner.search_depth``; ~0.3 s): PnP from noisy detections is weakest
            in depth, and the refinement alone captures only small depth errors. Not applied to a caller's start
            pose (``initial_camera_from_world``).
        refine_levels: coarse-to-fine grid sizes (longer side, px).
        refine_iterations: Adam iterations per level.
        refine_lr_mm: learning rate per level (mm).
        refine_voxel_mm: CT voxel size for the refinement's DRRs.
        bone_multiplier: bone attenuation multiplier of the refinement's DRRs.
        initial_camera_from_world: (4, 4) start pose given by the caller; detection and PnP are then skipped
            (intensity-only registration, the benchmark's baseline, or a manual initialisation).
        seed: seed of every random choice (bone points, RANSAC).
    """

    device: str = "auto"
    model_path: str | None = None
    n_templates: int = 4
    auto_bone_points: bool = True
    n_bone_candidates: int | None = None
    n_bone_keep: int = 600
    min_confidence: float = 0.0
    fast_detection: bool = False
    ransac_threshold_px: float = 10.0
    ransac_iterations: int = 10_000
    ransac_confidence: float = 0.9999
    pnp_hypotheses: int = 1
    refine: bool = True
    depth_search: bool = True
    refine_levels: tuple[int, ...] = (32, 64, 96)
    refine_iterations: tuple[int, ...] = (60, 40, 20)
    refine_lr_mm: tuple[float, ...] = (8.0, 3.0, 1.0)
    refine_voxel_mm: float | None = 3.0
    bone_multiplier: float = 2.5
    initial_camera_from_world: Any = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k, v in d.items():
            if isinstance(v, np.ndarray):
                d[k] = v.tolist()
            elif isinstance(v, tuple):
                d[k] = list(v)
        return d


@dataclass
class Landmark:
    """One 3D point of the registration and its 2D detection.

    ``detected_px`` / ``reprojected_px``: (2,) pixels (u, v) of the X-ray (NaN if not detected / behind the
    source); ``reprojected_px`` is at the final pose. ``kind``: ``"fiducial"`` or ``"bone"``.
    """

    label: str
    ras: np.ndarray
    detected_px: np.ndarray
    reprojected_px: np.ndarray
    confidence: float
    kind: str = "fiducial"
    inlier: bool = False

    @property
    def error_px(self) -> float:
        d = np.asarray(self.detected_px) - np.asarray(self.reprojected_px)
        return float(np.hypot(*d)) if np.isfinite(d).all() else math.nan

    def to_dict(self) -> dict[str, Any]:
        f = lambda a: [None if not np.isfinite(x) else float(x) for x in np.asarray(a, dtype=float)]  # noqa: E731
        return {
            "label": self.label, "kind": self.kind, "ras": f(self.ras), "detected_px": f(self.detected_px),
            "reprojected_px": f(self.reprojected_px), "error_px": None if math.isnan(self.error_px) else self.error_px,
            "confidence": float(self.confidence), "inlier": bool(self.inlier),
        }


@dataclass
class DetectionResult:
    """``detect``: per point label, RAS (N, 3), detected pixels (N, 2), confidence (N,), heatmaps (N, h, w)|None."""

    labels: list[str]
    ras: np.ndarray
    uv: np.ndarray
    confidence: np.ndarray
    heatmaps: np.ndarray | None = None
    heatmap_intrinsics: Intrinsics | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": [
                {"label": l, "ras": r.tolist(), "detected_px": u.tolist(), "confidence": float(c)}
                for l, r, u, c in zip(self.labels, self.ras, self.uv, self.confidence)
            ],
            "seconds": self.seconds,
        }


@dataclass
class RegistrationResult:
    """``register``'s result.

    Attributes:
        initial: the PnP camera (or the caller's start pose for intensity-only registration).
        refined: the camera after intensity refinement, or None if refinement was off.
        final: the camera to use; ``final_stage`` says which (``"initial"`` or ``"refined"``).
        landmarks: fiducials first, then the bone points used for PnP.
        n_correspondences: correspondences given to RANSAC; ``inliers``: how many it kept.
        similarity_before / similarity_after: multiscale NCC (refinement's finest level) at initial / final.
        timings_s: seconds per stage (``detector_setup``, ``detection``, ``pnp``, ``refine``, ``drr``, ``total``).
        drr: (h, w) float32 DRR at the final pose on the refinement's finest grid; ``drr_intrinsics`` its grid.
        warnings: human-readable remarks (e.g. disagreement with the DICOM C-arm angles).
        initial_method: ``"rayemb"`` (detection + PnP) or ``"given"`` (``initial_camera_from_world``).
        pnp_hypotheses: the competing PnP poses (``inliers``, ``coarse_similarity``, ``chosen``), if more than one.
        depth_search: the refinement's start-depth search (``factor`` = start depth / PnP depth, similarities at
            the PnP and the chosen depth), if it ran.
    """

    initial: Camera
    refined: Camera | None
    final: Camera
    final_stage: str
    landmarks: list[Landmark]
    n_correspondences: int
    inliers: int
    similarity_before: float | None
    similarity_after: float | None
    timings_s: dict[str, float]
    drr: np.ndarray | None = field(default=None, repr=False)
    drr_intrinsics: Intrinsics | None = None
    warnings: list[str] = field(default_factory=list)
    initial_method: str = "rayemb"
    pnp_rmse_px: float | None = None
    options: RegistrationOptions | None = field(default=None, repr=False)
    pnp_hypotheses: list[dict] = field(default_factory=list)
    depth_search: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------


def refinement_schedule(finest_px: int = 96, coarse_iterations: int = 60) -> dict[str, tuple]:
    """The coarse-to-fine refinement schedule for a finest grid of ``finest_px`` (longer side).

    Levels 32 px, ``min(64, finest)`` px and ``finest`` px (duplicates dropped); Adam iterations
    ``n, 2n/3, n/3`` and learning rates ``refinement_lrs`` (8, 3, 1 mm). The 32-px level with a large step is
    what gives the refinement its capture range (starts ~15° and ~90 mm off: 75 % success instead of 25 % for
    the earlier (64, 96) schedule, ``benchmarks/bench_refine_capture.py``).
    Returns ``dict(refine_levels=…, refine_iterations=…, refine_lr_mm=…)`` for ``RegistrationOptions``.
    """
    finest = max(16, int(finest_px))
    n = max(1, int(coarse_iterations))
    levels: list[int] = []
    for s in (min(32, finest), min(64, finest), finest):
        if s not in levels:
            levels.append(s)
    its = (n, max(1, round(2 * n / 3)), max(1, round(n / 3)))[: len(levels)]
    return dict(refine_levels=tuple(levels), refine_iterations=tuple(its), refine_lr_mm=refinement_lrs(len(levels)))


def refinement_lrs(n_levels: int) -> tuple[float, ...]:
    """Adam step sizes (mm) for ``n_levels`` coarse-to-fine levels: 8 mm at the coarsest, 1 mm at the finest,
    3 mm in between (one level alone: 3 mm)."""
    n = int(n_levels)
    if n <= 1:
        return (3.0,) * max(n, 0)
    return (8.0,) + (3.0,) * (n - 2) + (1.0,)


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` if torch sees a GPU, else ``"cpu"``; ``"cuda"`` without a GPU → error."""
    import torch

    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise RegistrationError("device 'cuda' requested but PyTorch sees no CUDA GPU; use --device cpu or auto.")
    if d not in ("cpu",) and not d.startswith("cuda"):
        raise RegistrationError(f"unknown device {device!r}; use auto, cpu or cuda.")
    return d


def overlap_problem(ct: CTVolume, camera: Camera, what: str = "pose") -> str | None:
    """Why the CT is not in the X-ray's field of view at ``camera`` (``None`` if it is): the CT centre must lie
    in front of the source, nearer than the detector, and project inside the detector."""
    c = ct.center_ras
    depth = camera.depth(c[None])[0]
    uv = camera.project(c[None])[0]
    W, H = camera.intrinsics.size
    inside = np.isfinite(uv).all() and -0.5 <= uv[0] <= W - 0.5 and -0.5 <= uv[1] <= H - 0.5
    if depth <= 0 or not inside:
        return (
            f"the X-ray and the CT do not overlap at the {what}: the CT centre {np.round(c, 1).tolist()} RAS "
            f"{'is behind the X-ray source' if depth <= 0 else f'projects to pixel {np.round(uv, 1).tolist()}, outside the {W}×{H} image'}. "
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


def _check_inputs(ct: CTVolume, xray) -> None:
    if xray is None or getattr(xray, "intrinsics", None) is None:
        raise RegistrationError("the X-ray has no detector geometry; give --geometry JSON (source_to_detector_mm, pixel_spacing_mm).")
    if not np.any(ct.hu >= BONE_HU):
        raise RegistrationError(
            f"CT '{ct.name}' has no bone (no voxel ≥ {BONE_HU:g} HU, max {float(ct.hu.max()):.0f}); "
            "RayEmb registers bone. Is the CT in Hounsfield units?"
        )
    p = np.asarray(xray.pixels)
    if float(p.max() - p.min()) <= 0:
        raise RegistrationError(f"X-ray '{getattr(xray, 'name', '')}' is blank (all pixels equal).")


def _check_cancel(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise RegistrationCancelled("registration cancelled")


def _sub_progress(progress: ProgressFn | None, lo: float, hi: float) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda f, msg="": progress(lo + (hi - lo) * float(min(max(f, 0.0), 1.0)), msg)


# Caches so that repeated registrations of one CT (benchmark, Slicer re-runs) reuse templates and renderers.
_DETECTOR_CACHE: dict[str, Any] = {}
_REFINER_CACHE: dict[str, Any] = {}


def _get_detector(ct: CTVolume, options: RegistrationOptions, device: str, progress: ProgressFn | None):
    key = (id(ct), options.model_path, device, options.n_templates)
    hit = _DETECTOR_CACHE.get("entry")
    if hit is not None and hit[0] == key and hit[1] is ct:
        return hit[2]
    try:
        from .model import ModelFileError, load_model
    except ImportError as exc:  # pragma: no cover - the network module is part of the package
        raise ModelUnavailable(f"the ray-embedding network is not available in this installation ({exc}).") from exc
    try:
        model = load_model(options.model_path, device=device)
    except (ModelFileError, FileNotFoundError) as exc:
        raise ModelUnavailable(f"no trained ray-embedding network: {exc}") from exc
    from .detect import LandmarkDetector

    det = LandmarkDetector(model, ct, device=device, n_templates=options.n_templates, progress=progress)
    _DETECTOR_CACHE["entry"] = (key, ct, det)
    return det


def _get_refiner(ct: CTVolume, options: RegistrationOptions, device: str):
    from .refine import RefineOptions, Refiner

    ropt = RefineOptions(levels=tuple(options.refine_levels), iterations=tuple(options.refine_iterations),
                         lr_mm=tuple(options.refine_lr_mm), voxel_mm=options.refine_voxel_mm,
                         bone_multiplier=options.bone_multiplier)
    key = (id(ct), repr(ropt), device)
    hit = _REFINER_CACHE.get("entry")
    if hit is not None and hit[0] == key and hit[1] is ct:
        return hit[2]
    ref = Refiner(ct, ropt, device)
    _REFINER_CACHE["entry"] = (key, ct, ref)
    return ref


def _bone_candidates(ct: CTVolume, options: RegistrationOptions, device: str) -> np.ndarray:
    n = options.n_bone_candidates
    if n is None:
        n = 10_000 if device.startswith("cuda") else 2_000
    return ct.sample_bone_points(int(n), np.random.default_rng(options.seed))


# ------------------------------------------------------------------------------------------------------------
# detect
# ------------------------------------------------------------------------------------------------------------


def detect(ct: CTVolume, xray, points, options: RegistrationOptions | None = None, heatmaps: bool = False,
           progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> DetectionResult:
    """Detect the 2D projections of 3D points in the X-ray.

    Args:
        ct: the CT; xray: an ``xray.XRayImage``; points: ``fiducials.Fiducials`` or (N, 3) RAS (labelled P1…PN).
        heatmaps: also return the (N, h, w) score maps at network size.
    Raises:
        ModelUnavailable, RegistrationError, RegistrationCancelled.
    """
    options = options or RegistrationOptions()
    _check_inputs(ct, xray)
    device = resolve_device(options.device)
    if hasattr(points, "labels"):
        labels, ras = list(points.labels), np.asarray(points.ras, dtype=np.float64).reshape(-1, 3)
    else:
        ras = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        labels = [f"P{i + 1}" for i in range(len(ras))]
    if len(ras) == 0:
        raise RegistrationError("no points to detect; give a fiducial file with at least one point.")
    t0 = time.perf_counter()
    det = _get_detector(ct, options, device, _sub_progress(progress, 0.0, 0.5))
    _check_cancel(cancel)
    d = _run_detection(det, xray, ras, heatmaps, _sub_progress(progress, 0.5, 1.0), cancel, options.fast_detection)
    return DetectionResult(labels, ras, d.uv, d.confidence, d.heatmaps, d.net_intrinsics if heatmaps else None,
                           time.perf_counter() - t0)


def _run_detection(det, xray, ras, heatmaps, progress, cancel, fast: bool = False):
    from .detect import DetectionCancelled

    try:
        return det.detect(xray.pixels, xray.intrinsics, ras, heatmaps=heatmaps, progress=progress, cancel=cancel,
                          fast=fast)
    except DetectionCancelled as exc:
        raise RegistrationCancelled(str(exc)) from exc


# ------------------------------------------------------------------------------------------------------------
# register
# ------------------------------------------------------------------------------------------------------------


def register(ct: CTVolume, xray, fiducials=None, options: RegistrationOptions | None = None,
             progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> RegistrationResult:
    """Register the X-ray to the CT.

    1. Detection (skipped if ``options.initial_camera_from_world`` is given): the user's fiducials and
       ``n_bone_candidates`` random bone points; the ``n_bone_keep`` most confident bone points are kept.
    2. PnP: ``pose.solve_pnp`` (MAGSAC++ RANSAC + LM polish) on fiducials + kept bone points.
    3. Refinement (``options.refine``): ``refine.Refiner`` from the PnP pose; it never returns a pose worse
       by its similarity than its start.
    4. Checks: the CT must lie in the X-ray's field of view at the final pose; a refined pose that fails this
       check is rejected (warning) and the start pose is kept.

    Args:
        ct: ``CTVolume``; xray: ``xray.XRayImage`` (pixels (H, W), intrinsics); fiducials: ``Fiducials`` or None.
        progress: ``callable(fraction in [0, 1], message)``; cancel: ``callable() -> bool``.

    Raises:
        RegistrationError (bad input, < 6 correspondences, no overlap; ``ModelUnavailable`` if detection is
        needed and no network can be loaded), RegistrationCancelled.
    """
    from .pose import PoseError, solve_pnp_hypotheses
    from .refine import Cancelled

    options = options or RegistrationOptions()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    warnings: list[str] = []
    _check_inputs(ct, xray)
    device = resolve_device(options.device)
    intr: Intrinsics = xray.intrinsics
    landmarks: list[Landmark] = []
    fid_labels = list(fiducials.labels) if fiducials is not None else []
    fid_ras = np.asarray(fiducials.ras, dtype=np.float64).reshape(-1, 3) if fiducials is not None else np.zeros((0, 3))
    n_corr = inliers = 0
    pnp_rmse = None
    hyp_info: list[dict] = []
    depth_info: dict = {}
    given = options.initial_camera_from_world is not None

    def in_view(T) -> bool:  # a pose at which the CT can have produced this X-ray (see overlap_problem)
        return overlap_problem(ct, Camera(intr, T)) is None

    refine_share = 0.55 if options.refine else 0.0
    if given:
        initial = Camera(intr, np.asarray(options.initial_camera_from_world, dtype=np.float64))
        check_overlap(ct, initial, "given start pose")
        method = "given"
    else:
        method = "rayemb"
        if len(fid_ras) == 0 and not options.auto_bone_points:
            raise RegistrationError("nothing to detect: give fiducials or enable automatic bone points.")
        t = time.perf_counter()
        det = _get_detector(ct, options, device, _sub_progress(progress, 0.0, 0.15))
        timings["detector_setup"] = time.perf_counter() - t
        _check_cancel(cancel)
        bone = _bone_candidates(ct, options, device) if options.auto_bone_points else np.zeros((0, 3))
        pts = np.vstack([fid_ras, bone])
        t = time.perf_counter()
        d = _run_detection(det, xray, pts, False, _sub_progress(progress, 0.15, 0.4), cancel, options.fast_detection)
        timings["detection"] = time.perf_counter() - t
        nf = len(fid_ras)
        conf = np.asarray(d.confidence, dtype=np.float64)
        uv = np.asarray(d.uv, dtype=np.float64)
        usable = np.isfinite(uv).all(1) & (conf > options.min_confidence)
        keep_f = np.flatnonzero(usable[:nf])
        bone_idx = nf + np.flatnonzero(usable[nf:])
        bone_idx = bone_idx[np.argsort(-conf[bone_idx], kind="stable")[: options.n_bone_keep]]
        use = np.concatenate([keep_f, bone_idx]).astype(int)
        n_corr = len(use)
        _check_cancel(cancel)
        t = time.perf_counter()
        try:
            hyps = solve_pnp_hypotheses(pts[use], uv[use], intr, threshold_px=options.ransac_threshold_px,
                                        iterations=options.ransac_iterations, confidence=options.ransac_confidence,
                                        seed=options.seed, max_hypotheses=max(1, options.pnp_hypotheses),
                                        is_plausible=in_view)
        except PoseError as exc:
            raise RegistrationError(f"pose estimation failed: {exc}") from exc
        timings["pnp"] = time.perf_counter() - t
        pnp = hyps[0]
        if len(hyps) > 1 and options.refine:
            # The largest consensus is not always the right pose: give each hypothesis the coarsest
            # refinement level and keep the one whose DRR matches the X-ray best.
            t = time.perf_counter()
            refiner = _get_refiner(ct, options, device)
            _check_cancel(cancel)
            hyp_progress = None
            if progress:
                hyp_progress = lambda f, m: progress(0.4 + 0.05 * f, f"comparing PnP hypotheses: {m}")  # noqa: E731
            try:
                coarse, best = refiner.refine_from_starts(xray.pixels, intr, [h.camera_from_world for h in hyps],
                                                          hyp_progress, cancel, max_levels=1)
            except Cancelled as exc:
                raise RegistrationCancelled(str(exc)) from exc
            sims = [r.similarity_after for r in coarse]
            pnp = hyps[best]
            hyp_info = [{"inliers": h.n_inliers, "coarse_similarity": float(s), "chosen": k == best}
                        for k, (h, s) in enumerate(zip(hyps, sims))]
            timings["hypotheses"] = time.perf_counter() - t
        inliers = pnp.n_inliers
        pnp_rmse = pnp.rmse_inliers_px
        inlier_set = set(use[pnp.inliers].tolist())
        initial = Camera(intr, pnp.camera_from_world)
        check_overlap(ct, initial, "PnP pose")
        # Landmarks: all fiducials (detected or not) + the bone points given to PnP.
        for i in list(range(nf)) + bone_idx.tolist():
            landmarks.append(Landmark(
                fid_labels[i] if i < nf else f"bone-{i - nf + 1:05d}", pts[i], uv[i] if usable[i] else np.full(2, np.nan),
                np.full(2, np.nan), float(conf[i]), "fiducial" if i < nf else "bone", i in inlier_set))
        if progress:
            progress(0.45, f"PnP: {inliers}/{n_corr} inliers, {pnp_rmse:.2f} px RMS")
    _check_cancel(cancel)
    refined = None
    final = initial
    stage = "initial"
    sim_before = sim_after = None
    refiner = None
    if options.refine:
        t = time.perf_counter()
        refiner = _get_refiner(ct, options, device)
        sub = _sub_progress(progress, 1.0 - refine_share - 0.03, 0.97)
        rr = None
        try:
            if options.depth_search and method == "rayemb":
                # PnP is weakest in depth: also refine from the most similar depth along the viewing ray.
                try:
                    rr, ds, results, k = refiner.refine_with_depth_search(
                        xray.pixels, intr, initial.camera_from_world, sub, cancel, is_plausible=in_view)
                except ValueError as exc:  # the bone centre behind the source: nothing to slide along
                    warnings.append(f"depth search skipped: {exc}")
                else:
                    depth_info = {"factor": ds.factor, "similarity_pnp": ds.similarity_start,
                                  "similarity": ds.similarity, "grid_px": ds.size, "candidates": len(ds.factors),
                                  "refined_similarity": [float(r.similarity_after) for r in results],
                                  "chosen": ("PnP start", "depth-searched start")[k]}
            if rr is None:
                rr = refiner.refine(xray.pixels, intr, initial.camera_from_world, sub, cancel)
        except Cancelled as exc:
            raise RegistrationCancelled(str(exc)) from exc
        sim_before, sim_after, improved = rr.similarity_before, rr.similarity_after, rr.improved
        timings["refine"] = time.perf_counter() - t
        refined = Camera(intr, rr.camera_from_world)
        problem = overlap_problem(ct, refined, "refined pose")
        if improved and problem is None:
            final, stage = refined, "refined"
        elif improved:
            # The optimiser drifted to a pose that cannot have produced this X-ray: keep the (plausible) start.
            warnings.append(f"the refinement was rejected ({problem}); the final pose is the {method} pose.")
    # Sanity check against DICOM C-arm angles, if the X-ray has them (a warning, not an error: the table
    # and the patient may not be aligned with the C-arm's axes).
    carm = getattr(xray, "carm", None)
    if carm is not None:
        axis = carm_camera_from_world(carm.primary_deg, carm.secondary_deg, 1000.0)[2, :3]
        ang = math.degrees(math.acos(float(np.clip(axis @ final.principal_axis_ras, -1, 1))))
        if ang > 30.0:
            warnings.append(f"the registered viewing direction differs by {ang:.0f}° from the DICOM C-arm angles "
                            f"(primary {carm.primary_deg:g}°, secondary {carm.secondary_deg:g}°); check the result.")
    for lm in landmarks:
        lm.reprojected_px = final.project(lm.ras[None])[0]
    t = time.perf_counter()
    if refiner is None:
        refiner = _get_refiner(ct, options, device)
    from .refine import level_intrinsics

    drr_intr = level_intrinsics(intr, options.refine_levels[-1])
    drr = refiner.drr(intr, final.camera_from_world)
    timings["drr"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    if progress:
        progress(1.0, f"done ({stage})")
    return RegistrationResult(initial, refined, final, stage, landmarks, n_corr, inliers, sim_before, sim_after,
                              timings, drr, drr_intr, warnings, method, pnp_rmse, options, hyp_info,
                              depth_info)


# ------------------------------------------------------------------------------------------------------------
# Simulation and metrics (demo, benchmark, tests)
# ------------------------------------------------------------------------------------------------------------


def simulate_xray(ct: CTVolume, intrinsics: Intrinsics, camera_from_world, rng: np.random.Generator | int | None = 0,
                  renderer=None, photons: float = 3e4) -> np.ndarray:
    """A realistic X-ray (H, W) float32 in line-integral form from the CT at a known pose.

    A DRR with a random bone attenuation multiplier (U[1.5, 3.5]), then Poisson quantum noise (``photons`` per
    pixel before attenuation, line integrals scaled so the densest ray keeps ≥ ~1 % of the photons), Gaussian
    detector noise, a smooth intensity ramp (heel effect) and a random gamma on the line integrals.
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
    heel = 1.0 + 0.15 * rng.uniform(-1, 1) * (u / max(W - 1, 1) - 0.5) + 0.15 * rng.uniform(-1, 1) * (v / max(H - 1, 1) - 0.5)
    I = rng.poisson(photons * heel * np.exp(-L * scale)).astype(np.float64)
    I += rng.normal(0, 0.002 * photons, I.shape)
    I = np.clip(I, 1.0, None)
    out = np.log(photons) - np.log(I)
    out = np.clip(out, 0, None) ** float(rng.uniform(0.8, 1.25))
    return out.astype(np.float32)


def pose_errors(estimate, truth, points_ras, intrinsics: Intrinsics) -> dict[str, float]:
    """Errors of an estimated ``camera_from_world`` (4, 4) against the truth, over points (N, 3) RAS.

    Returns ``mtre_mm`` (mean 3D distance of the points in the camera frame), ``mpd_mm`` (mean projection
    distance at the detector, mm), ``rot_deg`` (geodesic rotation error) and ``trans_mm`` (camera-centre
    distance).
    """
    A, B = Camera(intrinsics, estimate), Camera(intrinsics, truth)
    mtre = float(np.linalg.norm(A.to_camera(points_ras) - B.to_camera(points_ras), axis=1).mean())
    d = A.project(points_ras) - B.project(points_ras)
    d[..., 0] *= intrinsics.pixel_spacing_mm[0]
    d[..., 1] *= intrinsics.pixel_spacing_mm[1]
    dist = np.linalg.norm(d, axis=1)
    mpd = float(np.nanmean(dist)) if np.isfinite(dist).any() else math.inf
    c = (np.trace(A.R.T @ B.R) - 1) / 2
    return {"mtre_mm": mtre, "mpd_mm": mpd, "rot_deg": math.degrees(math.acos(float(np.clip(c, -1, 1)))),
            "trans_mm": float(np.linalg.norm(A.source_ras - B.source_ras))}
