"""Which pixels of an X-ray can a DRR of the CT explain?

Owns: ``informative_mask`` — the pixels of an X-ray that show the patient, ``used_mask`` — the mask registration
uses (or None: every pixel), and ``level_mask`` — that mask on a coarser grid of the same detector (the refinement's
levels, the verdict's DRR grid).

An X-ray shows things no DRR of the CT can show, and they dominate an image similarity: behind a collimator's
shutters the image is bright and smooth (lead, leakage and scatter) and its edge is the strongest edge in the
image; a clipped region (a shutter the display saturates, the cores of metal implants, burned-in labels) is flat.
The similarity and the verdict read only the pixels this mask keeps (``similarity.py``, ``verdict.py``), so the
same pose scores about the same whether or not the X-ray was collimated (tested). Dropped, each grown by a margin
for the display's edge-enhancement halo:

* saturated bright regions: pixels whose 3 × 3 neighbourhood is exactly flat (range ≤ 1e-4 of the image's 1–99 %
  range) in the brighter half of the image — an unclipped image's noise makes that all but impossible, a clipped
  region's pixels are;
* collimator shutters: straight edges (OpenCV's Hough transform of the Canny edges) and circular ones (its
  Hough circle transform) that run along at least ``_SUPPORT`` of their length inside the image, at least a fifth of
  the image from its centre, beyond which the image is brighter (lead attenuates) — the half-plane or the outside
  of the circle beyond them.

Dark regions are kept: air is dark in every DRR too. Not detected: shutters blanked to black by the display, thin
wires (not saturated), anatomy not in the CT. ``benchmarks/xray_mask.py`` measures the mask against the true
collimated field of the physics appearance family and its false drops on the other families.

Shapes: ``pixels`` (H, W) float, bone bright (``load_xray``'s form); masks (H, W) bool, True = keep.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["informative_mask", "used_mask", "level_mask"]

_WORK = 256  #: the grid (longest side) the mask is found on
_FLAT = 1e-4  #: a 3 × 3 range below this share of the 1–99 % range is "clipped"
_SUPPORT = 0.5  #: share of a shutter edge's length inside the image along which it must be seen
_STEP = 0.02  #: how much brighter (share of the 1–99 % range) the image must be beyond a shutter edge
_MARGIN = 0.02  #: the margin dropped inside each region, a share of the longest side (edge-enhancement halos)


def informative_mask(pixels: np.ndarray) -> np.ndarray:
    """(H, W) bool: True where the X-ray ``pixels`` (H, W) can show the patient (see the module docstring)."""
    import cv2

    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"an X-ray is (H, W); got shape {img.shape}")
    H, W = img.shape
    s = _WORK / max(H, W)
    w, h = max(8, int(round(W * s))), max(8, int(round(H * s)))
    x = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) if (h, w) != (H, W) else img  # never written to
    lo, hi = np.percentile(x, [1, 99])
    if not hi > lo:
        return np.ones((H, W), dtype=bool)
    x = (x - lo) / (hi - lo)
    drop = _saturated(x) | _shutters(x)
    if drop.any():
        r = max(1, int(round(_MARGIN * max(w, h))))
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        drop = cv2.dilate(drop.astype(np.uint8), disk) > 0
    keep = ~drop
    if (h, w) != (H, W):
        keep = cv2.resize(keep.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST) > 0
    return keep


def used_mask(pixels: np.ndarray) -> np.ndarray | None:
    """The keep-mask registration reads (``informative_mask``), or None — every pixel — when it keeps everything or
    less than a tenth of the image (then it is not trusted: a mostly saturated image is a wrong input, not a
    shutter)."""
    keep = informative_mask(pixels)
    return None if keep.all() or keep.mean() < 0.1 else keep


def level_mask(mask: np.ndarray | None, width: int, height: int) -> np.ndarray | None:
    """``mask`` (H, W) bool on the ``width`` × ``height`` grid of the same detector: a coarse pixel is kept only when
    every fine pixel it covers is. None stays None (nothing dropped)."""
    if mask is None:
        return None
    import cv2

    m = np.asarray(mask, dtype=np.float32)
    if m.shape == (height, width):
        return m >= 0.5
    interp = cv2.INTER_AREA if width <= m.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(m, (int(width), int(height)), interpolation=interp) >= 0.999


def _saturated(x: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    flat = (ndi.maximum_filter(x, 3, mode="nearest") - ndi.minimum_filter(x, 3, mode="nearest")) <= _FLAT
    return flat & (x >= np.median(x))


def _value_at(x: np.ndarray, pts: np.ndarray, normal: np.ndarray, d: float) -> np.ndarray:
    """Image values (nearest pixel) at ``pts`` (N, 2 as u, v) moved by ``d`` along ``normal`` (N, 2); NaN outside
    the image."""
    h, w = x.shape
    q = np.rint(pts + d * normal).astype(int)
    ok = (q[:, 0] >= 0) & (q[:, 0] < w) & (q[:, 1] >= 0) & (q[:, 1] < h)
    v = np.full(len(q), np.nan)
    v[ok] = x[q[ok, 1], q[ok, 0]]
    return v


def _seen(x: np.ndarray, pts: np.ndarray, normal: np.ndarray) -> float:
    """Share of the in-image points ``pts`` at which the image is brighter beyond the edge (along ``normal``) than
    before it, by ``_STEP``: 2 and 5 pixels beyond against as far before, and 12 pixels beyond (which may lie
    outside the image: a narrow shutter) against 5 before — a bright rim of anatomy, such as the edge of a CT's
    field of view, is darker again further out."""
    h, w = x.shape
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
    if inside.sum() < 0.3 * min(h, w):
        return 0.0
    pts, normal = pts[inside], normal[inside]
    ok = np.ones(len(pts), dtype=bool)
    for before, beyond in ((2.0, 2.0), (5.0, 5.0), (5.0, 12.0)):
        step = _value_at(x, pts, normal, beyond) - _value_at(x, pts, normal, -before)
        ok &= np.nan_to_num(step, nan=1.0 if beyond > 5 else -1.0) >= _STEP
    return float(ok.mean())


def _shutters(x: np.ndarray) -> np.ndarray:
    import cv2

    h, w = x.shape
    g = cv2.GaussianBlur(x, (0, 0), 1.5)
    u8 = np.clip(g * 255, 0, 255).astype(np.uint8)
    edges = cv2.Canny(u8, 20, 50)
    cu, cv_ = (w - 1) / 2, (h - 1) / 2
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float32)
    drop = np.zeros((h, w), dtype=bool)
    lines = cv2.HoughLines(edges, 1, math.pi / 180, int(0.3 * min(h, w)))
    for rho, theta in ([] if lines is None else lines[:40, 0]):
        n = np.array([math.cos(theta), math.sin(theta)])
        off = float(n @ (cu, cv_)) - float(rho)  # signed distance of the centre from the line
        if abs(off) < 0.2 * min(h, w):
            continue
        out = -np.sign(off) * n  # the normal pointing away from the centre
        t = np.arange(-1.5 * max(h, w), 1.5 * max(h, w), 1.0)
        foot = n * float(rho)
        pts = foot[None] + t[:, None] * np.array([-n[1], n[0]])[None]
        if _seen(x, pts, np.repeat(out[None], len(pts), 0)) >= _SUPPORT:
            drop |= ((uu - foot[0]) * out[0] + (vv - foot[1]) * out[1]) > 0
    circles = cv2.HoughCircles(u8, cv2.HOUGH_GRADIENT, dp=1, minDist=max(h, w), param1=50, param2=30,
                               minRadius=int(0.3 * min(h, w)), maxRadius=int(0.75 * max(h, w)))
    for c0, c1, r in ([] if circles is None else circles[0, :3]):
        if r < 0.2 * min(h, w) + math.hypot(c0 - cu, c1 - cv_):
            continue  # the image centre must lie well inside the field
        a = np.linspace(0, 2 * math.pi, int(2 * math.pi * r), endpoint=False)
        normal = np.stack([np.cos(a), np.sin(a)], 1)
        if _seen(x, np.array([c0, c1])[None] + r * normal, normal) >= _SUPPORT:
            drop |= (uu - c0) ** 2 + (vv - c1) ** 2 > r * r
    return drop
