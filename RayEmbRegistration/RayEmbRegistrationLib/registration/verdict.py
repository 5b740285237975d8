"""Is a registration result to be trusted? The verdict ``accepted`` / ``uncertain`` / ``rejected`` with reasons.

Owns: the signals a registration offers about its own correctness, and the calibrated rule that turns them into
a verdict.

Signals (``signals``), all available without the truth: the footprint similarity (NCC of the X-ray and the final
DRR inside the CT's projection) and the depth tolerance, which the rule reads with the PnP inliers, the warnings
and whether the refinement ran; and, recorded for calibration but not used by the rule (they did not separate
successes from failures: ``benchmarks/calibrate_verdict.py``), the plain similarity and its gain, the inlier share
and reprojection error, the PnP-to-refined pose change, the detections' confidence and how many detections the
final pose explains (``final_agreement``).
Two more signals cost DRRs, so the pipeline measures them only for a result that would otherwise be accepted: is
the pose a local optimum about the bone in view (``neighbour_gain``, 9 DRRs), and does a different pose near it
explain the X-ray about as well (``competitor_margin``, a batched refinement).
The thresholds of ``VerdictRule`` come from ``benchmarks/calibrate_verdict.py`` (simulated X-rays of several CTs,
deliberate mismatches included); the calibration table is in docs/verdict.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["signals", "signal_points", "footprint_similarity", "match_similarity", "depth_tolerance_mm",
           "competitor_margin", "shifted_poses", "neighbour_gain", "NEIGHBOUR_ANGLES_DEG", "Verdict", "VerdictRule",
           "judge", "ACCEPTED", "UNCERTAIN", "REJECTED", "SMALL_XRAY_PX"]

ACCEPTED, UNCERTAIN, REJECTED = "accepted", "uncertain", "rejected"
#: X-rays smaller than this (longer side, px) score a lower footprint similarity at the true pose than the 256² X-rays
#: the rule was calibrated on (the refinement's DRR at the true pose of 6 simulated X-rays each: the sample CT at
#: RayEmb-benchmark poses 0.91–0.95 at 128², 0.96–0.98 at 256², 0.98–0.99 at 512² — not the quantum noise: 4× the
#: photons at 128² give 0.92–0.95), so the verdict says so when it does not accept one
#: (``benchmarks/footprint_size.py``)
SMALL_XRAY_PX = 192
_AGREEMENT_POINTS, _AGREEMENT_SEED = 200, 4242


def footprint_similarity(xray_pixels: np.ndarray, drr: np.ndarray, min_share: float = 0.5,
                         keep: np.ndarray | None = None) -> float:
    """Multiscale NCC (``0.5 · NCC + 0.5 · mean local NCC``) of the X-ray and the DRR inside the CT's footprint.

    The plain similarity averages in every tile of the image, also those where the CT casts no shadow (a small
    crop of the spine, a head that fills half the detector): there the DRR is flat and the tile counts as
    "no correlation", so a correct pose of a small CT scores lower than a wrong pose of a large one. Here only
    pixels where the DRR shows the CT (above 5 % of its maximum) count, and only tiles that are at least
    ``min_share`` inside it. ``drr`` (h, w) is on a coarser grid of the same detector as ``xray_pixels``; ``keep``
    (the X-ray's keep-mask, ``xray_mask.informative_mask``, on the X-ray's grid) drops further pixels.
    """
    import torch

    from .refine import downsample_image
    from .similarity import ncc as _ncc

    d = np.asarray(drr, dtype=np.float64)
    h, w = d.shape
    x = downsample_image(xray_pixels, w, h).astype(np.float64)
    mask = d > 0.05 * max(float(d.max()), 1e-9)
    if keep is not None:
        from .xray_mask import level_mask

        mask &= level_mask(keep, w, h)
    if mask.sum() < 16:
        return math.nan

    def ncc(a, b):  # the project's one NCC (similarity.ncc) on the pixels inside the footprint
        return float(_ncc(torch.as_tensor(a), torch.as_tensor(b))[0])

    p = max(5, int(round(w / 10)))
    local = []
    for i in range(0, h - p + 1, p):
        for j in range(0, w - p + 1, p):
            m = mask[i:i + p, j:j + p]
            if m.mean() >= min_share:
                local.append(ncc(x[i:i + p, j:j + p][m], d[i:i + p, j:j + p][m]))
    g = ncc(x[mask], d[mask])
    return 0.5 * g + 0.5 * (float(np.mean(local)) if local else g)


#: relative depth steps (of the CT centre's distance from the source) of the depth profile, and the similarity drop
#: that counts as "the image changed"
DEPTH_STEPS = (-0.06, -0.04, -0.02, -0.01, 0.0, 0.01, 0.02, 0.04, 0.06)
DEPTH_EPSILON = 0.005


def depth_tolerance_mm(refiner, xray, camera) -> float:
    """How far (mm) the CT can slide along the viewing ray of its centre before the image similarity drops by
    ``DEPTH_EPSILON``: the registration's depth uncertainty as the image sees it.

    An X-ray constrains depth (magnification) only weakly — least for a small CT or a far source — and a wrong
    depth gives an almost identical image. The similarity on the finest refinement grid is sampled at the depth
    steps ``DEPTH_STEPS`` and a parabola is fitted; ``inf`` when it does not curve downwards (flat, or the pose
    is not at the optimum).
    """
    T0 = np.asarray(camera.camera_from_world, dtype=np.float64)
    c_cam = T0[:3, :3] @ refiner.centre_ras + T0[:3, 3]
    if not c_cam[2] > 0:
        return math.inf
    steps = np.asarray(DEPTH_STEPS)
    poses = np.repeat(T0[None], len(steps), 0)
    poses[:, :3, 3] += steps[:, None] * c_cam[None]
    sims = refiner.similarity(xray.pixels, xray.intrinsics, poses)
    dz = steps * c_cam[2]
    a, b, _ = np.polyfit(dz, sims, 2)
    if not a < 0:
        return math.inf
    offset = -b / (2 * a)  # where the fitted optimum lies (mm from the final depth)
    return float(abs(offset) + math.sqrt(DEPTH_EPSILON / -a))


#: a competitor counts as a *different* pose when its bone points lie this far (mean, mm) from the final pose's
COMPETITOR_DISTINCT_MM = 10.0


def shifted_poses(camera_from_world, offsets_mm) -> list[np.ndarray]:
    """``camera_from_world`` (4, 4) with the world moved by each ``(dx, dy)`` of ``offsets_mm`` along the camera's x
    and y axes (mm in the image plane): the starts of the competitor search."""
    out = []
    for dx, dy in offsets_mm:
        S = np.array(camera_from_world, dtype=np.float64)
        S[0, 3] += dx
        S[1, 3] += dy
        out.append(S)
    return out


def competitor_margin(refiner, xray, camera, points_ras, shift_mm: float = 60.0,
                      distinct_mm: float = COMPETITOR_DISTINCT_MM, max_levels: int | None = None) -> tuple[float, float]:
    """How much better the final pose explains the X-ray than the best *different* pose near it.

    Repeating anatomy (one lumbar vertebra looks like the next) and close-ups that show little bone give wrong
    poses whose DRR matches the X-ray as well as a right one would, so no similarity threshold separates them.
    A result is unambiguous only if no other pose explains the image about as well: the refinement is started
    again from the final pose moved by ±``shift_mm`` along the camera's x and y axes (4 starts) and from the final
    pose itself (so that every similarity is on the same finest grid), all in one batch (``Refiner.refine_batch``).

    Args:
        points_ras: (N, 3) bone points; a competitor is *different* when their mean camera-frame distance from the
            final pose exceeds ``distinct_mm``.
        max_levels: run only the first (coarsest) levels of the refinement schedule (``Refiner.refine_batch``);
            every similarity is then on that level's grid. None: every level.
    Returns:
        ``(margin, distance_mm)``: the final pose's similarity minus the best different competitor's (negative: a
        different pose explains the X-ray better) and that competitor's distance; ``(inf, nan)`` when every start
        came back to the final pose.
    """
    from ..geometry.camera import Camera

    T = np.asarray(camera.camera_from_world, dtype=np.float64)
    starts = [T] + shifted_poses(T, ((shift_mm, 0.0), (-shift_mm, 0.0), (0.0, shift_mm), (0.0, -shift_mm)))
    results = refiner.refine_batch(xray.pixels, xray.intrinsics, starts, max_levels=max_levels)
    ref = camera.to_camera(points_ras)
    best, dist = -math.inf, math.nan
    for r in results[1:]:
        d = float(np.linalg.norm(Camera(camera.intrinsics, r.camera_from_world).to_camera(points_ras) - ref,
                                 axis=1).mean())
        if d > distinct_mm and r.similarity_after > best:
            best, dist = float(r.similarity_after), d
    if not math.isfinite(best):
        return math.inf, math.nan
    return float(results[0].similarity_after) - best, dist


#: rotations (degrees) about the camera's x and y axes, through the bone in view, of the local-optimum check
NEIGHBOUR_ANGLES_DEG = (-4.0, -2.0, 2.0, 4.0)


def neighbour_gain(refiner, xray, camera, points_ras) -> tuple[float, float, float]:
    """Is the final pose a local optimum of the image similarity? The final pose rotated by each of
    ``NEIGHBOUR_ANGLES_DEG`` about the camera's x axis, then its y axis, through the centroid of the ``points_ras``
    (N, 3) it puts in view (``rescue.view_centre``), all scored with the final pose on the refinement's finest grid
    (one batch of 9 DRRs, ~0.3 s at 96²).

    On a close-up the refinement rotates about the bone centroid of the whole CT, often far outside the image, so a
    rotation of the anatomy in view is a long, ill-conditioned valley for it and it can stop a few degrees short of
    the optimum (a pelvis close-up can end 10.7 mm off, 4.3° about the image's x axis, where rotating it by −4°
    about the bone in view raises the similarity by 0.008; ``benchmarks/neighbour_gain.py``).

    Returns:
        ``(gain, ax_deg, ay_deg)``: the most similar neighbour's similarity minus the final pose's (negative: every
        neighbour is worse, the pose is a local optimum) and that neighbour's rotation about x and y.
    """
    from .rescue import rotated_about, view_centre

    T = np.asarray(camera.camera_from_world, dtype=np.float64)
    c = view_centre(camera, points_ras)
    angles = [(a, 0.0) for a in NEIGHBOUR_ANGLES_DEG] + [(0.0, a) for a in NEIGHBOUR_ANGLES_DEG]
    poses = np.stack([T] + [rotated_about(T, c, ax, ay) for ax, ay in angles])
    sims = refiner.similarity(xray.pixels, xray.intrinsics, poses)
    k = int(np.argmax(sims[1:]))
    return float(sims[1 + k] - sims[0]), float(angles[k][0]), float(angles[k][1])


def final_agreement(result, xray=None) -> int:
    """How many of the detections given to PnP the *final* pose reprojects within the RANSAC threshold (the PnP
    inliers counted again at the refined pose; 0 for a result without detections). A refinement that slid to a
    look-alike pose (a neighbouring vertebra) keeps a high image similarity but leaves the detections behind."""
    opts = getattr(result, "options", None)
    if opts is None:
        return 0
    thr = opts.pnp.threshold_px(getattr(xray, "intrinsics", None) or result.final.intrinsics)
    return sum(lm.error_px <= thr for lm in result.landmarks)  # NaN (not detected) never counts


def signal_points(ct) -> np.ndarray:
    """(200, 3) RAS bone points of ``ct`` (fixed seed) over which the signals measure how far poses lie apart."""
    return ct.sample_bone_points(_AGREEMENT_POINTS, np.random.default_rng(_AGREEMENT_SEED))


def signals(result, ct, xray=None, refiner=None) -> dict[str, Any]:
    """The verdict's inputs for a ``results.RegistrationResult`` of ``ct`` and its ``xray`` (plain floats / ints /
    bools); ``refiner`` (the registration's ``refine.Refiner``) adds the depth tolerance and the X-ray's keep-mask
    (``xray_mask``: the footprint similarity reads only the pixels it keeps; ``xray_dropped_share``). The competitor margin
    (``competitor_margin``, the costliest signal) is added by the pipeline only where it can change the verdict."""
    pts = signal_points(ct)
    moved = np.linalg.norm(result.initial.to_camera(pts) - result.final.to_camera(pts), axis=1)
    inl = [lm.confidence for lm in result.landmarks if lm.inlier]
    before, after = result.similarity_before, result.similarity_after
    ds = result.depth_search
    keep = refiner.keep_mask(xray.pixels) if refiner is not None and xray is not None else None  # xray_mask.py
    return {
        "initial_method": result.initial_method,
        "reseated": bool(getattr(result, "initial_reseated", False)),
        "refined": result.final_stage == "refined",
        "similarity": math.nan if after is None else float(after),
        "footprint_similarity": (footprint_similarity(xray.pixels, result.drr, keep=keep)
                                 if xray is not None and result.drr is not None else math.nan),
        "similarity_gain": math.nan if after is None or before is None else float(after - before),
        "inliers": int(result.inliers),
        "inlier_share": float(result.inliers) / max(1, int(result.n_correspondences)),
        "pnp_rmse_px": math.nan if result.pnp_rmse_px is None else float(result.pnp_rmse_px),
        "pnp_to_final_mm": float(moved.mean()),
        "inlier_confidence": float(np.median(inl)) if inl else math.nan,
        "final_agreement": final_agreement(result, xray),
        "depth_corrected": bool(ds is not None and ds.corrected),
        "depth_tolerance_mm": (depth_tolerance_mm(refiner, xray, result.final)
                               if refiner is not None and xray is not None else math.nan),
        "warnings": len(result.warnings),
        "xray_dropped_share": 0.0 if keep is None else float(1.0 - keep.mean()),
        "xray_px": (max(xray.intrinsics.width, xray.intrinsics.height)
                    if getattr(xray, "intrinsics", None) is not None else 0),
    }


@dataclass(frozen=True)
class Verdict:
    """``status`` (``accepted`` | ``uncertain`` | ``rejected``), the ``reasons`` for it (sentences a user can act
    on; empty for a clean accept) and the ``signals`` it was read from."""

    status: str
    reasons: tuple[str, ...] = ()
    signals: dict = field(default_factory=dict, repr=False)

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED

    def line(self) -> str:
        """``"accepted"`` or ``"uncertain: <reasons>"`` (one line)."""
        return self.status + (": " + "; ".join(self.reasons) if self.reasons else "")

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reasons": list(self.reasons), "signals": dict(self.signals)}


@dataclass(frozen=True)
class VerdictRule:
    """Thresholds of the verdict, chosen on ``benchmarks/calibrate_verdict.py --seed 0`` and ``--seed 1`` (134 cases)
    and checked, unchanged, on ``--seed 2`` (docs/verdict.md).

    Attributes:
        accept_similarity: the footprint similarity a result needs to be accepted (every simulated success of the
            calibration was ≥ 0.93; the failures that got this high were wrong-SDD cases, mirrored X-rays of the
            nearly symmetric spine crop and a near miss — the latter two with a large depth tolerance).
        reject_similarity: below this footprint similarity the result is rejected (the DRR does not show what the
            X-ray shows). Set low, so that real X-rays (their contrast differs from DRRs) land in "uncertain"
            rather than "rejected" when in doubt.
        max_depth_tolerance_mm: an accepted result has its depth fixed by the image to within this (mm).
        min_inliers: a RayEmb initial pose needs at least this many PnP inliers to be accepted (a re-seated one is
            judged by ``min_rescued_agreement`` instead).
        min_competitor_margin: an accepted result explains the X-ray better than any different pose near it by at
            least this much similarity (``competitor_margin``; where it was measured). Chosen on
            ``benchmarks/competitor_margin.py`` (clinical close-ups of the lumbar spine and the pelvis): every
            wrong pose that the other signals accepted had a different pose that explained its X-ray better
            (margin < 0); successes had margins of +0.016 and more.
        min_rescued_agreement: a pose found by the rescue search (``rescue.py``: wide rotations, not the detections)
            or from the pose-regression network's start (``--initial regression|both``: no consensus of detections
            stands behind it; alone it has no detections, so it is never accepted) is accepted only if at least this
            many of the detections given to PnP agree with it (``final_agreement``). The regressed starts that won
            ``--initial both`` on 80 clinical X-rays (the pelvis prepared from ``gen96`` in three appearance families,
            lung1; ``rayemb evaluate --methods both``): right poses 20–468 agreeing detections but one (2, physics
            family), a wrong one accepted by every other signal (14 mm off in depth on lung1's 5-mm slices) 2.
            On 40 clinical X-rays of two chest CTs no network saw (prepared networks, ``benchmarks/rescue_search.py``),
            the right rescued poses explain 38–48 detections, a wrong one (20 mm off, a local optimum near the truth,
            footprint similarity 0.98 and a clear competitor margin) 9. The same number as ``min_inliers``; four
            cases, to be re-checked on more CTs.
        max_neighbour_gain: an accepted result is a local optimum of the similarity: no pose rotated by 2–4° about
            the bone in view is more similar by more than this (``neighbour_gain``). On ``rayemb evaluate --poses
            clinical``'s X-rays (a pelvis prepared from a network that never saw it 20, lung1 prepared 20, lumbar
            spine bundled 10; ``benchmarks/neighbour_gain.py``) the largest gain of any success is −0.0007, of
            the one accepted failure +0.0079 (10.7 mm off); 0.003 lies between. One failure: to be re-checked on
            more CTs.
    """

    accept_similarity: float = 0.93
    reject_similarity: float = 0.80
    max_depth_tolerance_mm: float = 25.0
    min_inliers: int = 20
    min_competitor_margin: float = 0.005
    min_rescued_agreement: int = 20
    max_neighbour_gain: float = 0.003


DEFAULT_RULE = VerdictRule()


def match_similarity(sig: dict[str, Any]) -> float:
    """The similarity by which ``judge`` tells whether the DRR at the final pose shows what the X-ray shows: the
    footprint similarity, else (not measured) the plain one; NaN if neither was."""
    sim = sig.get("footprint_similarity", math.nan)
    return sim if math.isfinite(sim) else sig.get("similarity", math.nan)


def judge(sig: dict[str, Any], rule: VerdictRule = DEFAULT_RULE) -> Verdict:
    """The verdict for ``signals(result, ct, xray, refiner)``.

    * rejected: the footprint similarity (``footprint_similarity``; the plain similarity where it is missing) is
      below ``reject_similarity``;
    * accepted: the pose was refined, its footprint similarity is at least ``accept_similarity``, its depth
      tolerance at most ``max_depth_tolerance_mm``, (for a RayEmb initial pose) PnP had at least ``min_inliers``
      inliers, no different pose near it explains the X-ray almost as well (``competitor_margin`` at least
      ``min_competitor_margin``, where it was measured), a rescued pose (``rescued``) or one from a re-seated PnP
      start (``reseated``) agrees with at least ``min_rescued_agreement`` detections, no pose rotated 2–4° about
      the bone in view is more similar by more than ``max_neighbour_gain`` (``neighbour_gain``, where it was
      measured), and nothing else warned;
    * uncertain: everything in between — the pose may be right, and the reasons say what to check.

    The verdict checks the result against the geometry it was given: a wrong source-to-detector distance is
    compensated by a wrong depth with an almost identical image, which no image signal can see (only a recorded
    source-to-isocentre distance can: ``plausibility.carm_disagreement``).
    """
    sim = match_similarity(sig)
    reasons: list[str] = []
    if not sig.get("refined") and not math.isfinite(sim):
        reasons.append("the pose was not refined, so its image similarity was not measured")
    elif not math.isfinite(sim) or sim < rule.reject_similarity:
        return Verdict(REJECTED, (f"the DRR at the final pose does not match the X-ray (similarity {sim:.3f} < "
                                  f"{rule.reject_similarity:.2f}): wrong CT, anatomy, side or geometry, or a failed "
                                  "registration",), dict(sig))
    elif sim < rule.accept_similarity:
        small = 0 < sig.get("xray_px", 0) < SMALL_XRAY_PX
        reasons.append(f"the image similarity {sim:.3f} is below {rule.accept_similarity:.2f}, where failures begin"
                       + (f" (on an X-ray under {SMALL_XRAY_PX} px it can be lower even at the true pose — down to 0.91 "
                          "measured at 128²: give the X-ray at its full resolution if you have it)" if small else ""))
    elif not sig.get("refined"):
        reasons.append("the refinement did not improve the initial pose")
    tol = sig.get("depth_tolerance_mm", math.nan)
    if not math.isnan(tol) and tol > rule.max_depth_tolerance_mm:  # inf: the similarity is flat in depth
        reasons.append(f"the image fixes the depth only to ±{tol:.0f} mm (a small CT or a far source): the pose may be "
                       "right in the image and wrong in depth")
    # A re-seated start's inliers are a recount at a guessed depth, not a consensus: its detections are judged at the
    # final pose instead (``final_agreement`` below).
    if sig.get("initial_method") == "rayemb" and not sig.get("reseated") and sig.get("inliers", 0) < rule.min_inliers:
        reasons.append(f"only {sig.get('inliers', 0)} PnP inliers (< {rule.min_inliers})")
    margin = sig.get("competitor_margin", math.nan)
    if not math.isnan(margin) and margin < rule.min_competitor_margin:
        reasons.append(f"a different pose {sig.get('competitor_distance_mm', math.nan):.0f} mm away explains the X-ray "
                       + ("better" if margin < 0 else "almost as well") + f" (similarity margin {margin:+.3f}): "
                       "repeating anatomy (a neighbouring vertebra?) or too little bone in view — check the level")
    gain = sig.get("neighbour_gain", math.nan)
    if not math.isnan(gain) and gain > rule.max_neighbour_gain:
        ax, ay = sig.get("neighbour_ax_deg", 0.0), sig.get("neighbour_ay_deg", 0.0)
        turn = f"{ax:+.0f}° about the image's x axis" if ax else f"{ay:+.0f}° about the image's y axis"
        reasons.append(f"the pose turned by {turn} (through the bone in view) explains the X-ray better (similarity "
                       f"{gain:+.3f}): the refinement stopped short of the optimum and the pose may be several mm off "
                       "— check the overlay, or register again from a corrected start")
    wide = ("the rescue search" if sig.get("rescued") else
            "re-seating a PnP orientation in depth (every PnP pose was implausible)" if sig.get("reseated") else
            "the pose-regression network" if sig.get("initial_method") == "regression" else None)
    if wide and sig.get("final_agreement", 0) < rule.min_rescued_agreement:
        reasons.append(f"the pose was found by {wide} and only {sig.get('final_agreement', 0)} of the "
                       f"detections agree with it (< {rule.min_rescued_agreement}): it may be a near miss — check the overlay")
    if sig.get("warnings", 0):
        reasons.append("the registration reported warnings (see them)")
    return Verdict(UNCERTAIN if reasons else ACCEPTED, tuple(reasons), dict(sig))
