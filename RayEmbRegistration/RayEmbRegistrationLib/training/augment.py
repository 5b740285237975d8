"""Image augmentation for training: DRR → real X-ray appearance.

Owns: ``augment_images`` (contrast, gamma, inversion, blur, noise, collimation edges on network inputs in
[0, 1]). New anatomy (volumes) is ``anatomy.py``'s.

All randomness comes from the NumPy ``Generator`` passed in (deterministic given a seed).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


__all__ = ["augment_images"]


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
