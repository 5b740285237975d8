"""Image similarity between an X-ray and DRRs.

Owns: the NCC family (global NCC, mean NCC over local patches, DiffPose's multiscale NCC = their mix, the same on
image gradients) and the registry of the refinement's similarities (``SIMILARITIES``, ``image_similarity``).

Shapes: images (B, H, W) or (H, W) torch tensors; results (B,) in [-1, 1].
"""

from __future__ import annotations

import torch

__all__ = ["ncc", "local_ncc", "multiscale_ncc", "sobel", "gradient_ncc", "SIMILARITIES", "image_similarity"]

#: the refinement's similarities (``options.RefineOptions.similarity``): ``"mncc"`` DiffPose's multiscale NCC of the
#: intensities; ``"grad"`` the same on the images' horizontal and vertical Sobel gradients (gradient correlation,
#: Penney et al., IEEE TMI 1998): blind to smooth intensity changes (scatter, heel effect, soft-tissue weighting,
#: windowing offsets). ``benchmarks/appearance_similarity.py`` measures both per X-ray appearance family.
SIMILARITIES = ("mncc", "grad")


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


def sobel(img: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical Sobel gradients of ``(B, H, W)`` images → ``(B, 2, H, W)`` (replicate padding)."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=img.dtype, device=img.device)
    w = torch.stack([k, k.T])[:, None]
    x = torch.nn.functional.pad(img[:, None], (1, 1, 1, 1), mode="replicate")
    return torch.nn.functional.conv2d(x, w)


def gradient_ncc(a: torch.Tensor, b: torch.Tensor, patch: int | None = None) -> torch.Tensor:
    """Multiscale NCC of the images' Sobel gradients, the mean of the horizontal and the vertical one → ``(B,)``."""
    if a.ndim == 2:
        a, b = a[None], b[None]
    ga, gb = sobel(a), sobel(b)
    return 0.5 * (multiscale_ncc(ga[:, 0], gb[:, 0], patch) + multiscale_ncc(ga[:, 1], gb[:, 1], patch))


def image_similarity(name: str):
    """The similarity ``(drr (B, H, W), target (B, H, W), patch) -> (B,)`` called ``name`` (``SIMILARITIES``)."""
    if name == "mncc":
        return multiscale_ncc
    if name == "grad":
        return gradient_ncc
    raise ValueError(f"unknown similarity {name!r}; choose one of {', '.join(SIMILARITIES)}")
