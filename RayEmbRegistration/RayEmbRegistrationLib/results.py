"""Typed results of detection and registration, and how they read to a person.

Owns: the typed results of detection and registration, and their summaries.

``Landmark``, ``DetectionResult``, ``PnPHypothesis``, ``DepthSearchSummary``, ``RegistrationResult`` and
their one-line / multi-line summaries (used by the CLI, ``overlay.png`` and the Slicer panel alike).

Frames: world = the CT's RAS mm; cameras are ``camera.Camera`` (OpenCV); pixels (u, v) of the X-ray as given.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .geometry.camera import Camera, Intrinsics

__all__ = ["DETECTED", "OUTSIDE_CT", "NOT_SEEN", "OUTSIDE_VIEW", "PoseCheck", "Landmark", "DetectionResult", "PnPHypothesis", "DepthSearchSummary", "RegistrationResult"]


def _floats(a) -> list:
    return [None if not np.isfinite(x) else float(x) for x in np.asarray(a, dtype=float)]


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
        return {
            "label": self.label, "kind": self.kind, "ras": _floats(self.ras), "detected_px": _floats(self.detected_px),
            "reprojected_px": _floats(self.reprojected_px),
            "error_px": None if math.isnan(self.error_px) else self.error_px,
            "confidence": float(self.confidence), "inlier": bool(self.inlier),
        }


#: per-point status of a detection: found at a pixel, outside the CT (no pixel), seen by no template view (no pixel),
#: outside the X-ray's field of view at the C-arm pose the other detections agree on (no pixel)
DETECTED, OUTSIDE_CT, NOT_SEEN, OUTSIDE_VIEW = "detected", "outside_ct", "not_seen", "outside_view"


@dataclass(frozen=True)
class PoseCheck:
    """``Registrar.detect``'s geometric check of its detections: the C-arm pose (PnP + RANSAC on the points and
    the CT's bone candidates) they agree on, or why there is none.

    ``verified``: a plausible pose with ``inliers`` ≥ ``min_inliers`` was found; then ``reprojected_px`` (N, 2) are
    the points' projections at it and ``consistent`` (N,) says whether each detection lies within
    ``threshold_px`` of its projection. ``message``: one line for the user either way.
    """

    verified: bool
    message: str
    inliers: int = 0
    threshold_px: float = 0.0
    reprojected_px: np.ndarray | None = None
    consistent: np.ndarray | None = None


@dataclass
class DetectionResult:
    """``Registrar.detect``: per point label, RAS (N, 3), detected pixels (N, 2; NaN where ``status`` is not
    ``"detected"``), confidence (N,; 0 there), ``status`` (N,) (``DETECTED`` | ``OUTSIDE_CT`` | ``NOT_SEEN`` |
    ``OUTSIDE_VIEW``), heatmaps (N, h, w) at network size (or None) on the grid ``heatmap_intrinsics``, wall time,
    ``pose_check`` (``PoseCheck`` or None when not run)."""

    labels: list[str]
    ras: np.ndarray
    uv: np.ndarray
    confidence: np.ndarray
    heatmaps: np.ndarray | None = None
    heatmap_intrinsics: Intrinsics | None = None
    seconds: float = 0.0
    status: list[str] | None = None
    pose_check: PoseCheck | None = None

    def __post_init__(self) -> None:
        if self.status is None:
            self.status = [DETECTED] * len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        pc = self.pose_check
        points = []
        for i, (l, r, u, c, st) in enumerate(zip(self.labels, self.ras, self.uv, self.confidence, self.status)):
            p = {"label": l, "ras": _floats(r), "status": st, "detected_px": _floats(u) if st == DETECTED else None,
                 "confidence": float(c)}
            if pc is not None and pc.verified:
                p["reprojected_px"] = _floats(pc.reprojected_px[i])
                p["consistent_with_pose"] = bool(pc.consistent[i]) if st == DETECTED else None
            points.append(p)
        out: dict[str, Any] = {"points": points, "seconds": self.seconds}
        if pc is not None:
            out["pose_check"] = {"verified": pc.verified, "message": pc.message, "inliers": pc.inliers,
                                 "threshold_px": pc.threshold_px}
        return out

    def rows(self) -> list[tuple]:
        """``(label, ras, detected_px, reprojected_px, confidence)`` per point (``mrml`` table rows); the
        reprojection is at the verified pose of the pose check (None without one)."""
        pc = self.pose_check
        rep = pc.reprojected_px if pc is not None and pc.verified else [None] * len(self.labels)
        return [(l, r, u, p, c) for l, r, u, p, c in zip(self.labels, self.ras, self.uv, rep, self.confidence)]


@dataclass(frozen=True)
class PnPHypothesis:
    """One competing PnP pose: its RANSAC inliers, its similarity after the coarsest refinement level, chosen?, and
    the detection pass it came from (``"all bone"``, or ``"in view of PnP pose k"``: ``initial_pose.RayEmbPnP``)."""

    inliers: int
    coarse_similarity: float
    chosen: bool
    detection: str = "all bone"


@dataclass(frozen=True)
class DepthSearchSummary:
    """The refinement's start-depth search (``refine.Refiner.refine_with_depth_search``).

    ``factor`` = searched start depth / PnP depth; similarities at the PnP and the searched depth on a
    ``grid_px`` grid over ``candidates`` depths; the refined similarity from each start; which start won;
    ``valley_factor``: the depth factor of the depth-valley start (``pose.depth_valley_poses``: the tilt refitted to
    the PnP inliers at that depth), None when there was none.
    """

    factor: float
    similarity_pnp: float
    similarity: float
    grid_px: int
    candidates: int
    refined_similarity: tuple[float, ...]
    chosen: str  # "PnP start" | "depth-searched start" | "depth-valley start"
    valley_factor: float | None = None

    @property
    def corrected(self) -> bool:
        return self.chosen != "PnP start"

    @property
    def chosen_factor(self) -> float:
        """The chosen start's depth / the PnP depth."""
        if self.chosen == "depth-valley start" and self.valley_factor is not None:
            return float(self.valley_factor)
        return float(self.factor) if self.chosen == "depth-searched start" else 1.0

    def describe(self) -> str:
        """"depth corrected x0.80 (tilt refitted)" etc."""
        tilt = " (tilt refitted)" if self.chosen == "depth-valley start" else ""
        return f"depth corrected x{self.chosen_factor:.2f}{tilt}"


@dataclass
class RegistrationResult:
    """``Registrar.register``'s result.

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
        initial_method: ``"rayemb"`` (detection + PnP), ``"regression"`` (the CT's pose-regression network; with
            ``--initial both``: its pose won the competition with the PnP poses) or ``"given"`` (a caller's start).
        pnp_rmse_px: RMS reprojection error of the PnP inliers.
        initial_reseated: every PnP pose was implausible and the start is one of them slid to the most similar depth
            (``initial_pose.RayEmbPnP``, ``options.PnPOptions.reseat_implausible``).
        pnp_hypotheses: the competing PnP poses, if more than one.
        depth_search: the refinement's start-depth search, if it ran.
        rescue: ``rescue.RescueSummary`` of the wider search run for a result the verdict did not accept, if it ran.
        verdict: ``verdict.Verdict`` — whether to trust the result (accepted / uncertain / rejected) and why.
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
    initial_reseated: bool = False
    options: Any = field(default=None, repr=False)
    pnp_hypotheses: list[PnPHypothesis] = field(default_factory=list)
    depth_search: DepthSearchSummary | None = None
    rescue: Any = None  # rescue.RescueSummary, when the rescue search ran
    verdict: Any = None  # verdict.Verdict: accepted / uncertain / rejected, with reasons

    def headline(self) -> str:
        """One line: verdict, final stage, PnP inliers, similarity gain (``overlay.png``'s title, the Slicer status)."""
        text = f"{self.verdict.status.upper()}; " if self.verdict is not None else ""
        text += f"final: {self.final_stage}; " + (f"inliers {self.inliers}/{self.n_correspondences}"
                                                     if self.initial_method != "regression" else "start: regression")
        if self.similarity_after is not None:
            text += f"; NCC {self.similarity_before:.3f} -> {self.similarity_after:.3f}"
        if self.depth_search is not None and self.depth_search.corrected:
            text += f"; {self.depth_search.describe()}"
        return text

    def summary_lines(self) -> list[str]:
        """What the CLI prints after a registration: stages, PnP, similarity, timings, warnings."""
        lines = [f"final pose from stage '{self.final_stage}' (initial: {self.initial_method})"]
        if self.verdict is not None:
            lines.append(f"  verdict: {self.verdict.line()}")
        if self.initial_method == "rayemb":
            lines.append(f"  PnP: {self.inliers}/{self.n_correspondences} inliers, {self.pnp_rmse_px:.2f} px RMS"
                         + ("; every PnP pose put the CT out of view: started from PnP's orientation at the most "
                            "similar depth" if self.initial_reseated else ""))
        if self.initial_method == "regression":
            lines.append("  start: the pose-regression network's pose"
                         + (" (more similar than the PnP poses)" if self.n_correspondences else ""))
        if self.similarity_after is not None:
            lines.append(f"  similarity (multiscale NCC): {self.similarity_before:.4f} -> {self.similarity_after:.4f}")
        if self.depth_search is not None and self.depth_search.corrected:
            lines.append(f"  depth search: PnP {self.depth_search.describe()}")
        if self.rescue is not None:
            r = self.rescue
            lines.append(f"  rescue search ({r.status_before} before, {r.starts} rotated starts): "
                         + (f"adopted, similarity {r.similarity_before:.4f} -> {r.similarity:.4f}" if r.adopted
                            else f"kept the result (best rescued similarity {r.similarity:.4f})"))
        lines.append("  timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings_s.items()))
        lines += [f"  warning: {w}" for w in self.warnings]
        return lines

    def for_display(self, max_bone_points: int = 40) -> "RegistrationResult":
        """A shallow copy with every fiducial and at most ``max_bone_points`` bone landmarks (PnP inliers first,
        then by confidence), for tables and slice views."""
        fid = [m for m in self.landmarks if m.kind != "bone"]
        bone = sorted((m for m in self.landmarks if m.kind == "bone"), key=lambda m: (not m.inlier, -float(m.confidence)))
        shown = copy.copy(self)
        shown.landmarks = fid + bone[:max_bone_points]
        return shown

    def to_json_fields(self) -> dict[str, Any]:
        """The typed sub-results as plain dicts (for ``registration.json``)."""
        d = {"pnp_hypotheses": [asdict(h) for h in self.pnp_hypotheses],
             "depth_search": asdict(self.depth_search) if self.depth_search is not None else {},
             "rescue": asdict(self.rescue) if self.rescue is not None else {}}
        if self.verdict is not None:
            d["verdict"] = self.verdict.to_dict()
        return d
