"""Training augmentations: new anatomy from a CT (volume) and DRR → real X-ray appearance (image).

Owns: the augmentations of training volumes and images.

``augment_volume`` (random crop, axis flips, scale/shear of the ijk→RAS affine about the volume centre,
HU jitter; a new ``CTVolume``, the input is never modified) and ``augment_images`` (contrast, gamma,
inversion, blur, noise, collimation edges on network inputs in [0, 1]).

All randomness comes from the NumPy ``Generator`` passed in (deterministic given a seed).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..volume import CTVolume

__all__ = ["augment_volume", "augment_images"]


def augment_volume(ct: CTVolume, rng: np.random.Generator, crop_min: float = 0.6, scale: float = 0.15,
                   shear: float = 0.1, hu_scale: float = 0.08, hu_shift: float = 40.0) -> CTVolume:
    """A new anatomy from ``ct``: crop, flips, affine scale/shear (about the crop's centre), HU jitter."""
    hu = ct.hu
    A = ct.ijk_to_ras.copy()
    # random crop (index box), each axis keeps a fraction in [crop_min, 1]
    lo = np.zeros(3, int)
    for ax in range(3):
        n = hu.shape[ax]
        keep = max(min(n, 16), int(round(n * rng.uniform(crop_min, 1.0))))
        lo[ax] = rng.integers(0, n - keep + 1)
        hu = np.take(hu, np.arange(lo[ax], lo[ax] + keep), axis=ax)
    A[:3, 3] = A[:3, :3] @ lo + A[:3, 3]
    # flips: mirror the anatomy along index axes (affine kept → mirrored in RAS)
    for ax in range(3):
        if rng.random() < 0.5:
            hu = np.flip(hu, axis=ax)
    # scale / shear of the voxel grid about its centre
    M = np.eye(3) + rng.uniform(-shear, shear, (3, 3)) * (1 - np.eye(3))
    M = M @ np.diag(rng.uniform(1 - scale, 1 + scale, 3))
    c_idx = (np.array(hu.shape) - 1) / 2.0
    c_ras = A[:3, :3] @ c_idx + A[:3, 3]
    L = A[:3, :3] @ M
    A2 = np.eye(4)
    A2[:3, :3] = L
    A2[:3, 3] = c_ras - L @ c_idx
    hu = np.ascontiguousarray(hu, dtype=np.float32)
    hu = hu * np.float32(rng.uniform(1 - hu_scale, 1 + hu_scale)) + np.float32(rng.uniform(-hu_shift, hu_shift))
    return CTVolume(hu, A2, name=f"{ct.name}_aug")


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(np.ceil(2.5 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def augment_images(x: torch.Tensor, rng: np.random.Generator, p_invert: float = 0.1) -> torch.Tensor:
    """Network inputs (B, 1, H, W) in [0, 1] → augmented copies (new tensor, same shape, clipped to [0, 1])."""
    out = []
    B, _, H, W = x.shape
    for b in range(B):
        y = x[b : b + 1].clone()
        # collimation: bright (high attenuation) or random-level strips at the borders
        if rng.random() < 0.3:
            level = 1.0 if rng.random() < 0.7 else float(rng.uniform(0, 1))
            t, bo, l, r = (int(rng.uniform(0, 0.15) * s) for s in (H, H, W, W))
            if t:
                y[..., :t, :] = level
            if bo:
                y[..., H - bo :, :] = level
            if l:
                y[..., :, :l] = level
            if r:
                y[..., :, W - r :] = level
        y = (y - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.1, 0.1)
        y = y.clamp(0, 1) ** float(np.exp(rng.uniform(np.log(0.6), np.log(1.7))))
        if rng.random() < 0.5:
            k = _gauss_kernel(float(rng.uniform(0.3, 1.5))).to(y)
            r = len(k) // 2
            y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
            y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
        if rng.random() < 0.7:
            g = torch.Generator().manual_seed(int(rng.integers(2**31)))
            y = y + float(rng.uniform(0, 0.05)) * torch.randn(y.shape, generator=g).to(y)
        if rng.random() < p_invert:
            y = 1 - y
        out.append(y.clamp(0, 1))
    return torch.cat(out, 0)
