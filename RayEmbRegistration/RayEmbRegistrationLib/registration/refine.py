"""Intensity-based pose refinement: maximise the similarity between the X-ray and DRRs of the CT.

Owns: the refinement of a pose by DRR similarity (``Refiner``: coarse-to-fine Adam, depth search, multi-start).

Details: the pose parameterisation used for optimisation (below), the image pyramid, the start-depth search and
the choice among several starts (refined together: ``refine_batch``, one batch of DRRs per iteration). The
similarity itself is ``similarity.py``; the settings ``options.RefineOptions``.

Pose parameterisation: ``camera_from_world = D(p) · T0`` with ``p = (ρ, v)`` ∈ R⁶, both in mm. ``D`` rotates
the camera frame by ``exp([ρ / r]×)`` about the CT centre ``c`` (expressed in T0's camera frame) and then
translates by ``v`` (camera axes: +u, +v, depth). ``r`` is the radius of the CT's bone (or of the whole CT):
a step of 1 in ρ moves points at that radius by ≈ 1 mm, so one learning rate fits rotation and translation.

Guarantee: the returned pose is never worse than the start by the similarity this module reports (measured
at the finest level): the start pose is one of the candidates of the final choice.

Shapes: X-ray pixels (H, W) float32 line integrals (bone bright); poses (4, 4) float64 NumPy (RAS mm →
OpenCV camera); DRRs (H', W') at the level's grid.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..geometry.camera import Intrinsics
from ..options import RefineOptions
from ..progress import CancelFn, ProgressFn, check_cancel, sub_progress
from ..rendering.render import DRRRenderer
from .similarity import image_similarity
from .xray_mask import level_mask, used_mask
from ..inputs.volume import BONE_HU, CTVolume

__all__ = [
    "RefineResult",
    "pose_perturbation",
    "perturbation_numpy",
    "downsample_image",
    "level_intrinsics",
    "Refiner",
    "DepthSearch",
]

# ------------------------------------------------------------------------------------------------------------
# Pose parameterisation
# ------------------------------------------------------------------------------------------------------------


def _skew(w: torch.Tensor) -> torch.Tensor:
    z = torch.zeros((), dtype=w.dtype, device=w.device)
    return torch.stack(
        [torch.stack([z, -w[2], w[1]]), torch.stack([w[2], z, -w[0]]), torch.stack([-w[1], w[0], z])]
    )


def pose_perturbation(p: torch.Tensor, centre_cam: torch.Tensor, radius_mm: float) -> torch.Tensor:
    """``D(p)`` (4, 4) torch for ``p = (ρ (3), v (3))`` mm: rotate by ``exp([ρ/r]×)`` about ``centre_cam``, then
    translate by ``v`` (camera frame). Differentiable; ``D(0) = I``."""
    R = torch.linalg.matrix_exp(_skew(p[:3] / radius_mm))
    t = centre_cam - R @ centre_cam + p[3:]
    top = torch.cat([R, t[:, None]], dim=1)
    bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=p.dtype, device=p.device)
    return torch.cat([top, bottom], dim=0)


def perturbation_numpy(p: Sequence[float], camera_from_world: np.ndarray, centre_ras, radius_mm: float) -> np.ndarray:
    """NumPy helper: ``D(p) · camera_from_world`` with the rotation centre given in RAS."""
    T0 = np.asarray(camera_from_world, dtype=np.float64)
    c = T0[:3, :3] @ np.asarray(centre_ras, dtype=np.float64) + T0[:3, 3]
    D = pose_perturbation(torch.as_tensor(np.asarray(p, dtype=np.float64)), torch.as_tensor(c), float(radius_mm))
    return D.numpy() @ T0


# ------------------------------------------------------------------------------------------------------------
# Images and grids
# ------------------------------------------------------------------------------------------------------------


def level_intrinsics(intrinsics: Intrinsics, size: int) -> Intrinsics:
    """The detector on a grid whose longer side has ``size`` pixels (aspect ratio kept)."""
    W, H = intrinsics.size
    if W >= H:
        w, h = size, max(2, int(round(size * H / W)))
    else:
        w, h = max(2, int(round(size * W / H))), size
    return intrinsics.resized(w, h)


def downsample_image(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average (H, W) → (height, width) float32 (anti-aliased; same detector, pixel edges kept)."""
    import cv2

    img = np.asarray(pixels, dtype=np.float32)
    if img.shape == (height, width):
        return img.copy()
    interp = cv2.INTER_AREA if width <= img.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(img, (int(width), int(height)), interpolation=interp)


# ------------------------------------------------------------------------------------------------------------
# Refinement
# ------------------------------------------------------------------------------------------------------------


@dataclass
class RefineResult:
    """Result of ``refine``.

    Attributes:
        camera_from_world: (4, 4) the best pose found (may be the start pose itself).
        similarity_before / similarity_after: multiscale NCC of the start / returned pose at the finest level.
        improved: whether the returned pose differs from the start.
        history: per level, the similarity at each iteration.
        params: (6,) the final ``p = (ρ, v)`` in mm relative to the start.
        seconds: wall time.
    """

    camera_from_world: np.ndarray
    similarity_before: float
    similarity_after: float
    improved: bool
    history: list[list[float]] = field(default_factory=list, repr=False)
    params: np.ndarray = field(default_factory=lambda: np.zeros(6), repr=False)
    seconds: float = 0.0


@dataclass
class DepthSearch:
    """Result of ``Refiner.search_depth``.

    Attributes:
        camera_from_world: (4, 4) the most similar candidate (the start itself if nothing beats it).
        factor: its depth of the refinement centre divided by the start's (1.0 = the start).
        similarity_start / similarity: multiscale NCC of the start / the chosen candidate at the search grid.
        factors, similarities: (N,) every candidate tried, the start (factor 1) included.
        size: the grid (longer side, px) the candidates were scored on.
        starts: the starts ``refine_with_depth_search`` then refined, in the order of its results: ``"PnP start"``,
            ``"depth-searched start"`` (when the search moved), ``"depth-valley start"`` (when given valley poses).
        valley_factor, valley_similarity: the chosen valley pose's factor of ``pose.depth_valley_poses`` and its
            similarity on the search grid (None without valley poses).
    """

    camera_from_world: np.ndarray
    factor: float
    similarity_start: float
    similarity: float
    size: int = 64
    factors: np.ndarray = field(repr=False, default_factory=lambda: np.ones(1))
    similarities: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(1))
    starts: tuple[str, ...] = ("PnP start",)
    valley_factor: float | None = None
    valley_similarity: float | None = None


class Refiner:
    """Refines poses of X-rays against one CT (keeps the resampled CT and the renderer between calls).

    Args:
        ct: the CT.
        options: ``RefineOptions``.
        device: torch device.
        centre_ras: rotation centre (3,) RAS; default: centroid of the bone voxels (HU ≥ 350), else CT centre.
        radius_mm: see the module docstring; default: RMS distance of bone voxels from the centre.
    """

    def __init__(self, ct: CTVolume, options: RefineOptions | None = None, device: str | torch.device = "cpu",
                 centre_ras=None, radius_mm: float | None = None) -> None:
        self.options = options or RefineOptions()
        self.device = torch.device(device)
        o = self.options
        ct_r = ct
        if o.voxel_mm is not None and float(np.min(ct.spacing)) < 0.8 * o.voxel_mm:
            ct_r = ct.resampled(o.voxel_mm)
        self.ct = ct_r
        mask = ct_r.hu >= BONE_HU
        if centre_ras is None or radius_mm is None:
            pts = ct_r.ijk_to_ras_points(np.argwhere(mask)) if mask.any() else ct_r.corners_ras
            c = pts.mean(0) if centre_ras is None else np.asarray(centre_ras, dtype=np.float64)
            r = float(np.sqrt(((pts - c) ** 2).sum(1).mean())) if radius_mm is None else float(radius_mm)
        else:
            c, r = np.asarray(centre_ras, dtype=np.float64), float(radius_mm)
        self.centre_ras = c
        self.radius_mm = max(r, 10.0)
        self.n_samples = max(32, int(o.samples_per_voxel * max(ct_r.shape)))
        self._renderer: DRRRenderer | None = None
        self._mask_of: np.ndarray | None = None
        self._mask: np.ndarray | None = None

    def keep_mask(self, xray_pixels: np.ndarray) -> np.ndarray | None:
        """(H, W) bool: the pixels of ``xray_pixels`` every similarity of this refiner reads
        (``xray_mask.used_mask``); None — every pixel — when ``options.xray_mask`` is off or the mask drops nothing
        usable. Found once per X-ray."""
        if not self.options.xray_mask:
            return None
        if self._mask_of is not xray_pixels:
            self._mask_of, self._mask = xray_pixels, used_mask(xray_pixels)
        return self._mask

    def _level_target(self, xray_pixels: np.ndarray, intr: Intrinsics) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The X-ray and its keep-mask on the grid of ``intr``, as tensors on the refiner's device."""
        target = torch.as_tensor(downsample_image(xray_pixels, intr.width, intr.height), device=self.device)
        keep = level_mask(self.keep_mask(xray_pixels), intr.width, intr.height)
        return target, None if keep is None else torch.as_tensor(keep, device=self.device)

    def _render(self, intrinsics: Intrinsics) -> DRRRenderer:
        if self._renderer is None:
            self._renderer = DRRRenderer(self.ct, intrinsics, backend=self.options.backend,
                                         bone_multiplier=self.options.bone_multiplier, n_samples=self.n_samples,
                                         device=self.device)
        elif self._renderer.intrinsics != intrinsics:
            self._renderer.set_intrinsics(intrinsics)
        return self._renderer

    @torch.no_grad()
    def similarity(self, xray_pixels: np.ndarray, intrinsics: Intrinsics, poses, size: int | None = None) -> np.ndarray:
        """Multiscale NCC of the X-ray with DRRs at ``poses`` (B, 4, 4) on the grid of side ``size``
        (default: the finest level) → (B,)."""
        size = size or self.options.levels[-1]
        intr = level_intrinsics(intrinsics, size)
        target, keep = self._level_target(xray_pixels, intr)
        poses = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
        drr = self._render(intr)(torch.as_tensor(poses, dtype=torch.float32, device=self.device))
        patch = max(5, int(round(self.options.patch_fraction * intr.width)))
        return image_similarity(self.options.similarity)(drr, target.expand_as(drr), patch,
                                                         mask=keep).double().cpu().numpy()

    @torch.no_grad()
    def drr(self, intrinsics: Intrinsics, camera_from_world, size: int | None = None) -> np.ndarray:
        """DRR (h, w) float32 at one pose on the grid of side ``size`` (default: finest level)."""
        intr = level_intrinsics(intrinsics, size or self.options.levels[-1])
        return self._render(intr).render_numpy(np.asarray(camera_from_world, dtype=np.float64))

    @torch.no_grad()
    def search_depth(self, xray_pixels: np.ndarray, intrinsics: Intrinsics, camera_from_world, n: int = 16,
                     range_fraction: tuple[float, float] = (0.3, 0.95), size: int = 64,
                     centre_ras=None) -> DepthSearch:
        """Slide the CT along the viewing ray of its centre and keep the most similar depth.

        A pose from a few noisy 2D–3D correspondences is weakest in depth (magnification), and the gradient
        refinement captures depth errors of only ~10 %. This tries the start and ``n`` rigid translations of it
        along the ray from the source through the point ``c`` (``centre_ras``; default the refinement centre) so
        that ``c`` keeps its pixel, with the depth of ``c`` geometrically spaced over ``range_fraction`` × the
        source-to-detector distance, and scores each by the multiscale NCC on the ``size`` grid (one batch of cheap
        coarse DRRs).

        Args:
            camera_from_world: (4, 4) the start pose (``c`` must be in front of the source).
        Returns:
            ``DepthSearch``; its pose is the start unless a candidate is more similar.
        """
        T0 = np.asarray(camera_from_world, dtype=np.float64)
        c = self.centre_ras if centre_ras is None else np.asarray(centre_ras, dtype=np.float64).reshape(3)
        c_cam = T0[:3, :3] @ c + T0[:3, 3]
        z0 = float(c_cam[2])
        if not z0 > 0:
            raise ValueError(f"the depth-search centre is behind the source at the start pose (depth {z0:.1f} mm)")
        sdd = float(intrinsics.source_to_detector_mm)
        depths = np.geomspace(range_fraction[0] * sdd, range_fraction[1] * sdd, int(n))
        factors = np.concatenate([[1.0], depths / z0])
        poses = np.repeat(T0[None], len(factors), 0)
        poses[:, :3, 3] += (factors[:, None] - 1.0) * c_cam[None]
        sims = self.similarity(xray_pixels, intrinsics, poses, size)
        k = int(np.argmax(sims))
        return DepthSearch(poses[k], float(factors[k]), float(sims[0]), float(sims[k]), size, factors, sims)

    def most_similar(self, xray_pixels: np.ndarray, intrinsics: Intrinsics, poses, size: int,
                     is_plausible: Callable[[np.ndarray], bool] | None = None) -> tuple[int, float]:
        """Index and similarity (multiscale NCC on the ``size`` grid) of the most similar of ``poses`` (B, 4, 4),
        among those that pass ``is_plausible(camera_from_world)`` if any does (one batch of coarse DRRs)."""
        v = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
        sims = self.similarity(xray_pixels, intrinsics, v, size)
        ok = np.array([is_plausible is None or bool(is_plausible(T)) for T in v])
        j = int(np.argmax(np.where(ok, sims, -np.inf))) if ok.any() else int(np.argmax(sims))
        return j, float(sims[j])

    def refine_from_starts(self, xray_pixels: np.ndarray, intrinsics: Intrinsics, starts,
                           progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                           max_levels: int | None = None,
                           is_plausible: Callable[[np.ndarray], bool] | None = None) -> tuple[list[RefineResult], int]:
        """``refine`` from each of ``starts`` ((4, 4) poses) and pick the most similar result, among those that
        pass ``is_plausible(camera_from_world)`` if any does (``max_levels`` as in ``refine``).

        Returns ``(results in the order of starts, index of the chosen one)``. The starts are refined together in
        one batch (``refine_batch``).
        """
        results = self.refine_batch(xray_pixels, intrinsics, starts, progress, cancel, max_levels=max_levels)
        ok = [is_plausible is None or is_plausible(r.camera_from_world) for r in results]
        score = [r.similarity_after if good or not any(ok) else -math.inf for r, good in zip(results, ok)]
        return results, int(np.argmax(score))

    def refine_with_depth_search(self, xray_pixels: np.ndarray, intrinsics: Intrinsics, camera_from_world,
                                 progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                                 is_plausible: Callable[[np.ndarray], bool] | None = None,
                                 compare_levels: int | None = None, valley=None, valley_factors=None,
                                 ) -> tuple[RefineResult, DepthSearch, list[RefineResult], int]:
        """``search_depth``, then ``refine`` from the start, (if the search moved it) from the searched pose and (given
        ``valley``) from the most similar of the valley poses.

        The coarse depth score alone sometimes prefers a wrong basin when the rotation is far off, and the start
        alone cannot recover a wrong magnification: both are refined and the more similar result wins, among
        those that pass ``is_plausible(camera_from_world)`` if any does. ``compare_levels``: the two starts compete
        over the first levels of the schedule only, and the winner goes through the rest (None: both run every
        level; ``options.RefineOptions.depth_compare_levels``). ``valley``: (F, 4, 4) poses along the start's depth
        ambiguity (``pose.depth_valley_poses``, at ``valley_factors``): sliding the start along its viewing ray keeps
        its tilt, which from noisy detections is wrong together with its depth; the valley poses refit the tilt at
        each depth. Scored on the search's grid (the plausible ones, if any is), the best joins the starts.

        Returns:
            (the chosen result, the depth search, all results — one per start, in the order of the depth
            search's ``starts`` labels (the start first); with ``compare_levels``, after those levels and scored on
            the last of them —, the index of the chosen one). The chosen result's ``similarity_before`` is the *start's* similarity (finest level) and
            ``improved`` is relative to the start (not improved → the start pose is returned).
        Raises:
            ValueError: the refinement centre is behind the source at the start (see ``search_depth``).
        """
        t0 = time.perf_counter()
        ds = self.search_depth(xray_pixels, intrinsics, camera_from_world)
        starts, labels = [np.asarray(camera_from_world, dtype=np.float64)], ["PnP start"]
        if ds.factor != 1.0:
            starts.append(ds.camera_from_world)
            labels.append("depth-searched start")
        if valley is not None and len(valley):
            j, sim = self.most_similar(xray_pixels, intrinsics, valley, ds.size, is_plausible)
            starts.append(np.asarray(valley, dtype=np.float64).reshape(-1, 4, 4)[j])
            labels.append("depth-valley start")
            factor = float(valley_factors[j]) if valley_factors is not None else None
            ds = dataclasses.replace(ds, valley_factor=factor, valley_similarity=sim)
        ds = dataclasses.replace(ds, starts=tuple(labels))
        split = compare_levels is not None and len(starts) > 1 and 0 < compare_levels < len(self.options.levels)
        if not split:
            results, k = self.refine_from_starts(xray_pixels, intrinsics, starts, progress, cancel,
                                                 is_plausible=is_plausible)
            best, before = results[k], results[0].similarity_before
        else:
            results, k, best = self.compete(xray_pixels, intrinsics, starts, int(compare_levels), progress, cancel,
                                            is_plausible=is_plausible)
            before = float(self.similarity(xray_pixels, intrinsics, starts[:1])[0])
        chosen = RefineResult(best.camera_from_world, before, max(best.similarity_after, before),
                              best.similarity_after > before, best.history, best.params, time.perf_counter() - t0)
        if not chosen.improved:
            chosen.camera_from_world = starts[0]
        return chosen, ds, results, k

    def compete(self, xray_pixels: np.ndarray, intrinsics: Intrinsics, starts, compare_levels: int,
                progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                is_plausible: Callable[[np.ndarray], bool] | None = None) -> tuple[list[RefineResult], int, RefineResult]:
        """The ``starts`` compete over the first ``compare_levels`` levels of the schedule (one batch,
        ``refine_from_starts``) and only the winner goes through the rest (``refine(first_level=…)``): cheaper than
        refining every start fully when one of them will be kept (the depth search's two starts, the rescue's best).

        Returns ``(results after the compared levels, scored on the last of them; the winner's index; the winner over
        the whole schedule)`` — the last with the history of every level, its similarities at the finest level and
        ``similarity_before`` that of the winner's pose after the compared levels."""
        n = int(compare_levels)
        results, k = self.refine_from_starts(xray_pixels, intrinsics, starts, sub_progress(progress, 0.0, 0.5), cancel,
                                             max_levels=n, is_plausible=is_plausible)
        rest = self.refine(xray_pixels, intrinsics, results[k].camera_from_world, sub_progress(progress, 0.5, 1.0),
                           cancel, first_level=n)
        winner = RefineResult(rest.camera_from_world, rest.similarity_before, rest.similarity_after, rest.improved,
                              results[k].history + rest.history, rest.params, rest.seconds)
        return results, k, winner

    def refine(self, xray_pixels: np.ndarray, intrinsics: Intrinsics, camera_from_world,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None,
               max_levels: int | None = None, first_level: int = 0) -> RefineResult:
        """Refine ``camera_from_world`` (4, 4) for the X-ray ``xray_pixels`` (H, W) of detector ``intrinsics``.

        ``max_levels``: run only the first (coarsest) levels of the schedule; the similarities and the final
        choice are then at the last level run (used to compare several start poses cheaply). ``first_level``: skip
        the schedule's first levels (a start that has already been through them: ``rescue.search``).
        """
        return self.refine_batch(xray_pixels, intrinsics, [camera_from_world], progress, cancel, max_levels,
                                 first_level)[0]

    def refine_batch(self, xray_pixels: np.ndarray, intrinsics: Intrinsics, starts,
                     progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                     max_levels: int | None = None, first_level: int = 0,
                     iterations: int | None = None) -> list[RefineResult]:
        """``refine`` from each of ``starts`` ((4, 4) poses), all at once: one batch of DRRs per iteration (6 starts
        at 32²: 59 ms per iteration instead of 6 × 22 ms). Each start has its own parameters; Adam is elementwise, so
        every result is the one ``refine`` alone would give, up to the float rounding of a batched DRR (which the
        optimiser can carry ~1 mm along the depth, where the similarity is flat). A start whose gradient stops
        being finite stops for the rest of that level, as alone. ``seconds`` of each result: the whole batch's.
        ``iterations``: this many Adam iterations at every level run instead of the schedule's (a short screening
        of many starts: ``rescue.search``)."""
        t0 = time.perf_counter()
        o = self.options
        T0 = np.stack([np.asarray(T, dtype=np.float64).reshape(4, 4) for T in starts])
        B = len(T0)
        levels = list(o.levels)
        iters = [int(i) for i in o.per_level(o.iterations if iterations is None else int(iterations), len(levels))]
        lrs = [float(x) for x in o.per_level(o.lr_mm, len(levels))]
        if max_levels is not None:
            k = max(1, int(max_levels))
            levels, iters, lrs = levels[:k], iters[:k], lrs[:k]
        j = min(max(0, int(first_level)), len(levels) - 1)
        levels, iters, lrs = levels[j:], iters[j:], lrs[j:]
        total = max(1, sum(iters))
        done = 0
        T0_t = torch.as_tensor(T0, dtype=torch.float64, device=self.device)
        centre = torch.as_tensor(self.centre_ras, dtype=torch.float64, device=self.device)
        c_cam = torch.einsum("bij,j->bi", T0_t[:, :3, :3], centre) + T0_t[:, :3, 3]
        p = torch.zeros(B, 6, dtype=torch.float64, device=self.device, requires_grad=True)
        active = torch.ones(B, dtype=torch.bool, device=self.device)
        candidates: list[list[np.ndarray]] = [[np.zeros(6)] for _ in range(B)]
        history: list[list[list[float]]] = [[] for _ in range(B)]
        for level, (size, n_it, lr) in enumerate(zip(levels, iters, lrs)):
            intr = level_intrinsics(intrinsics, size)
            target, keep = self._level_target(xray_pixels, intr)
            renderer = self._render(intr)
            patch = max(5, int(round(o.patch_fraction * intr.width)))
            similarity = image_similarity(o.similarity)
            opt = torch.optim.Adam([p], lr=lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, n_it), eta_min=0.1 * lr)
            active[:] = True  # a start stopped by a non-finite gradient resumes at the next level, as alone
            best_sim = [-math.inf] * B
            best_p = p.detach().cpu().numpy().copy()
            hist: list[list[float]] = [[] for _ in range(B)]
            for it in range(n_it):
                check_cancel(cancel, "refinement")
                opt.zero_grad()
                T = torch.stack([pose_perturbation(p[b], c_cam[b], self.radius_mm) @ T0_t[b] for b in range(B)])
                drr = renderer(T.to(torch.float32))
                sim = similarity(drr, target[None].expand_as(drr), patch, mask=keep)
                s = sim.detach().cpu().numpy()
                now = p.detach().cpu().numpy()
                for b in np.flatnonzero(active.cpu().numpy()):
                    hist[b].append(float(s[b]))
                    if s[b] > best_sim[b]:
                        best_sim[b], best_p[b] = float(s[b]), now[b].copy()
                (-sim[active].sum()).backward()
                active &= torch.isfinite(p.grad).all(1)
                if not bool(active.any()):
                    break
                frozen = p.detach().clone()
                p.grad[~active] = 0.0
                opt.step()
                sched.step()
                with torch.no_grad():  # a stopped start keeps its parameters (Adam's momentum would move them)
                    p[~active] = frozen[~active]
                done += 1
                if progress is not None:
                    progress(done / total, f"refine {intr.width}x{intr.height}: similarity {max(best_sim):.4f}")
            for b in range(B):
                history[b].append(hist[b])
                candidates[b].append(best_p[b])
            with torch.no_grad():
                p.copy_(torch.as_tensor(best_p, dtype=torch.float64))
        # Final choice at the finest level, the start included: never worse than the start.
        poses = [[perturbation_numpy(c, T0[b], self.centre_ras, self.radius_mm) if np.any(c) else T0[b]
                  for c in candidates[b]] for b in range(B)]
        n = len(candidates[0])
        sims = self.similarity(xray_pixels, intrinsics, np.stack([q for row in poses for q in row]), levels[-1])
        results = []
        for b in range(B):
            sb = sims[b * n:(b + 1) * n]
            k = int(np.argmax(sb))
            results.append(RefineResult(poses[b][k], float(sb[0]), float(sb[k]), k != 0, history[b],
                                        candidates[b][k], time.perf_counter() - t0))
        return results

