"""Pictures of results a person looks at: the registration overlay and 8-bit display images.

Owns: the pictures of results a person looks at (the registration overlay, heatmaps) and 8-bit display mapping.

``overlay.png``: the X-ray, DRR edges at the final pose, detected / reprojected landmarks, a checkerboard, a title
coloured by the verdict and a legend; ``heatmap_*.png``: a point's score map with its peak and a colour bar.

Pixels (u, v) = (column, row) of the X-ray as stored; the DRR may be on a coarser grid of the same detector.
"""

from __future__ import annotations

import numpy as np

__all__ = ["overlay_image", "checkerboard", "heatmap_image", "to_uint8"]


def to_uint8(img: np.ndarray) -> np.ndarray:
    """(…) any finite-ish image → uint8 with the 0.5–99.5 % percentiles stretched to 0–255 (NaN → 0)."""
    a = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = np.percentile(a[finite], [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip(np.nan_to_num((a - lo) / (hi - lo), nan=0.0), 0, 1) * 255).astype(np.uint8)


#: BGR colours of the overlay and of its title per verdict
DRR_EDGE, DETECTED, REPROJECTED = (0, 255, 0), (0, 230, 255), (255, 60, 230)
IGNORED = (230, 140, 40)  # BGR: the pixels the X-ray's keep-mask drops
VERDICT_BGR = {"accepted": (60, 180, 60), "uncertain": (0, 170, 255), "rejected": (60, 60, 230)}


def _bone_subset(landmarks, max_bone: int) -> list:
    """Every fiducial and at most ``max_bone`` bone landmarks (PnP inliers first, then by confidence)."""
    fid = [m for m in landmarks if getattr(m, "kind", "fiducial") == "fiducial"]
    bone = sorted((m for m in landmarks if getattr(m, "kind", "fiducial") != "fiducial"),
                  key=lambda m: (not getattr(m, "inlier", False), -float(getattr(m, "confidence", 0.0))))
    return fid + bone[:max_bone]


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """``a`` and ``b`` (same shape) in alternating ``tiles`` × ``tiles`` squares: anatomy that continues across the
    tile edges means the two images agree."""
    h, w = a.shape[:2]
    v, u = np.mgrid[0:h, 0:w]
    mask = ((u * tiles // max(w, 1)) + (v * tiles // max(h, 1))) % 2 == 0
    return np.where(mask[..., None] if a.ndim == 3 else mask, a, b)


def overlay_image(xray_pixels: np.ndarray, drr: np.ndarray | None, landmarks=(), min_size: int = 512,
                  title: str | None = None, max_bone: int = 60, verdict: str | None = None,
                  keep: np.ndarray | None = None) -> np.ndarray:
    """(h, w', 3) uint8 BGR picture a clinician can judge at a glance.

    Left: the X-ray (grey) with the DRR's edges at the final pose (green), detected landmarks (yellow circles,
    filled = PnP inlier; every fiducial, at most ``max_bone`` bone points), their reprojections at the final
    pose (magenta crosses) and fiducial labels. Right (with a DRR): a checkerboard of the X-ray and the DRR —
    bone edges that run on across the squares mean the pose is right. A title bar coloured by the ``verdict``
    and a legend. ``drr`` may be on a coarser grid of the same detector; it is resampled (pixel edges kept).
    ``keep`` (H, W) bool, the X-ray's keep-mask (``registration/xray_mask``): the pixels it drops — collimator
    shutters, clipped regions, which no similarity read — are tinted on the left.
    """
    import cv2

    H, W = xray_pixels.shape
    s = max(1.0, min_size / max(H, W))
    w, h = int(round(W * s)), int(round(H * s))
    base = cv2.resize(to_uint8(xray_pixels), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
    ignored = None
    if keep is not None and not np.all(keep):
        ignored = cv2.resize(np.asarray(keep, np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) == 0
        out[ignored] = (0.6 * out[ignored] + 0.4 * np.array(IGNORED)).astype(np.uint8)
    panels = [out]
    if drr is not None:
        d = cv2.resize(to_uint8(drr), (w, h), interpolation=cv2.INTER_LINEAR)
        panels.append(cv2.cvtColor(checkerboard(base, d), cv2.COLOR_GRAY2BGR))
        d = cv2.GaussianBlur(d, (0, 0), 2.0)
        g = np.abs(cv2.Sobel(d, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(d, cv2.CV_32F, 0, 1))
        lo, hi = np.percentile(g, [80, 92])
        edges = cv2.Canny(d, float(lo), float(max(hi, lo + 1))) > 0
        out[edges] = (0.4 * out[edges] + 0.6 * np.array(DRR_EDGE)).astype(np.uint8)

    def px(uv):
        return (int(round((uv[0] + 0.5) * s - 0.5)), int(round((uv[1] + 0.5) * s - 0.5)))

    for lm in _bone_subset(list(landmarks), max_bone):
        det = np.asarray(lm.detected_px, dtype=float)
        rep = np.asarray(lm.reprojected_px, dtype=float)
        is_fid = getattr(lm, "kind", "fiducial") == "fiducial"
        r = 6 if is_fid else 3
        if np.isfinite(det).all():
            cv2.circle(out, px(det), r, DETECTED, -1 if getattr(lm, "inlier", False) else 1, cv2.LINE_AA)
        if np.isfinite(rep).all():
            cv2.drawMarker(out, px(rep), REPROJECTED, cv2.MARKER_CROSS, 2 * r + 2, 1, cv2.LINE_AA)
            if is_fid:
                p = px(rep)
                cv2.putText(out, str(lm.label), (p[0] + 7, p[1] - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3,
                            cv2.LINE_AA)
                cv2.putText(out, str(lm.label), (p[0] + 7, p[1] - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, REPROJECTED, 1,
                            cv2.LINE_AA)
    body = np.concatenate(panels, axis=1)
    bar = np.full((28, body.shape[1], 3), 30, np.uint8)
    if verdict in VERDICT_BGR:
        bar[:] = VERDICT_BGR[verdict]
    if title:
        cv2.putText(bar, title, (8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    legend = np.full((24, body.shape[1], 3), 30, np.uint8)
    x = 8
    items = [("DRR edges (final pose)", DRR_EDGE), ("detected (filled: PnP inlier)", DETECTED),
             ("reprojected (final pose)", REPROJECTED)]
    if ignored is not None:  # first: on a narrow picture the legend's last items fall off its edge
        items.insert(0, ("not compared (shutters, clipped)", IGNORED))
    for text, colour in items:
        cv2.circle(legend, (x + 5, 12), 5, colour, -1, cv2.LINE_AA)
        cv2.putText(legend, text, (x + 14, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
        x += 30 + 8 * len(text)
    if len(panels) > 1:
        for thick, colour in ((3, (0, 0, 0)), (1, (255, 255, 255))):
            cv2.putText(body, "X-ray / DRR checkerboard", (w + 8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, thick,
                        cv2.LINE_AA)
    return np.concatenate([bar, body, legend], axis=0)


def heatmap_image(scores: np.ndarray, peak_uv=None, label: str = "", scale: int = 2) -> np.ndarray:
    """(h', w', 3) uint8 BGR picture of one point's score map ``scores`` (h, w) in [0, 1]: the map (inferno,
    0 → 1 fixed, so maps are comparable), the peak marked (white cross at ``peak_uv`` (u, v) on the map's grid,
    if given), a colour bar with its scale and the label."""
    import cv2

    s = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64)), 0.0, 1.0)
    h, w = s.shape
    img = cv2.applyColorMap((s * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    img = cv2.resize(img, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    if peak_uv is not None and np.isfinite(np.asarray(peak_uv, dtype=float)).all():
        p = (int(round((peak_uv[0] + 0.5) * scale - 0.5)), int(round((peak_uv[1] + 0.5) * scale - 0.5)))
        cv2.drawMarker(img, p, (255, 255, 255), cv2.MARKER_CROSS, 14, 2, cv2.LINE_AA)
    bar_w, H = 18, h * scale
    ramp = np.linspace(1.0, 0.0, H)[:, None].repeat(bar_w, 1)
    bar = cv2.applyColorMap((ramp * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    ticks = np.full((H, 44, 3), 30, np.uint8)
    for value in (1.0, 0.5, 0.0):
        y = int(round((1.0 - value) * (H - 1)))
        cv2.putText(ticks, f"{value:.1f}", (4, min(max(y + 4, 10), H - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                    (235, 235, 235), 1, cv2.LINE_AA)
    body = np.concatenate([img, np.full((H, 4, 3), 30, np.uint8), bar, ticks], axis=1)
    title = np.full((20, body.shape[1], 3), 30, np.uint8)
    peak = float(s.max())
    cv2.putText(title, f"{label}  peak score {peak:.2f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (235, 235, 235), 1,
                cv2.LINE_AA)
    return np.concatenate([title, body], axis=0)
