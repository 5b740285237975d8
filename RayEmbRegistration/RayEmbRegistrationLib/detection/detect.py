"""Point subspaces, subspace scores, 2D detections and heatmaps (the RayEmb matching step).

Owns: the RayEmb matching step: point subspaces, scores, detections (``LandmarkDetector``).

The RayEmb matching step — the per-point subspace ``U`` (orthonormal basis of the span
of the point's T template embeddings, rank ≤ T, from an SVD with rank handling), the score
``s(e) = ‖Uᵀe‖ / ‖e‖`` (= cosine between ``e`` and its projection onto the subspace), the differentiable
Gram form used in training, argmax + sub-pixel refinement, and ``LandmarkDetector`` (the inference API).

Never forms per-pixel D×D projectors: everything goes through ``U`` (D × r) or ``E`` (D × T).

Shapes: embedding maps (D, h, w) or (B, D, h, w); point embeddings ``E`` (N, D, T); query embeddings
(P, D) = pixels; scores (N, P) or (N, h, w). Pixels (u, v) = (column, row), integers at pixel centres.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import check_cancel

__all__ = [
    "subspace_basis",
    "subspace_scores",
    "gram_scores",
    "refine_peak",
    "score_maps_argmax",
    "coarse_to_fine_peaks",
    "peak_contrast",
    "CONTRAST_QUANTILE",
    "Detections",
    "LandmarkDetector",
]




def subspace_basis(E: torch.Tensor, rel_tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis of span(E) per point, with rank handling.

    Args:
        E: (N, D, T) the T template embeddings of N points (columns may be zero: point not seen there).
        rel_tol: after scaling each column to unit norm, singular values below ``rel_tol · σ_max`` (or all, if
            σ_max ≈ 0) count as zero (so the basis is invariant to the scale of each template embedding).

    Returns: ``(U (N, D, T), mask (N, T))``: ``U[..., j]`` is a basis vector where ``mask[:, j]`` is 1, else 0
    (so ``U`` holds exactly rank(E) orthonormal columns; a point with E = 0 has an empty subspace, score 0).
    """
    # unit columns first: the span is unchanged and the rank decision does not depend on embedding norms
    n = E.norm(dim=1, keepdim=True)
    E = torch.where(n > 1e-12, E / n.clamp_min(1e-12), torch.zeros_like(E))
    Uf, S, _ = torch.linalg.svd(E, full_matrices=False)  # (N, D, k), (N, k); k = min(D, T)
    smax = S[:, :1]
    mask = (S > rel_tol * smax) & (smax > 1e-12)
    return Uf * mask[:, None, :].to(Uf.dtype), mask


def subspace_scores(U: torch.Tensor, e: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``s = ‖Uᵀe‖ / ‖e‖`` for every (point, pixel) pair.

    Args:
        U: (N, D, r) orthonormal (possibly zero-padded) bases from ``subspace_basis``.
        e: (P, D) query embeddings.

    Returns: (N, P) scores in [0, 1].
    """
    en = e / e.norm(dim=-1, keepdim=True).clamp_min(eps)
    N, D, r = U.shape
    proj = (U.transpose(1, 2).reshape(N * r, D) @ en.T).view(N, r, -1)  # one GEMM
    return proj.square().sum(1).sqrt()


def coarse_to_fine_peaks(emb: torch.Tensor, U: torch.Tensor, factor: int = 2, radius: int = 3,
                         candidates: int = 4, contrast: bool = False):
    """Fast detection: scores on the ``factor``×-pooled map, then full-resolution scores in
    ``(2·radius+1)²`` windows around the ``candidates`` best coarse peaks; the best full-resolution pixel wins
    and is refined (quadratic, 3×3) in its window.

    Args: emb (D, h, w) embeddings (need not be normalised); U (N, D, r) bases.
    Returns: ``(uv (N, 2) float64 full-res pixels, confidence (N,) = the best full-resolution score)``; with
    ``contrast=True`` also the (N,) ``peak_contrast`` of the pooled map.
    """
    D, h, w = emb.shape
    N = len(U)
    en = emb / emb.norm(dim=0, keepdim=True).clamp_min(1e-8)
    coarse = F.avg_pool2d(en[None], factor, ceil_mode=True)[0]
    hc, wc = coarse.shape[-2:]
    sc = subspace_scores(U, coarse.reshape(D, -1).T)  # (N, hc·wc)
    top = sc.topk(min(candidates, sc.shape[1]), dim=-1).indices  # (N, C)
    C = top.shape[1]
    uc = ((top % wc) * factor + (factor - 1) / 2.0).round().long()
    vc = ((top // wc) * factor + (factor - 1) / 2.0).round().long()
    k = 2 * radius + 1
    off = torch.arange(k, device=emb.device) - radius
    # window origins kept inside the image (no clamped duplicates)
    u_lo = (uc - radius).clamp(0, max(0, w - k))
    v_lo = (vc - radius).clamp(0, max(0, h - k))
    uu = (u_lo[..., None] + off[None, None] + radius).clamp(0, w - 1)  # (N, C, k)
    vv = (v_lo[..., None] + off[None, None] + radius).clamp(0, h - 1)
    patch = en[:, vv[..., :, None], uu[..., None, :]]  # (D, N, C, k, k)
    patch = patch.permute(1, 2, 3, 4, 0).reshape(N, C * k * k, D)
    fs = torch.einsum("nqd,ndr->nqr", patch, U).square().sum(-1).sqrt().view(N, C, k * k)
    best_c = fs.max(-1).values.argmax(-1)  # (N,)
    n = torch.arange(N, device=emb.device)
    fsb = fs[n, best_c]  # (N, k²)
    conf, j = fsb.max(-1)
    u_star = uu[n, best_c, j % k]
    v_star = vv[n, best_c, j // k]
    # 3×3 full-resolution neighbourhood of the winner (also across window edges) → quadratic refinement
    o3 = torch.arange(3, device=emb.device) - 1
    u3 = (u_star[:, None] + o3[None]).clamp(0, w - 1)
    v3 = (v_star[:, None] + o3[None]).clamp(0, h - 1)
    p3 = en[:, v3[:, :, None], u3[:, None, :]].permute(1, 2, 3, 0).reshape(N, 9, D)
    f3 = torch.einsum("nqd,ndr->nqr", p3, U).square().sum(-1).sqrt()  # (N, 9)
    loc = refine_peak(f3, torch.full((N,), 4, device=emb.device, dtype=torch.long), 3, 3) - 1.0
    loc[:, 0] = torch.where((u_star > 0) & (u_star < w - 1), loc[:, 0], torch.zeros_like(loc[:, 0]))
    loc[:, 1] = torch.where((v_star > 0) & (v_star < h - 1), loc[:, 1], torch.zeros_like(loc[:, 1]))
    uv = torch.stack([u_star.double() + loc[:, 0], v_star.double() + loc[:, 1]], -1)
    conf = conf.double().clamp(0.0, 1.0)
    if contrast:
        return uv, conf, peak_contrast(sc, sc.max(-1).values)
    return uv, conf


#: which detections go to PnP first: their peak contrast, how far the peak stands above the score map's
#: ``CONTRAST_QUANTILE`` quantile q as a share of the headroom above it, (peak − q) / (1 − q), q estimated on
#: ``_CONTRAST_PIXELS`` evenly spread pixels. The peak score alone (RayEmb's confidence) ranks points whose whole
#: map is high — a subspace that captures most embeddings of the X-ray — first, and most of those peaks are wrong
#: (the 600 of 2,000 bone detections that go to PnP hold 2,391 / 3,220 right ones by peak score and 3,316 / 3,516 by
#: contrast over 20 pelvis X-rays with two prepared networks; ``benchmarks/detection_order.py``,
#: docs/pipeline.md, "Detection")
CONTRAST_QUANTILE, _CONTRAST_PIXELS = 0.9, 512


def peak_contrast(scores: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """(N, P) score maps and their (N,) peak scores → (N,) float64 peak contrast in [0, 1] (``CONTRAST_QUANTILE``)."""
    sub = scores[:, :: max(1, scores.shape[1] // _CONTRAST_PIXELS)]
    k = min(sub.shape[1], max(1, int(round(CONTRAST_QUANTILE * sub.shape[1]))))
    q = sub.kthvalue(k, dim=1).values.double()
    return ((peak.double() - q) / (1.0 - q).clamp_min(1e-6)).clamp(0.0, 1.0)


def gram_scores(E: torch.Tensor, e: torch.Tensor, ridge: float = 1e-4, eps: float = 1e-8) -> torch.Tensor:
    """Differentiable training form of the same score through E (no SVD): ``s² = cᵀ (EᵀE + λI)⁻¹ c / ‖e‖²``
    with ``c = Eᵀe`` (unit columns of E) and ``λ = ridge · tr(EᵀE)/T`` (equals ``subspace_scores`` as λ → 0 for full-rank E).

    Args: E (N, D, T), e (P, D) or (N, P, D) (per-point query maps). Returns (N, P).
    """
    en = e / e.norm(dim=-1, keepdim=True).clamp_min(eps)
    E = E / E.norm(dim=1, keepdim=True).clamp_min(eps)  # unit columns (same span), as in subspace_basis
    G = E.transpose(1, 2) @ E  # (N, T, T)
    T = G.shape[-1]
    lam = ridge * G.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(eps) / T
    G = G + lam[:, None, None] * torch.eye(T, dtype=G.dtype, device=G.device)
    L = torch.linalg.cholesky(G)
    # whitened basis Q = L⁻¹ Eᵀ (N, T, D): ‖Q e‖² = eᵀ E G⁻¹ Eᵀ e (the solve stays on the small side)
    Q = torch.linalg.solve_triangular(L, E.transpose(1, 2), upper=False)
    if en.ndim == 2:
        y = torch.einsum("pd,ntd->ntp", en, Q)  # (N, T, P)
    else:
        y = torch.einsum("npd,ntd->ntp", en, Q)
    return y.pow(2).sum(1).clamp(0.0, 1.0).add(1e-12).sqrt()


def refine_peak(score: torch.Tensor, idx: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Sub-pixel peak by a separable quadratic fit in the 3×3 window around the argmax.

    Args: score (N, h·w) maps, idx (N,) flat argmax, w, h. Returns (N, 2) float64 (u, v).
    """
    u = (idx % w).long()
    v = (idx // w).long()
    maps = score.view(-1, h, w)
    n = torch.arange(len(idx), device=score.device)

    def at(du, dv):
        uu = (u + du).clamp(0, w - 1)
        vv = (v + dv).clamp(0, h - 1)
        return maps[n, vv, uu].double()

    c = at(0, 0)
    out = torch.stack([u.double(), v.double()], -1)
    for axis, (a, b) in enumerate((((-1, 0), (1, 0)), ((0, -1), (0, 1)))):
        lo, hi = at(*a), at(*b)
        pos = u if axis == 0 else v
        size = w if axis == 0 else h
        denom = lo - 2 * c + hi
        off = torch.where(denom < -1e-12, 0.5 * (lo - hi) / denom, torch.zeros_like(c)).clamp(-0.5, 0.5)
        interior = (pos > 0) & (pos < size - 1)
        out[:, axis] += torch.where(interior, off, torch.zeros_like(off))
    return out


def score_maps_argmax(score: torch.Tensor, w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined peaks and confidences of score maps (N, h·w).

    Confidence = the score at the peak pixel, ``max ‖Uᵀe‖/‖e‖`` (in [0, 1]), as in RayEmb: how close the best
    pixel's embedding lies to the point's subspace. (A softmax mass around the peak would rank points whose
    projection lies outside the X-ray — flat, low score maps with one mild maximum — as confident.)
    Returns ``(uv (N, 2) float64, confidence (N,) float64)``.
    """
    best, idx = score.max(-1)
    uv = refine_peak(score, idx, w, h)
    return uv, best.double().clamp(0.0, 1.0)


@dataclass
class Detections:
    """2D detections of N 3D points in one X-ray.

    Attributes:
        uv: (N, 2) float64 pixels (u, v) in the X-ray's own full-resolution grid (OpenCV convention).
        confidence: (N,) float64 in [0, 1]: the peak score ‖Uᵀe‖/‖e‖ (0 for points no template sees).
        contrast: (N,) float64 in [0, 1]: the peak contrast (``peak_contrast``: how far the peak stands out of its
            map; 0 for points no template sees) — the order in which detections go to PnP.
        heatmaps: (N, h, w) float32 subspace scores at network size, or None.
        uv_net: (N, 2) the same detections at network size (``image_size``²).
        net_intrinsics: the X-ray's detector resampled to network size.
        seconds: wall time of ``detect``.
    """

    uv: np.ndarray
    confidence: np.ndarray
    contrast: np.ndarray
    heatmaps: np.ndarray | None
    uv_net: np.ndarray
    net_intrinsics: object
    seconds: float = 0.0


class LandmarkDetector:
    """Detects the 2D projections of 3D CT points in X-rays of that CT.

    Args:
        model: an ``EmbeddingNet`` (``load_model()``).
        ct: the patient's ``CTVolume``.
        device: torch device for the network and the scoring.
        n_templates: number of template views (see ``templates.inference_template_angles``).
        cache_dir: optional on-disk template cache (keyed by CT hash, model sha256 and template settings).
        progress: optional ``callable(fraction, message)`` while building templates.
    """

    def __init__(self, model, ct, device: str | torch.device = "cpu", n_templates: int = 4, cache_dir=None,
                 progress: Callable[[float, str], None] | None = None, chunk: int = 128) -> None:
        from .templates import get_templates

        self.model = model.to(device).eval()
        self.ct = ct
        self.device = torch.device(device)
        self.chunk = int(chunk)
        self.templates = get_templates(model, ct, n_templates=n_templates, device=device, cache_dir=cache_dir, progress=progress)

    def point_bases(self, points_ras: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3) RAS → (U (N, D, T), seen (N,) bool = visible in ≥ 1 template)."""
        E = self.templates.point_embeddings(points_ras).to(self.device)  # (N, D, T)
        U, mask = subspace_basis(E)
        return U, mask.any(-1)

    @torch.no_grad()
    def detect(self, xray_pixels, intrinsics, points_ras, heatmaps: bool = False,
               progress: Callable[[float, str], None] | None = None, cancel: Callable[[], bool] | None = None,
               fast: bool = False) -> Detections:
        """Detect where ``points_ras`` project in the X-ray.

        Args:
            xray_pixels: (H, W) float line-integral image (bone bright), as ``xray`` delivers it.
            intrinsics: the X-ray's ``Intrinsics`` (its full-resolution grid, W × H).
            points_ras: (N, 3) RAS mm points of the CT.
            heatmaps: also return the (N, h, w) score maps at network size (scores every pixel: slower).
            fast: without heatmaps, score the 2×-pooled map and search full resolution only in 7×7 windows
                around its 4 best peaks (``coarse_to_fine_peaks``; ~2× faster;
                may pick another peak where the score map is flat). Default False: every pixel is scored.
            progress, cancel: see ``progress.py`` (raises ``progress.Cancelled``).
        """
        t0 = time.perf_counter()
        img = np.asarray(xray_pixels) if not isinstance(xray_pixels, torch.Tensor) else xray_pixels
        if img.ndim != 2:
            raise ValueError(f"xray_pixels must be a 2D (H, W) image, got shape {tuple(img.shape)}")
        H, W = img.shape
        if (intrinsics.width, intrinsics.height) != (W, H):
            raise ValueError(f"intrinsics describe a {intrinsics.width}×{intrinsics.height} image but xray_pixels is "
                             f"{W}×{H}; pass the intrinsics of this image.")
        pts = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
        S = self.model.config.image_size
        net_K = intrinsics.resized(S, S)
        if progress:
            progress(0.0, "embedding X-ray")
        emb = self.model.embed(img if isinstance(img, torch.Tensor) else img.astype(np.float32))[0]  # (D, S, S)
        D = emb.shape[0]
        e = emb.reshape(D, -1).T.contiguous()  # (P, D)
        e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        U, seen = self.point_bases(pts)
        N = len(pts)
        uv = np.zeros((N, 2))
        conf = np.zeros(N)
        contrast = np.zeros(N)
        maps = np.zeros((N, S, S), np.float32) if heatmaps else None
        for start in range(0, N, self.chunk):
            check_cancel(cancel, "landmark detection")
            sl = slice(start, min(N, start + self.chunk))
            if maps is None and fast:
                p_uv, p_conf, p_contrast = coarse_to_fine_peaks(emb, U[sl], contrast=True)
            else:
                sc = subspace_scores(U[sl], e)  # (n, P)
                p_uv, p_conf = score_maps_argmax(sc, S, S)
                p_contrast = peak_contrast(sc, p_conf)
                if maps is not None:
                    maps[sl] = sc.view(-1, S, S).float().cpu().numpy()
            uv[sl] = p_uv.cpu().numpy()
            conf[sl] = p_conf.cpu().numpy()
            contrast[sl] = p_contrast.cpu().numpy()
            if progress:
                progress(sl.stop / max(N, 1), f"scored {sl.stop}/{N} points")
        seen_np = seen.cpu().numpy()
        conf[~seen_np] = 0.0
        contrast[~seen_np] = 0.0
        full_uv = net_K.scale_pixels(uv, intrinsics)
        return Detections(full_uv, conf, contrast, maps, uv, net_K, time.perf_counter() - t0)
