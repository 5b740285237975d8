"""Image similarity between an X-ray and DRRs.

Owns: the NCC family (global NCC, mean NCC over local patches, and DiffPose's multiscale NCC = their mix).

Shapes: images (B, H, W) or (H, W) torch tensors; results (B,) in [-1, 1].
"""

from __future__ import annotations

import torch

__all__ = ["ncc", "local_ncc", "multiscale_ncc"]


def ncc(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalised cross-correlation of images ``(B, H, W)`` (or ``(H, W)``) → ``(B,)`` in [-1, 1]."""
    a = a.reshape(a.shape[0] if a.ndim == 3 else 1, -1)
    b = b.reshape(b.shape[0] if b.ndim == 3 else 1, -1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def local_ncc(a: torch.Tensor, b: torch.Tensor, patch: int, eps: float = 1e-6) -> torch.Tensor:
    """Mean NCC over non-overlapping ``patch × patch`` tiles of ``(B, H, W)`` images → ``(B,)``.

    Flat tiles (no structure in either image) count as 0 correlation and are averaged in.
    """
    if a.ndim == 2:
        a, b = a[None], b[None]
    B, H, W = a.shape
    p = int(patch)
    h, w = (H // p) * p, (W // p) * p
    oy, ox = (H - h) // 2, (W - w) // 2
    a = a[:, oy : oy + h, ox : ox + w].reshape(B, h // p, p, w // p, p).permute(0, 1, 3, 2, 4).reshape(B, -1, p * p)
    b = b[:, oy : oy + h, ox : ox + w].reshape(B, h // p, p, w // p, p).permute(0, 1, 3, 2, 4).reshape(B, -1, p * p)
    a = a - a.mean(2, keepdim=True)
    b = b - b.mean(2, keepdim=True)
    num = (a * b).sum(2)
    den = a.norm(dim=2) * b.norm(dim=2)
    return (num / (den + eps)).mean(1)


def multiscale_ncc(a: torch.Tensor, b: torch.Tensor, patch: int | None = None, weights: tuple[float, float] = (0.5, 0.5)) -> torch.Tensor:
    """DiffPose's "multiscale NCC": ``w0 · NCC(a, b) + w1 · mean local NCC`` over ``patch``-pixel tiles.

    ``patch`` defaults to ≈ W/10 (13 px at 128², as DiffPose uses), at least 5.
    """
    if patch is None:
        patch = max(5, int(round(a.shape[-1] / 10)))
    return weights[0] * ncc(a, b) + weights[1] * local_ncc(a, b, patch)
