"""Image similarity between an X-ray and DRRs.

Owns: the NCC family (global NCC, mean NCC over local patches, DiffPose's multiscale NCC = their mix, the same on
image gradients) and the registry of the refinement's similarities (``SIMILARITIES``, ``image_similarity``). Each
reads only the pixels a keep-mask keeps when one is given (``xray_mask.informative_mask``: collimator shutters and
saturated regions dropped); without one, every pixel.

Shapes: images (B, H, W) or (H, W) torch tensors; masks (H, W) or (B, H, W), bool or 0/1; results (B,) in [-1, 1].
"""

from __future__ import annotations

import torch

__all__ = ["ncc", "local_ncc", "multiscale_ncc", "sobel", "gradient_ncc", "SIMILARITIES", "image_similarity"]

#: the refinement's similarities (``options.RefineOptions.similarity``): ``"mncc"`` DiffPose's multiscale NCC of the
#: intensities; ``"grad"`` the same on the images' horizontal and vertical Sobel gradients (gradient correlation,
#: Penney et al., IEEE TMI 1998): blind to smooth intensity changes (scatter, heel effect, soft-tissue weighting,
#: windowing offsets). ``benchmarks/appearance_similarity.py`` measures both per X-ray appearance family.
SIMILARITIES = ("mncc", "grad")


def _weights(mask, like: torch.Tensor) -> torch.Tensor | None:
    """A keep-mask ((H, W) or (B, H, W), bool or 0/1) as float weights shaped like ``like`` (B, H, W); None stays
    None."""
    if mask is None:
        return None
    m = torch.as_tensor(mask, device=like.device).to(like.dtype)
    return m.expand_as(like) if m.ndim == 2 or m.shape[0] == 1 else m


def ncc(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6, mask=None) -> torch.Tensor:
    """Normalised cross-correlation of images ``(B, H, W)`` (or ``(H, W)``) → ``(B,)`` in [-1, 1], over the pixels
    ``mask`` keeps (default: all)."""
    a = a if a.ndim == 3 else a[None]
    b = b if b.ndim == 3 else b[None]
    w = _weights(mask, a)
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if w is None:
        a = a - a.mean(1, keepdim=True)
        b = b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    w = w.reshape(w.shape[0], -1)
    n = w.sum(1, keepdim=True).clamp_min(1.0)
    a = (a - (w * a).sum(1, keepdim=True) / n) * w
    b = (b - (w * b).sum(1, keepdim=True) / n) * w
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _tiles(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, H, W) → (B, tiles, p·p): the non-overlapping ``p × p`` tiles of the centred crop of whole tiles."""
    B, H, W = x.shape
    h, w = (H // p) * p, (W // p) * p
    oy, ox = (H - h) // 2, (W - w) // 2
    x = x[:, oy : oy + h, ox : ox + w]
    return x.reshape(B, h // p, p, w // p, p).permute(0, 1, 3, 2, 4).reshape(B, -1, p * p)


def local_ncc(a: torch.Tensor, b: torch.Tensor, patch: int, eps: float = 1e-6, mask=None,
              min_share: float = 0.5) -> torch.Tensor:
    """Mean NCC over non-overlapping ``patch × patch`` tiles of ``(B, H, W)`` images → ``(B,)``.

    Flat tiles (no structure in either image) count as 0 correlation and are averaged in. With a ``mask``, each
    tile correlates only the pixels it keeps, and a tile that keeps less than ``min_share`` of its pixels is left
    out of the mean (not counted as 0: a collimated X-ray then scores as its open field does).
    """
    if a.ndim == 2:
        a, b = a[None], b[None]
    p = int(patch)
    w = _weights(mask, a)
    a, b = _tiles(a, p), _tiles(b, p)
    if w is None:
        a = a - a.mean(2, keepdim=True)
        b = b - b.mean(2, keepdim=True)
        return ((a * b).sum(2) / (a.norm(dim=2) * b.norm(dim=2) + eps)).mean(1)
    w = _tiles(w, p)
    n = w.sum(2, keepdim=True)
    a = (a - (w * a).sum(2, keepdim=True) / n.clamp_min(1.0)) * w
    b = (b - (w * b).sum(2, keepdim=True) / n.clamp_min(1.0)) * w
    r = (a * b).sum(2) / (a.norm(dim=2) * b.norm(dim=2) + eps)
    used = (n[..., 0] >= min_share * p * p).to(r.dtype)
    return (r * used).sum(1) / used.sum(1).clamp_min(1.0)


def multiscale_ncc(a: torch.Tensor, b: torch.Tensor, patch: int | None = None,
                   weights: tuple[float, float] = (0.5, 0.5), mask=None) -> torch.Tensor:
    """DiffPose's "multiscale NCC": ``w0 · NCC(a, b) + w1 · mean local NCC`` over ``patch``-pixel tiles, over the
    pixels ``mask`` keeps (default: all).

    ``patch`` defaults to ≈ W/10 (13 px at 128², as DiffPose uses), at least 5.
    """
    if patch is None:
        patch = max(5, int(round(a.shape[-1] / 10)))
    return weights[0] * ncc(a, b, mask=mask) + weights[1] * local_ncc(a, b, patch, mask=mask)


def sobel(img: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical Sobel gradients of ``(B, H, W)`` images → ``(B, 2, H, W)`` (replicate padding)."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=img.dtype, device=img.device)
    w = torch.stack([k, k.T])[:, None]
    x = torch.nn.functional.pad(img[:, None], (1, 1, 1, 1), mode="replicate")
    return torch.nn.functional.conv2d(x, w)


def gradient_ncc(a: torch.Tensor, b: torch.Tensor, patch: int | None = None, mask=None) -> torch.Tensor:
    """Multiscale NCC of the images' Sobel gradients, the mean of the horizontal and the vertical one → ``(B,)``;
    with a ``mask``, over the pixels whose whole 3 × 3 neighbourhood it keeps."""
    if a.ndim == 2:
        a, b = a[None], b[None]
    ga, gb = sobel(a), sobel(b)
    if mask is not None:
        m = _weights(mask, a)[:, None]
        mask = -torch.nn.functional.max_pool2d(-m, 3, stride=1, padding=1)[:, 0]  # erode by one pixel
    return 0.5 * (multiscale_ncc(ga[:, 0], gb[:, 0], patch, mask=mask)
                  + multiscale_ncc(ga[:, 1], gb[:, 1], patch, mask=mask))


def image_similarity(name: str):
    """The similarity ``(drr (B, H, W), target (B, H, W), patch, mask=None) -> (B,)`` called ``name``
    (``SIMILARITIES``)."""
    if name == "mncc":
        return multiscale_ncc
    if name == "grad":
        return gradient_ncc
    raise ValueError(f"unknown similarity {name!r}; choose one of {', '.join(SIMILARITIES)}")
