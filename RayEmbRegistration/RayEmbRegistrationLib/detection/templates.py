"""Template views of a CT: their poses, DRRs and embeddings, built once per (CT, model) and cached.

Owns: template views of a CT (poses, DRRs, embeddings) and their on-disk cache.

Template views of a CT — their geometry (C-arm angle grid around the CT's bone centroid, DeepFluoro-like
detector at the network size), DRRs, embeddings and the embeddings sampled at points' projections (``(N, D, V)``),
with an optional on-disk cache keyed by a hash of the CT (voxels + affine), the model's sha256 and the settings.
(In memory, templates live as long as the ``pipeline.Registrar`` that built them.)

Tiles: at 770 mm the views' field is ~225 mm wide at the isocentre, so the views about the bone centroid miss the
ends of a long CT (the sample pelvis–abdomen CT: 12 % of its bone, the lumbar spine and lower ribs above S ≈ 300,
seen by none of the 4 views, so no X-ray of that region can be registered without tiles). ``template_isocenters`` adds tiles —
the same V views about further isocentres — until ``TILE_COVERAGE`` of the bone is seen by all V views of one
tile; each point takes its subspace from the tile that sees it best (``Templates.point_embeddings``), so a point's
subspace has V columns whatever the number of tiles. A CT that fits one tile keeps exactly the 4 views. Only a
network trained on the tiles uses them (``ModelConfig.template_tiles``: a prepared network, ``training.stream.
DRRStream(tiles=True)``): the general network scores the points of other tiles high and wrong (it is trained on
views centred on the bone centroid only).

Shapes: ``Templates.poses`` (T, 4, 4) camera_from_world, T = tiles × V; ``tiles`` (T,) tile of each view;
``images`` (T, S, S) line integrals; ``embeddings`` (T, D, S, S); ``point_embeddings(points (N, 3))`` → (N, D, V);
``template_isocenters`` → (tiles, 3) RAS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry.camera import DEEPFLUORO_SDD_MM, Camera, Intrinsics, project_points

from ..geometry.carm import carm_camera_from_world
from ..inputs.volume import BONE_HU, CTVolume

__all__ = [
    "TEMPLATE_GRID_DEG",
    "TEMPLATE_SOURCE_TO_ISOCENTER_MM",
    "sample_embeddings",
    "ct_isocenter",
    "template_isocenters",
    "tiled_template_poses",
    "first_best_tile",
    "TILE_COVERAGE",
    "MAX_TILES",
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


#: tiles are added until this share of the bone is seen by all views of one tile (``template_isocenters``) …
TILE_COVERAGE = 0.98
#: … up to this many tiles (4 × 4 views: 16 template DRRs of 96², ~0.2 s to render and embed)
MAX_TILES = 4
#: the bone points (and their generator's seed) on which coverage is judged
_TILE_POINTS, _TILE_SEED = 2000, 0


def _seen_by_all(points_ras: np.ndarray, angles, isocenter_ras, intrinsics: Intrinsics, margin_px: float) -> np.ndarray:
    """(N,) bool: the point projects inside every view of ``angles`` about ``isocenter_ras`` (``margin_px`` from the
    edge)."""
    P = np.stack([Camera(intrinsics, T).projection_matrix for T in template_poses(angles, isocenter_ras)])
    uv = project_points(P, points_ras)  # (V, N, 2)
    lo, hi = margin_px, np.array([intrinsics.width, intrinsics.height]) - margin_px
    return (np.isfinite(uv).all(-1) & (uv >= lo).all(-1) & (uv <= hi).all(-1)).all(0)


def template_isocenters(ct: CTVolume, angles, coverage: float = TILE_COVERAGE, max_tiles: int = MAX_TILES) -> np.ndarray:
    """(K, 3) RAS isocentres of the template tiles of ``ct`` for the views ``angles``: the bone centroid
    (``ct_isocenter``), then, while less than ``coverage`` of the bone (``_TILE_POINTS`` voxels drawn with seed
    ``_TILE_SEED``) is seen by all views of some tile, the centre of the densest cluster of the bone not yet seen —
    the mean of the unseen points within 0.4 × the views' field (at the isocentre) of the unseen point with the most
    such neighbours — as long as that tile sees at least a quarter of what is missing. Deterministic for a CT."""
    iso = ct_isocenter(ct)
    if int(ct.bone_mask().sum()) < 10:
        return iso[None]
    K = Intrinsics.deepfluoro(64)
    margin = 1.0  # px of 64: as training keeps its points (``ShardSet._inside``) 1 px inside at its own size
    pts = ct.sample_bone_points(_TILE_POINTS, np.random.default_rng(_TILE_SEED))
    field = K.width * K.pixel_spacing_mm[0] * TEMPLATE_SOURCE_TO_ISOCENTER_MM / K.source_to_detector_mm  # ~225 mm
    radius = 0.4 * field
    centres = [iso]
    covered = _seen_by_all(pts, angles, iso, K, margin)
    while len(centres) < max_tiles and covered.mean() < coverage:
        rest = pts[~covered]
        d = np.linalg.norm(rest[:, None] - rest[None], axis=-1)
        near = d < radius
        c = rest[near[int(np.argmax(near.sum(1)))]].mean(0)
        new = _seen_by_all(pts, angles, c, K, margin) & ~covered
        if new.sum() < 0.25 * (~covered).sum() and new.mean() < (1.0 - coverage):
            break
        centres.append(c)
        covered |= new
    return np.stack(centres)


def first_best_tile(seen: np.ndarray, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tile a point takes its subspace from (``Templates.point_embeddings``; training draws tiles by the same
    rule, ``training.data.ShardSet``): ``seen`` (T, N) bool — view t sees point n — and ``tiles`` (T,) the tile of
    each view → ((N,) the first tile among those with the most views seeing the point, (N,) how many of its views
    do)."""
    counts = np.stack([seen[tiles == k].sum(0) for k in range(int(tiles.max()) + 1)])  # (K, N)
    best = np.argmax(counts, axis=0)  # argmax: the first of equal counts
    return best, counts[best, np.arange(counts.shape[1])]


def tiled_template_poses(angles, isocenters) -> tuple[np.ndarray, np.ndarray]:
    """(T, 4, 4) camera_from_world of the views ``angles`` about each of ``isocenters`` (K, 3), tile by tile, and
    (T,) the tile of each view (T = K × len(angles))."""
    iso = np.atleast_2d(np.asarray(isocenters, float))
    poses = np.concatenate([template_poses(angles, c) for c in iso])
    return poses, np.repeat(np.arange(len(iso)), len(angles))


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
    tiles: np.ndarray | None = None  # (T,) int: the tile of each view (None: one tile)

    def __post_init__(self) -> None:
        if self.tiles is None:
            self.tiles = np.zeros(len(self.poses), int)
        self.tiles = np.asarray(self.tiles, int)
        n = np.bincount(self.tiles)
        if len(self.tiles) != len(self.poses) or (n != n[0]).any():
            raise ValueError(f"every template tile must have the same views; got tiles {self.tiles.tolist()}")

    @property
    def n_tiles(self) -> int:
        return int(self.tiles.max()) + 1

    @property
    def projection_matrices(self) -> np.ndarray:
        """(T, 3, 4)."""
        return np.stack([Camera(self.intrinsics, p).projection_matrix for p in self.poses])

    def project(self, points_ras: np.ndarray) -> np.ndarray:
        """(N, 3) RAS → (T, N, 2) pixels in each template (NaN behind the source)."""
        return project_points(self.projection_matrices, points_ras)

    def _tile_of(self, uv: np.ndarray) -> np.ndarray:
        """(T, N, 2) projections → (N,) the tile each point takes its subspace from (``first_best_tile``; a view sees
        a point on its image, as ``sample_embeddings`` samples it)."""
        return first_best_tile(self.intrinsics.contains_pixels(uv), self.tiles)[0]

    def point_tiles(self, points_ras: np.ndarray) -> np.ndarray:
        """(N,) the tile each point takes its subspace from: the first tile among those whose views see it most."""
        pts = np.asarray(points_ras, float).reshape(-1, 3)
        return np.zeros(len(pts), int) if self.n_tiles == 1 else self._tile_of(self.project(pts))

    def point_embeddings(self, points_ras: np.ndarray) -> torch.Tensor:
        """(N, 3) RAS → (N, D, V) the embeddings of each point's tile's V views at its projections (zero where not
        seen); with one tile, V = T."""
        pts = np.asarray(points_ras, float).reshape(-1, 3)
        uv_np = self.project(pts)
        uv = torch.as_tensor(uv_np, dtype=self.embeddings.dtype, device=self.embeddings.device)
        emb, _ = sample_embeddings(self.embeddings, uv)  # (T, N, D)
        if self.n_tiles == 1:
            return emb.permute(1, 2, 0).contiguous()
        views = np.stack([np.flatnonzero(self.tiles == k) for k in range(self.n_tiles)])  # (K, V)
        idx = torch.as_tensor(views[self._tile_of(uv_np)], device=emb.device)  # (N, V)
        n = torch.arange(len(pts), device=emb.device)[:, None]
        return emb[idx, n].permute(0, 2, 1).contiguous()  # (N, V, D) → (N, D, V)


def build_templates(model, ct: CTVolume, angles, device="cpu", progress: Callable[[float, str], None] | None = None) -> Templates:
    """Render the template DRRs of ``ct`` at ``angles`` — about each of its tiles' isocentres
    (``template_isocenters``) for a network trained on them (``ModelConfig.template_tiles``), else about the bone
    centroid — and embed them with ``model``."""
    from ..rendering.render import DRRRenderer

    cfg = model.config
    S = cfg.image_size
    K = Intrinsics.deepfluoro(S)
    isocenters = template_isocenters(ct, angles) if cfg.template_tiles else ct_isocenter(ct)[None]
    poses, tiles = tiled_template_poses(angles, isocenters)
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
    return Templates(poses, K, imgs, emb, tiles)


def get_templates(model, ct: CTVolume, n_templates: int = 4, device="cpu", cache_dir=None,
                  progress: Callable[[float, str], None] | None = None) -> Templates:
    """Templates for (model, ct), from ``cache_dir`` (``templates_<key>.npz``) or freshly built (and then cached
    there, for weights with a known sha256)."""
    cfg = model.config
    angles = inference_template_angles(n_templates)
    cfg_d = cfg.to_dict()
    settings = {"angles": angles, "cfg": cfg_d, "model": getattr(model, "sha256", None) or id(model)}
    if cfg.template_tiles:  # (only then: the caches of untiled networks keep their keys)
        settings["tiles"] = [TILE_COVERAGE, MAX_TILES, _TILE_POINTS, _TILE_SEED]
    else:
        cfg_d.pop("template_tiles")
    key = hashlib.sha256((ct_hash(ct) + json.dumps(settings, sort_keys=True, default=str)).encode()).hexdigest()[:32]
    t = None
    path = Path(cache_dir) / f"templates_{key}.npz" if cache_dir else None
    if path is not None and path.exists():
        try:
            z = np.load(path)
            S = cfg.image_size
            t = Templates(z["poses"], Intrinsics.deepfluoro(S), z["images"],
                          torch.from_numpy(z["embeddings"].astype(np.float32)).to(device),
                          z["tiles"] if "tiles" in z.files else None)  # a cache without tiles: one tile
        except Exception:
            t = None  # unreadable cache entry: rebuild
    if t is None:
        t = build_templates(model, ct, angles, device=device, progress=progress)
        if path is not None and getattr(model, "sha256", None):  # only cache weights with a known identity
            tmp = path.with_suffix(".tmp.npz")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(tmp, poses=t.poses, images=t.images, embeddings=t.embeddings.cpu().numpy().astype(np.float16),
                         tiles=t.tiles)
                tmp.replace(path)
            except OSError:  # a read-only cache (a shared prepared folder): the templates are used uncached
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
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
