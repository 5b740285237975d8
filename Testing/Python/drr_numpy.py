"""A tiny NumPy/SciPy ray-marching DRR, independent of the project's renderers (test helper).

Owns nothing of the library: it exists so that the MRML and view tests have a real X-ray-like image of a
real CT at a known ``Camera`` without depending on the rendering backends, and as an independent check of
the camera model (rays come from ``Camera.ray_directions_ras``, samples are looked up through
``CTVolume.ras_to_ijk``).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

from RayEmbRegistrationLib.camera import Camera
from RayEmbRegistrationLib.volume import CTVolume


def line_integral_drr(ct: CTVolume, camera: Camera, n_samples: int = 160) -> np.ndarray:
    """(H, W) float32 line integrals of linear attenuation (1/mm · mm) through ``ct`` seen by ``camera``.

    μ = 0.02 mm⁻¹ · max(0, 1 + HU/1000) (water = 0.02 mm⁻¹), sampled trilinearly at ``n_samples`` points per
    ray across the CT's bounding sphere.
    """
    W, H = camera.intrinsics.size
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    uv = np.c_[u.ravel(), v.ravel()]
    src = camera.source_ras
    dirs = camera.ray_directions_ras(uv)  # (H·W, 3)
    centre = ct.center_ras
    radius = float(np.max(np.linalg.norm(ct.corners_ras - centre, axis=1)))
    d_c = float(np.dot(centre - src, camera.principal_axis_ras))
    t = np.linspace(max(d_c - radius, 1.0), d_c + radius, n_samples)
    step = t[1] - t[0]
    mu = (0.02 * np.clip(1.0 + ct.hu / 1000.0, 0.0, None)).astype(np.float32)
    out = np.zeros(len(uv), dtype=np.float64)
    M = ct.ras_to_ijk
    for chunk in np.array_split(np.arange(len(uv)), max(1, len(uv) // 4096)):
        P = src + dirs[chunk, None, :] * t[None, :, None]  # (n, S, 3) RAS
        ijk = P.reshape(-1, 3) @ M[:3, :3].T + M[:3, 3]
        vals = map_coordinates(mu, ijk.T, order=1, mode="constant", cval=0.0)
        out[chunk] = vals.reshape(len(chunk), -1).sum(axis=1) * step
    return out.reshape(H, W).astype(np.float32)
