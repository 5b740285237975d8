"""Pictures of results a person looks at: the registration overlay and 8-bit display images.

Owns: drawing ``overlay.png`` (the X-ray, DRR edges at the final pose, detected / reprojected landmarks, a title)
and the robust 8-bit display mapping of any image (heatmaps too).

Pixels (u, v) = (column, row) of the X-ray as stored; the DRR may be on a coarser grid of the same detector.
"""

from __future__ import annotations

import numpy as np

__all__ = ["overlay_image", "to_uint8"]


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


def overlay_image(xray_pixels: np.ndarray, drr: np.ndarray | None, landmarks=(), min_size: int = 512,
                  title: str | None = None, max_bone: int = 200) -> np.ndarray:
    """(h, w, 3) uint8 BGR picture: the X-ray (grey), DRR edges at the final pose (green), detected landmarks
    (yellow circles: inliers filled), their reprojections at the final pose (magenta crosses), fiducial labels.

    ``drr`` may be on a coarser grid of the same detector; it is resampled (pixel edges kept).
    """
    import cv2

    H, W = xray_pixels.shape
    s = max(1.0, min_size / max(H, W))
    w, h = int(round(W * s)), int(round(H * s))
    base = cv2.resize(to_uint8(xray_pixels), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
    if drr is not None:
        d = cv2.resize(to_uint8(drr), (w, h), interpolation=cv2.INTER_LINEAR)
        d = cv2.GaussianBlur(d, (0, 0), 2.0)
        g = np.abs(cv2.Sobel(d, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(d, cv2.CV_32F, 0, 1))
        lo, hi = np.percentile(g, [80, 92])
        edges = cv2.Canny(d, float(lo), float(max(hi, lo + 1))) > 0
        out[edges] = (0.4 * out[edges] + 0.6 * np.array([0, 255, 0])).astype(np.uint8)

    def px(uv):
        return (int(round((uv[0] + 0.5) * s - 0.5)), int(round((uv[1] + 0.5) * s - 0.5)))

    n_bone = 0
    for lm in landmarks:
        det = np.asarray(lm.detected_px, dtype=float)
        rep = np.asarray(lm.reprojected_px, dtype=float)
        is_fid = getattr(lm, "kind", "fiducial") == "fiducial"
        if not is_fid:
            n_bone += 1
            if n_bone > max_bone:
                continue
        r = 6 if is_fid else 3
        if np.isfinite(det).all():
            cv2.circle(out, px(det), r, (0, 230, 255), -1 if getattr(lm, "inlier", False) else 1, cv2.LINE_AA)
        if np.isfinite(rep).all():
            cv2.drawMarker(out, px(rep), (255, 60, 230), cv2.MARKER_CROSS, 2 * r + 2, 1, cv2.LINE_AA)
            if is_fid:
                cv2.putText(out, str(lm.label), (px(rep)[0] + 7, px(rep)[1] - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                            (255, 60, 230), 1, cv2.LINE_AA)
    if title:
        cv2.putText(out, title, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out
