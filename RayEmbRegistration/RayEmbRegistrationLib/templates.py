"""Template views of a CT: their poses, DRRs and embeddings, built once per (CT, model) and cached.

Owns: template views of a CT (poses, DRRs, embeddings) and their on-disk cache.

Template views of a CT — their geometry (C-arm angle grid around the CT's bone centroid, DeepFluoro-like
detector at the network size), DRRs, embeddings and the embeddings sampled at points' projections (``(N, D, T)``),
with an optional on-disk cache keyed by a hash of the CT (voxels + affine), the model's sha256 and the settings.
(In memory, templates live as long as the ``pipeline.Registrar`` that built them.)

Shapes: ``Templates.poses`` (T, 4, 4) camera_from_world; ``images`` (T, S, S) line integrals;
``embeddings`` (T, D, S, S); ``point_embeddings(points (N, 3))`` → (N, D, T).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .camera import DEEPFLUORO_SDD_MM, Camera, Intrinsics, project_points

from .carm import carm_camera_from_world
from .volume import BONE_HU, CTVolume

__all__ = [
    "TEMPLATE_GRID_DEG",
    "TEMPLATE_SOURCE_TO_ISOCENTER_MM",
    "sample_embeddings",
    "ct_isocenter",
    "template_poses",
    "grid_angles",
    "inference_template_angles",
    "Templates",
    "build_templates",
    "get_templates",
    "ct_hash",
]

#: the 5 × 5 grid of C-arm angles (degrees) of the training templates; its corners (±20°) are the default
#: inference templates.
TEMPLATE_GRID_DEG = (-40.0, -20.0, 0.0, 20.0, 40.0)

# Mean source-to-isocentre distance of RAYEMB_SAMPLER (SDD − mean t_depth = 1020 − 250 mm).
TEMPLATE_SOURCE_TO_ISOCENTER_MM = DEEPFLUORO_SDD_MM - 250.0


def ct_isocenter(ct: CTVolume, threshold: float = BONE_HU) -> np.ndarray:
    """(3,) RAS centroid of the bone voxels (HU ≥ threshold); the volume centre if there is no bone."""
    mask = ct.hu >= threshold
    if mask.sum() < 10:
        return ct.center_ras
    ijk = np.argwhere(mask).mean(0)
    return ct.ijk_to_ras_points(ijk)[0]


def grid_angles(values_deg) -> list[tuple[float, float]]:
    """All (primary, secondary) pairs of a square grid of angles in degrees."""
    return [(float(a), float(b)) for a in values_deg for b in values_deg]


def inference_template_angles(n: int) -> list[tuple[float, float]]:
    """The fixed spread of ``n`` template views used when the query pose is unknown.

    1 → AP; 4 → the corners (±20°, ±20°) (default; measured best in ``docs/network.md``);
    5 → corners + AP; 9 → 3×3 grid {−20, 0, 20}²; 25 → 5×5 grid {−40 … 40}² (the training grid).
    """
    table = {
        1: [(0.0, 0.0)],
        4: [(-20.0, -20.0), (-20.0, 20.0), (20.0, -20.0), (20.0, 20.0)],
        5: [(0.0, 0.0), (-20.0, -20.0), (-20.0, 20.0), (20.0, -20.0), (20.0, 20.0)],
        9: grid_angles((-20.0, 0.0, 20.0)),
        25: grid_angles(TEMPLATE_GRID_DEG),
    }
    if n not in table:
        raise ValueError(f"n_templates must be one of {sorted(table)}, got {n}")
    return table[n]


def template_poses(angles, isocenter_ras, source_to_isocenter_mm: float = TEMPLATE_SOURCE_TO_ISOCENTER_MM) -> np.ndarray:
    """(T, 4, 4) camera_from_world for C-arm angles [(primary, secondary), ...] around ``isocenter_ras``."""
    return np.stack([carm_camera_from_world(a, b, source_to_isocenter_mm, isocenter_ras) for a, b in angles])


def ct_hash(ct: CTVolume) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(ct.hu).tobytes())
    h.update(np.asarray(ct.ijk_to_ras, dtype=np.float64).tobytes())
    return h.hexdigest()


@dataclass
class Templates:
    poses: np.ndarray  # (T, 4, 4)
    intrinsics: Intrinsics  # network-size detector
    images: np.ndarray  # (T, S, S) float32 line integrals
    embeddings: torch.Tensor  # (T, D, S, S) float32

    @property
    def projection_matrices(self) -> np.ndarray:
        """(T, 3, 4)."""
        return np.stack([Camera(self.intrinsics, p).projection_matrix for p in self.poses])

    def project(self, points_ras: np.ndarray) -> np.ndarray:
        """(N, 3) RAS → (T, N, 2) pixels in each template (NaN behind the source)."""
        return project_points(self.projection_matrices, points_ras)

    def point_embeddings(self, points_ras: np.ndarray) -> torch.Tensor:
        """(N, 3) RAS → (N, D, T) template embeddings at the points' projections (zero where not seen)."""
        uv = torch.as_tensor(self.project(points_ras), dtype=self.embeddings.dtype, device=self.embeddings.device)
        emb, _ = sample_embeddings(self.embeddings, uv)  # (T, N, D)
        return emb.permute(1, 2, 0).contiguous()


def build_templates(model, ct: CTVolume, angles, device="cpu", progress: Callable[[float, str], None] | None = None) -> Templates:
    """Render the template DRRs of ``ct`` at ``angles`` and embed them with ``model``."""
    from .render import DRRRenderer

    cfg = model.config
    S = cfg.image_size
    K = Intrinsics.deepfluoro(S)
    iso = ct_isocenter(ct)
    poses = template_poses(angles, iso)
    coarse = ct.resampled(cfg.voxel_mm) if cfg.voxel_mm and min(ct.spacing) < cfg.voxel_mm else ct
    r = DRRRenderer(coarse, K, bone_multiplier=cfg.template_bone_multiplier, device=device)
    imgs = []
    for i, p in enumerate(poses):
        if progress:
            progress(i / (2 * len(poses)), f"rendering template {i + 1}/{len(poses)}")
        imgs.append(r.render_numpy(p))
    imgs = np.stack(imgs).astype(np.float32)
    if progress:
        progress(0.5, "embedding templates")
    emb = model.embed(imgs).float()
    if progress:
        progress(1.0, "templates ready")
    return Templates(poses, K, imgs, emb)


def get_templates(model, ct: CTVolume, n_templates: int = 4, device="cpu", cache_dir=None,
                  progress: Callable[[float, str], None] | None = None) -> Templates:
    """Templates for (model, ct), from ``cache_dir`` (``templates_<key>.npz``) or freshly built (and then cached
    there, for weights with a known sha256)."""
    cfg = model.config
    angles = inference_template_angles(n_templates)
    settings = {"angles": angles, "cfg": cfg.to_dict(), "model": getattr(model, "sha256", None) or id(model)}
    key = hashlib.sha256((ct_hash(ct) + json.dumps(settings, sort_keys=True, default=str)).encode()).hexdigest()[:32]
    t = None
    path = Path(cache_dir) / f"templates_{key}.npz" if cache_dir else None
    if path is not None and path.exists():
        try:
            z = np.load(path)
            S = cfg.image_size
            t = Templates(z["poses"], Intrinsics.deepfluoro(S), z["images"], torch.from_numpy(z["embeddings"].astype(np.float32)).to(device))
        except Exception:
            t = None  # unreadable cache entry: rebuild
    if t is None:
        t = build_templates(model, ct, angles, device=device, progress=progress)
        if path is not None and getattr(model, "sha256", None):  # only cache weights with a known identity
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, poses=t.poses, images=t.images, embeddings=t.embeddings.cpu().numpy().astype(np.float16))
            tmp.replace(path)
    return t


def sample_embeddings(fmap: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinearly sample embedding maps at pixel positions.

    Args:
        fmap: (B, D, h, w) embedding maps.
        uv: (B, N, 2) pixel coordinates (u = column, v = row; integers = pixel centres) in those maps.

    Returns: ``(emb (B, N, D), inside (B, N) bool)``; points outside the image (or NaN) get zeros, inside False.
    """
    B, D, h, w = fmap.shape
    uv = uv.to(fmap.dtype)
    finite = torch.isfinite(uv).all(-1)
    uv = torch.where(finite[..., None], uv, torch.full_like(uv, -10.0))
    inside = finite & (uv[..., 0] >= -0.5) & (uv[..., 0] <= w - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] <= h - 0.5)
    grid = torch.stack([uv[..., 0] / (w - 1) * 2 - 1, uv[..., 1] / (h - 1) * 2 - 1], -1)  # align_corners=True
    emb = F.grid_sample(fmap, grid[:, :, None, :], mode="bilinear", padding_mode="border", align_corners=True)
    emb = emb[..., 0].transpose(1, 2)  # (B, N, D)
    return emb * inside[..., None].to(emb.dtype), inside
