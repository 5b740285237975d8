"""Pose from 2D/3D correspondences: OpenCV PnP + RANSAC (MAGSAC++ where available), then a least-squares polish.

Owns: PnP + RANSAC on 2D–3D correspondences (OpenCV), and the poses along a PnP pose's depth ambiguity
(``depth_valley_poses``).

The conversion between OpenCV's ``(rvec, tvec)`` and our ``camera_from_world`` (4×4), robust PnP on
detected landmarks, and reprojection statistics. OpenCV's camera *is* our camera (``camera.py``: OpenCV
pinhole, pixels (u, v) = (column, row), integer at pixel centres), so no axis flips happen here.

Shapes: ``points_ras`` (N, 3) float64 RAS mm (world = the CT's RAS frame); ``uv`` (N, 2) float64 pixels of the
X-ray *as given* (full detector resolution); ``camera_from_world`` (4, 4) float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from ..geometry.camera import Camera, Intrinsics, rigid

__all__ = [
    "PoseError",
    "PnPResult",
    "camera_from_world_from_rvec_tvec",
    "rvec_tvec_from_camera_from_world",
    "solve_pnp",
    "solve_pnp_hypotheses",
    "reprojection_errors",
    "rotation_angle_rad",
    "depth_valley_poses",
    "DEPTH_VALLEY_FACTORS",
    "MIN_CORRESPONDENCES",
    "HAS_MAGSAC",
]

MIN_CORRESPONDENCES = 6
HAS_MAGSAC = hasattr(cv2, "USAC_MAGSAC")
#: depths of ``depth_valley_poses``, as factors of the PnP depth of the inliers' centroid. On clinical pelvis
#: close-ups PnP puts the bone too far from the source in 19 of 20 X-rays (median +131 mm at ~600–800 mm;
#: ``benchmarks/diagnose_pnp.py --oracle``), so the ladder reaches further towards the source than away.
DEPTH_VALLEY_FACTORS = (0.7, 0.8, 0.9, 1.1)


class PoseError(ValueError):
    """PnP impossible or failed (too few usable correspondences, degenerate points, no consensus).

    ``implausible``: the poses that RANSAC found but the caller's plausibility test refused (``solve_pnp_hypotheses``;
    empty otherwise), largest consensus first — a caller may still use their orientation
    (``initial_pose.RayEmbPnP``'s re-seating)."""

    def __init__(self, message: str, implausible: Sequence["PnPResult"] = ()) -> None:
        super().__init__(message)
        self.implausible = tuple(implausible)


@dataclass
class PnPResult:
    """Result of ``solve_pnp``.

    Attributes:
        camera_from_world: (4, 4) float64, RAS mm → OpenCV camera.
        inliers: (M,) int indices into the *input* correspondences that RANSAC (after polish) kept.
        n_correspondences: number of usable (finite) correspondences given to RANSAC.
        reprojection_errors_px: (N,) float64 distance between each input ``uv`` and the reprojection of its
            point at the final pose (NaN for unusable inputs), pixels of the X-ray.
        rmse_inliers_px: root-mean-square reprojection error over the inliers.
        method: the RANSAC variant that ran (``"MAGSAC++"`` or ``"RANSAC"``) + ``"+LM"``.
    """

    camera_from_world: np.ndarray
    inliers: np.ndarray
    n_correspondences: int
    reprojection_errors_px: np.ndarray = field(repr=False)
    rmse_inliers_px: float
    method: str
    attempts: int = 1

    @property
    def n_inliers(self) -> int:
        return int(len(self.inliers))


def camera_from_world_from_rvec_tvec(rvec, tvec) -> np.ndarray:
    """OpenCV ``(rvec (3,), tvec (3,))`` → ``camera_from_world`` (4, 4). Same camera, no flips."""
    R, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3, 1))
    return rigid(R, np.asarray(tvec, dtype=np.float64).reshape(3))


def rvec_tvec_from_camera_from_world(camera_from_world) -> tuple[np.ndarray, np.ndarray]:
    """``camera_from_world`` (4, 4) → OpenCV ``(rvec (3, 1), tvec (3, 1))``."""
    T = np.asarray(camera_from_world, dtype=np.float64)
    rvec, _ = cv2.Rodrigues(np.ascontiguousarray(T[:3, :3]))
    return rvec.reshape(3, 1), T[:3, 3].reshape(3, 1).copy()


def rotation_angle_rad(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Geodesic angle (rad) between two rotations (3, 3)."""
    c = (np.trace(np.asarray(R_a).T @ np.asarray(R_b)) - 1.0) / 2.0
    return float(np.arccos(np.clip(c, -1.0, 1.0)))


def reprojection_errors(camera_from_world, intrinsics: Intrinsics, points_ras, uv) -> np.ndarray:
    """(N,) pixel distance between ``uv`` (N, 2) and the projections of ``points_ras`` (N, 3); NaN behind the source."""
    proj = Camera(intrinsics, camera_from_world).project(points_ras)
    return np.linalg.norm(proj - np.asarray(uv, dtype=np.float64).reshape(-1, 2), axis=1)


def depth_valley_poses(points_ras, uv, intrinsics: Intrinsics, camera_from_world,
                       factors: Sequence[float] = DEPTH_VALLEY_FACTORS, threshold_px: float = 10.0) -> np.ndarray:
    """Poses along the depth ambiguity of a PnP pose: for each of ``factors``, the pose that puts the centroid of
    ``points_ras`` at that factor of its depth under ``camera_from_world`` and, with that depth held, rotates and
    shifts (in the image plane) to reproject ``points_ras`` onto ``uv`` best (robust least squares, soft-L1 with
    scale ``threshold_px / 2``; ``scipy.optimize.least_squares``).

    Why: from detections a few pixels off, a close-up's narrow field of view fixes depth and the out-of-plane tilt only
    together — a pose at another depth with the *same* rotation (what sliding along the viewing ray gives) does not
    fit the detections, while the tilt that does fit changes with the depth. Used by the depth-valley start
    (``options.RefineOptions.depth_valley``: a retry for results that do not match by default; docs/pipeline.md,
    "Depth valley", for what it gained and lost).

    Args:
        points_ras (N, 3), uv (N, 2): the correspondences that support ``camera_from_world`` (its PnP inliers).
        camera_from_world (4, 4): the PnP pose; its centroid depth must be > 0.
    Returns:
        (len(factors), 4, 4) float64 ``camera_from_world`` poses, in the order of ``factors``. Rotation and in-plane
        position are about the points' centroid in the camera frame (OpenCV frame, ``camera.py``).
    """
    from scipy.optimize import least_squares
    from scipy.spatial.transform import Rotation

    X = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    x = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    T0 = np.asarray(camera_from_world, dtype=np.float64)
    if len(X) < MIN_CORRESPONDENCES:
        raise PoseError(f"depth_valley_poses needs at least {MIN_CORRESPONDENCES} correspondences, got {len(X)}")
    c = X.mean(0)
    c_cam = T0[:3, :3] @ c + T0[:3, 3]
    if not c_cam[2] > 0:
        raise PoseError(f"the points' centroid is behind the source at the PnP pose (depth {c_cam[2]:.1f} mm)")

    def pose(q: np.ndarray, z: float) -> np.ndarray:
        R = Rotation.from_rotvec(q[:3]).as_matrix() @ T0[:3, :3]
        return rigid(R, np.array([q[3], q[4], z]) - R @ c)

    out = []
    for f in factors:
        z = float(c_cam[2]) * float(f)
        q0 = np.array([0.0, 0.0, 0.0, c_cam[0] * f, c_cam[1] * f])  # the centroid stays on its viewing ray
        fit = least_squares(lambda q: (Camera(intrinsics, pose(q, z)).project(X) - x).ravel(), q0, loss="soft_l1",
                            f_scale=max(float(threshold_px), 1e-3) / 2.0)
        out.append(pose(fit.x, z))
    return np.stack(out) if out else np.zeros((0, 4, 4))


def solve_pnp(
    points_ras,
    uv,
    intrinsics: Intrinsics,
    *,
    threshold_px: float = 10.0,
    iterations: int = 10_000,
    confidence: float = 0.9999,
    method: str = "magsac",
    seed: int | None = 0,
    polish: bool = True,
    is_plausible: Callable[[np.ndarray], bool] | None = None,
    max_attempts: int = 3,
) -> PnPResult:
    """Robust pose of the camera from 3D points and their 2D detections.

    1. RANSAC PnP: ``cv2.solvePnPRansac`` with ``flags=cv2.USAC_MAGSAC`` (MAGSAC++) when this OpenCV has it and
       ``method="magsac"``, otherwise classic RANSAC with EPnP minimal solves; ``iterations`` iterations,
       inlier threshold ``threshold_px`` in pixels of ``intrinsics`` (the X-ray's own, full-resolution grid),
       ``confidence``.
    2. Polish: ``cv2.solvePnPRefineLM`` on the inliers (Levenberg–Marquardt on the reprojection error), then the
       inlier set is re-read at the polished pose (same threshold) and polished once more.
    3. Plausibility (optional): if ``is_plausible(camera_from_world)`` is False, the consensus is a degenerate
       one (typically many detections collapsed onto a few pixels, explained by pushing the CT far from the
       source); its inliers are set aside and RANSAC runs again on the rest (sequential RANSAC), at most
       ``max_attempts`` times.

    Points are centred on their mean before OpenCV sees them (better conditioning); the pose is returned in
    the world (RAS) frame.

    Args:
        points_ras: (N, 3) RAS mm.
        uv: (N, 2) pixels (u = column, v = row). Rows with NaN/inf in either array are ignored.
        intrinsics: the X-ray detector.
        is_plausible: a predicate on a ``camera_from_world`` (4, 4), e.g. "the CT is in the field of view".

    Raises:
        PoseError: fewer than ``MIN_CORRESPONDENCES`` (6) usable correspondences or inliers, degenerate
            configuration, no pose found, or no plausible pose within ``max_attempts``.
    """
    return solve_pnp_hypotheses(points_ras, uv, intrinsics, threshold_px=threshold_px, iterations=iterations,
                                confidence=confidence, method=method, seed=seed, polish=polish,
                                is_plausible=is_plausible, max_attempts=max_attempts, max_hypotheses=1)[0]


def solve_pnp_hypotheses(
    points_ras,
    uv,
    intrinsics: Intrinsics,
    *,
    max_hypotheses: int = 3,
    max_attempts: int = 5,
    threshold_px: float = 10.0,
    iterations: int = 10_000,
    confidence: float = 0.9999,
    method: str = "magsac",
    seed: int | None = 0,
    polish: bool = True,
    is_plausible: Callable[[np.ndarray], bool] | None = None,
) -> list[PnPResult]:
    """Sequential RANSAC: up to ``max_hypotheses`` plausible poses supported by disjoint consensus sets.

    Each round runs ``solve_pnp``'s RANSAC + LM on the correspondences not yet explained, then sets the
    consensus aside (plausible or not) — at most ``max_attempts`` rounds. With noisy detections the largest
    consensus is not always the right pose; the caller picks among the hypotheses (``pipeline.Registrar.register``
    compares them by image similarity after a coarse refinement). Arguments as ``solve_pnp``.

    Returns: the plausible ``PnPResult``s in the order found (the first has the largest consensus).
    Raises:
        PoseError: as ``solve_pnp`` when no plausible pose is found.
    """
    X = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    x = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    if len(X) != len(x):
        raise PoseError(f"points_ras has {len(X)} rows but uv has {len(x)}; give one 2D detection per 3D point.")
    active = np.isfinite(X).all(1) & np.isfinite(x).all(1)
    n_usable = int(active.sum())
    kwargs = dict(threshold_px=threshold_px, iterations=iterations, confidence=confidence, method=method,
                  seed=seed, polish=polish)
    rejected: list[PnPResult] = []
    found: list[PnPResult] = []
    for attempt in range(max(1, int(max_attempts))):
        Xa = np.where(active[:, None], X, np.nan)
        try:
            res = _solve_pnp_once(Xa, x, intrinsics, **kwargs)
        except PoseError:
            if not rejected and not found:
                raise
            break
        res.attempts = attempt + 1
        active[res.inliers] = False
        if is_plausible is None or is_plausible(res.camera_from_world):
            if attempt > 0:  # report the errors of every usable input, set-aside ones included
                res.reprojection_errors_px = reprojection_errors(res.camera_from_world, intrinsics, X, x)
                res.n_correspondences = n_usable
            found.append(res)
            if len(found) >= max_hypotheses:
                break
        else:
            rejected.append(res)
    if not found:
        raise PoseError(
            f"PnP found only implausible poses ({len(rejected)} consensus sets of {[r.n_inliers for r in rejected]} "
            "inliers put the CT outside the X-ray's field of view); the detections do not agree on a camera pose.",
            implausible=rejected,
        )
    return found


def _solve_pnp_once(points_ras, uv, intrinsics: Intrinsics, *, threshold_px: float, iterations: int,
                    confidence: float, method: str, seed: int | None, polish: bool) -> PnPResult:
    """One MAGSAC/RANSAC + LM run of ``solve_pnp`` (see there); rows with NaN are unusable."""
    X = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    x = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    usable = np.isfinite(X).all(1) & np.isfinite(x).all(1)
    idx = np.flatnonzero(usable)
    n = len(idx)
    if n < MIN_CORRESPONDENCES:
        raise PoseError(
            f"only {n} usable 2D/3D correspondences; PnP needs at least {MIN_CORRESPONDENCES}. "
            "Add fiducials or enable automatic bone points."
        )
    Xu, xu = X[idx], x[idx]
    centre = Xu.mean(0)
    Xc = np.ascontiguousarray(Xu - centre)
    if np.linalg.matrix_rank(Xc, tol=1e-6 * max(1.0, np.abs(Xc).max())) < 3 and n < 8:
        raise PoseError("the 3D points are (nearly) coplanar or collinear and too few; add non-coplanar points.")
    K = intrinsics.K
    dist = np.zeros(5)
    use_magsac = method == "magsac" and HAS_MAGSAC
    flags = cv2.USAC_MAGSAC if use_magsac else cv2.SOLVEPNP_EPNP
    if seed is not None:
        cv2.setRNGSeed(int(seed))
    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            Xc, np.ascontiguousarray(xu), K, dist,
            iterationsCount=int(iterations), reprojectionError=float(threshold_px),
            confidence=float(confidence), flags=flags,
        )
    except cv2.error as exc:
        raise PoseError(f"OpenCV PnP failed on {n} correspondences: {exc}") from exc
    if not ok or rvec is None or inl is None or len(inl) < MIN_CORRESPONDENCES:
        k = 0 if inl is None else len(inl)
        raise PoseError(
            f"RANSAC found no pose supported by at least {MIN_CORRESPONDENCES} of {n} correspondences "
            f"(best had {k} within {threshold_px:g} px). The detections do not agree on a camera pose."
        )
    inl = inl.reshape(-1)
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 100, 1e-12)
    rvec = np.asarray(rvec, dtype=np.float64).reshape(3, 1)
    tvec = np.asarray(tvec, dtype=np.float64).reshape(3, 1)
    if polish:
        for _ in range(2):
            rvec, tvec = cv2.solvePnPRefineLM(Xc[inl], xu[inl], K, dist, rvec, tvec, criteria=crit)
            T_c = camera_from_world_from_rvec_tvec(rvec, tvec)
            err = reprojection_errors(T_c, intrinsics, Xc, xu)
            new = np.flatnonzero(np.nan_to_num(err, nan=np.inf) <= threshold_px)
            if len(new) < MIN_CORRESPONDENCES or np.array_equal(new, inl):
                break
            inl = new
    T_c = camera_from_world_from_rvec_tvec(rvec, tvec)
    # Undo the centring: X_cam = R (X - c) + t  ⇒  t_world = t - R c.
    T = T_c.copy()
    T[:3, 3] = T_c[:3, 3] - T_c[:3, :3] @ centre
    errs = np.full(len(X), np.nan)
    errs[idx] = reprojection_errors(T, intrinsics, Xu, xu)
    if T[:3, 3][2] <= 0 and np.all(Camera(intrinsics, T).depth(Xu[inl]) <= 0):
        raise PoseError("PnP put the points behind the X-ray source; the detections are inconsistent.")
    inliers = idx[inl]
    rmse = float(np.sqrt(np.nanmean(errs[inliers] ** 2)))
    return PnPResult(T, np.sort(inliers), n, errs, rmse, ("MAGSAC++" if use_magsac else "RANSAC") + ("+LM" if polish else ""))
