"""Training data made on the fly: query DRRs of the CT(s) rendered while training runs, never a fixed small set.

Owns: ``DRRStream`` — a pool of query DRRs per CT that every training step renews (the oldest queries replaced by
DRRs at new random poses), with the CT's template views rendered once; it draws batches exactly as
``data.ShardSet`` does, so ``train.train`` takes either.

Poses: ``"clinical"`` (``carm.CLINICAL_SAMPLER`` about random bone voxels: LAO/RAO ±45°, cranial/caudal ±30°, roll
±20°, source-to-isocentre 450–900 mm) or ``"rayemb"`` (``RAYEMB_SAMPLER`` about the bone centroid); bone multiplier
U(1, 10) per query, as ``generate``. Deterministic given the step's generator; the pool itself is not part of a
checkpoint (a resumed run renews it from the resumed step on).
Shapes: queries and templates (·, S, S) float32 line integrals; projection matrices (·, 3, 4); points (M, 3) RAS.
"""

from __future__ import annotations

import numpy as np
import torch

from ..camera import Camera, Intrinsics
from ..carm import CLINICAL_SAMPLER, RAYEMB_SAMPLER
from ..templates import TEMPLATE_GRID_DEG, ct_isocenter, grid_angles, template_poses
from ..volume import CTVolume
from .data import ShardSet

__all__ = ["DRRStream", "STREAM_POSES"]

STREAM_POSES = ("clinical", "rayemb")


class DRRStream(ShardSet):
    """On-the-fly training data of ``cts`` (``CTVolume``s).

    Args:
        size: image size S (the network's). voxel_mm: the CT grid the DRRs are rendered from.
        pool: query DRRs kept per CT; renew: how many of them each ``batch`` call replaces with fresh ones.
        n_points: bone points per CT the batches draw from; template_bone_multiplier: as ``generate``.
        poses: one of ``STREAM_POSES``; seed: the initial pool.
    """

    def __init__(self, cts, size: int = 224, voxel_mm: float = 2.5, pool: int = 16, renew: int = 2,
                 n_points: int = 2048, template_bone_multiplier: float = 2.0, poses: str = "clinical",
                 seed: int = 0) -> None:
        from ..render import DRRRenderer

        if poses not in STREAM_POSES:
            raise ValueError(f"poses must be one of {STREAM_POSES}, got {poses!r}")
        if pool < 1 or not 0 <= renew <= pool:
            raise ValueError(f"pool must be ≥ 1 and renew in [0, pool]; got pool {pool}, renew {renew}")
        self.size, self.poses, self.renew_n = int(size), poses, int(renew)
        self.max_shards, self.dirs, self.paths = None, [], []
        self.K = Intrinsics.deepfluoro(self.size)
        rng = np.random.default_rng(seed)
        self.shards, self._renderers, self._volumes, self._next = [], [], [], []
        angles = np.array(grid_angles(TEMPLATE_GRID_DEG))
        for ct in cts:
            vol = ct.resampled(voxel_mm) if min(ct.spacing) < voxel_mm * 0.999 else ct
            tposes = template_poses(angles, ct_isocenter(vol))
            r = DRRRenderer(vol, self.K, bone_multiplier=template_bone_multiplier)
            with torch.no_grad():
                templates = r(torch.as_tensor(tposes), max_batch=5).numpy().astype(np.float32)
            shard = {"templates": templates, "template_angles": angles, "template_P": self._P(tposes),
                     "queries": np.zeros((pool, self.size, self.size), np.float32),
                     "query_P": np.zeros((pool, 3, 4)), "points": vol.sample_bone_points(n_points, rng).astype(np.float32)}
            self.shards.append(shard)
            self._renderers.append(r)
            self._volumes.append(vol)
            self._next.append(0)
            for _ in range(pool):
                self._render_query(len(self.shards) - 1, rng)
        self.rendered = 0  # fresh query DRRs rendered since the initial pool

    def _P(self, poses) -> np.ndarray:
        return np.stack([Camera(self.K, p).projection_matrix for p in poses])

    def _render_query(self, i: int, rng: np.random.Generator) -> None:
        """Replace the oldest query of CT ``i`` by a DRR at a new random pose."""
        vol, r, shard = self._volumes[i], self._renderers[i], self.shards[i]
        if self.poses == "clinical":
            T = CLINICAL_SAMPLER.sample(1, vol.sample_bone_points(1, rng)[0], rng)[0]
        else:
            T = RAYEMB_SAMPLER.sample(1, ct_isocenter(vol), rng)[0]
        r.set_bone_multiplier(float(rng.uniform(1.0, 10.0)))
        k = self._next[i]
        with torch.no_grad():
            shard["queries"][k] = r.render_numpy(T)
        shard["query_P"][k] = Camera(self.K, T).projection_matrix
        self._next[i] = (k + 1) % len(shard["queries"])

    def refresh(self) -> int:
        return 0

    def batch(self, rng: np.random.Generator, *args, **kwargs) -> dict:
        """Renew ``renew`` queries of a random CT, then draw a batch as ``ShardSet.batch``."""
        if "shard" not in kwargs and self.renew_n:
            i = int(rng.integers(len(self.shards)))
            for _ in range(self.renew_n):
                self._render_query(i, rng)
            self.rendered += self.renew_n
            kwargs["shard"] = i
        return super().batch(rng, *args, **kwargs)
