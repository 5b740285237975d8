"""The rescue search: a wider pose search for a registration that the verdict did not accept.

Owns: the rotated starts about the bone in view (``rotation_starts``), their coarse scoring and the refinement of
the best few (``search``), and what ``registration.json`` says about it (``RescueSummary``). When to run it and
whether its pose replaces the registration's is ``pipeline.Registrar`` (``options.RefineOptions.rescue``).

Why: on clinical close-ups, a registration that fails has mostly a *rotation* wrong by 20–50° (PnP from a few
hundred noisy detections, then a gradient refinement that captures about 10°): the multiscale NCC at the true pose
is higher than at the final one — the objective is right, the start is outside its basin. Of the 7 results the
verdict did not accept among 40 clinical X-rays of two chest CTs no network was trained on, the true pose was more
similar than the final one in all 7 (``benchmarks/rescue_search.py``); the search registers 4 of the 8 failures,
none wrongly accepted (docs/pipeline.md, "Rescue search").

Frames: poses are (4, 4) ``camera_from_world`` (RAS mm → OpenCV camera, ``camera.py``). A start is a base pose
with the world rotated about the camera's x (image u) and y (image v) axes through the camera-frame centroid of the
bone that the base pose puts in the image, so that the bone in view stays where it is in the image while its
3D orientation changes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..geometry.camera import Camera, Intrinsics

__all__ = ["RescueSummary", "rotated_about", "view_centre", "rotation_starts", "search"]

#: fewer bone points in the image than this: rotate about the centroid of all the points given instead
MIN_POINTS_IN_VIEW = 20


@dataclass(frozen=True)
class RescueSummary:
    """What the rescue search did (``registration.json``'s ``rescue``).

    ``status_before`` / ``reasons_before``: the verdict that triggered it; ``starts`` rotated starts ranked on the
    ``grid_px`` grid — after ``screen_iterations`` iterations each at the schedule's coarsest level (then
    ``grid_px`` is that level's), or (0) as they are on ``RefineOptions.rescue_grid_px`` —, the
    best ``refined`` of them refined with the full schedule; ``similarity_before``: the
    registration's similarity (finest level), ``similarity``: the best rescued pose's; ``adopted``: the rescued pose
    became the result (it was more similar; the verdict was then given again).
    """

    status_before: str
    reasons_before: tuple[str, ...]
    starts: int
    refined: int
    grid_px: int
    similarity_before: float
    similarity: float
    adopted: bool
    seconds: float
    screen_iterations: int = 0


def rotated_about(camera_from_world, centre_cam, ax_deg: float, ay_deg: float) -> np.ndarray:
    """``camera_from_world`` (4, 4) with the world rotated about the camera-frame point ``centre_cam`` (3,) by
    ``ax_deg`` about the camera's x axis, then ``ay_deg`` about its y axis."""
    ax, ay = math.radians(ax_deg), math.radians(ay_deg)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(ax), -math.sin(ax)], [0.0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0.0, math.sin(ay)], [0.0, 1.0, 0.0], [-math.sin(ay), 0.0, math.cos(ay)]])
    R = ry @ rx
    c = np.asarray(centre_cam, dtype=np.float64).reshape(3)
    D = np.eye(4)
    D[:3, :3] = R
    D[:3, 3] = c - R @ c
    return D @ np.asarray(camera_from_world, dtype=np.float64)


def view_centre(camera: Camera, points_ras: np.ndarray) -> np.ndarray:
    """Camera-frame centroid (3,) of the ``points_ras`` (N, 3) that ``camera`` puts in its image in front of the
    source (of all of them when fewer than ``MIN_POINTS_IN_VIEW`` are)."""
    pts = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    inside = camera.intrinsics.contains_pixels(camera.project(pts)) & (camera.depth(pts) > 0)
    if inside.sum() >= MIN_POINTS_IN_VIEW:
        pts = pts[inside]
    return camera.to_camera(pts).mean(0)


def rotation_starts(bases: Sequence[np.ndarray], intrinsics: Intrinsics, points_ras: np.ndarray,
                    angles_deg: Sequence[float]) -> np.ndarray:
    """(len(bases) · len(angles)², 4, 4): each base rotated by every pair of ``angles_deg`` about its camera's x and
    y axes through the bone it puts in view (``view_centre``); a pair (0, 0) gives the base itself."""
    out = []
    for T in bases:
        c = view_centre(Camera(intrinsics, np.asarray(T, dtype=np.float64)), points_ras)
        out += [rotated_about(T, c, ax, ay) for ax in angles_deg for ay in angles_deg]
    return np.stack(out)


def search(refiner, xray_pixels: np.ndarray, intrinsics: Intrinsics, bases: Sequence[np.ndarray],
           points_ras: np.ndarray, angles_deg: Sequence[float], top: int, grid_px: int, cancel=None,
           compare_levels: int | None = None, screen_iterations: int = 0):
    """Rank the ``rotation_starts`` of ``bases``, refine the ``top`` best together and return ``(the most similar
    refined result, number of starts ranked, seconds)``.

    Ranking: with ``screen_iterations`` > 0, every start is refined for that many iterations at the schedule's
    coarsest level (one batch, ``Refiner.refine_batch``) and ranked by its similarity there, and the ``top`` go on
    from their screened poses; with 0, the raw starts are ranked by their similarity on the ``grid_px`` grid (one
    batch of DRRs, no refinement). ``compare_levels``: the ``top`` compete over the first levels of the schedule
    only and the winner then goes through the rest of the schedule (None: all compete over every level).
    ``points_ras``: bone points (N, 3); each base rotates about those of them it puts in its image
    (``view_centre``)."""
    t0 = time.perf_counter()
    starts = rotation_starts(bases, intrinsics, points_ras, angles_deg)
    if screen_iterations > 0:
        screened = refiner.refine_batch(xray_pixels, intrinsics, list(starts), cancel=cancel, max_levels=1,
                                        iterations=int(screen_iterations))
        scores = np.array([r.similarity_after for r in screened])
        starts = np.stack([r.camera_from_world for r in screened])
    else:
        scores = refiner.similarity(xray_pixels, intrinsics, starts, grid_px)
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[: max(1, int(top))]
    chosen = [starts[k] for k in order]
    if compare_levels is not None and compare_levels < len(refiner.options.levels):
        best = refiner.compete(xray_pixels, intrinsics, chosen, compare_levels, cancel=cancel)[2]
    else:
        best = max(refiner.refine_batch(xray_pixels, intrinsics, chosen, cancel=cancel, max_levels=compare_levels),
                   key=lambda r: r.similarity_after)
    return best, len(starts), time.perf_counter() - t0
