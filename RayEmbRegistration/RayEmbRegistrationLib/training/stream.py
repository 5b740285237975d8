"""Training data made on the fly: DRRs rendered while training runs, never a fixed small set.

Owns: the two on-the-fly data sources ``train.train`` takes in place of ``data.ShardSet`` (both draw batches
exactly as it does):

* ``DRRStream`` (patient preparation: one CT) — a pool of query DRRs per CT that every training step renews (the
  oldest queries replaced by DRRs at new random poses), with the CT's template views rendered once;
* ``VariantStream`` (the general network: several CTs) — a few synthetic patients (``anatomy.random_anatomy``)
  live at a time, the oldest replaced by a new one every few steps, each with its own templates and queries;
  its state at step k depends only on (seed, k), so a resumed run continues bit for bit.

Poses (``DRRStream``): ``"clinical"`` (``carm.CLINICAL_SAMPLER`` about random bone voxels: LAO/RAO ±45°, cranial/caudal ±30°, roll
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
from ..volume import BONE_HU
from .anatomy import AnatomyRanges, random_anatomy
from .data import ShardSet
from .generate import projection_matrices, render_views

__all__ = ["DRRStream", "VariantStream", "STREAM_POSES"]

STREAM_POSES = ("clinical", "rayemb")


class DRRStream(ShardSet):
    """On-the-fly training data of ``cts`` (``CTVolume``s).

    Args:
        size: image size S (the network's). voxel_mm: the CT grid the DRRs are rendered from.
        pool: query DRRs kept per CT; renew: how many of them each ``batch`` call replaces with fresh ones.
        n_points: bone points per CT the batches draw from; template_bone_multiplier: as ``generate``.
        poses: one of ``STREAM_POSES``; seed: the initial pool; device: where the DRRs are rendered (``cuda``: on
        the GPU, nanodrr's kernel; the pool itself stays in host memory, as cached shards do).
        template_angles: the template views [(primary, secondary), ...] in degrees (default: the 5 × 5 training
        grid ``TEMPLATE_GRID_DEG``; ``templates.inference_template_angles(4)`` trains on exactly the views that
        detection uses for this CT).
    """

    def __init__(self, cts, size: int = 224, voxel_mm: float = 2.5, pool: int = 16, renew: int = 2,
                 n_points: int = 2048, template_bone_multiplier: float = 2.0, poses: str = "clinical",
                 seed: int = 0, device: str = "cpu", template_angles=None) -> None:
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
        angles = np.array(grid_angles(TEMPLATE_GRID_DEG) if template_angles is None else template_angles, float)
        for ct in cts:
            vol = ct.resampled(voxel_mm) if min(ct.spacing) < voxel_mm * 0.999 else ct
            tposes = template_poses(angles, ct_isocenter(vol))
            r = DRRRenderer(vol, self.K, bone_multiplier=template_bone_multiplier, device=device)
            with torch.no_grad():
                templates = r(torch.as_tensor(tposes), max_batch=5).float().cpu().numpy()
            shard = {"templates": templates, "template_angles": angles, "template_P": projection_matrices(self.K, tposes),
                     "queries": np.zeros((pool, self.size, self.size), np.float32),
                     "query_P": np.zeros((pool, 3, 4)), "points": vol.sample_bone_points(n_points, rng).astype(np.float32)}
            self.shards.append(shard)
            self._renderers.append(r)
            self._volumes.append(vol)
            self._next.append(0)
            for _ in range(pool):
                self._render_query(len(self.shards) - 1, rng)
        self.rendered = 0  # fresh query DRRs rendered since the initial pool

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

    def batch(self, rng: np.random.Generator, *args, **kwargs) -> dict:
        """Renew ``renew`` queries of a random CT, then draw a batch as ``ShardSet.batch``."""
        if "shard" not in kwargs and self.renew_n:
            i = int(rng.integers(len(self.shards)))
            for _ in range(self.renew_n):
                self._render_query(i, rng)
            self.rendered += self.renew_n
            kwargs["shard"] = i
        return super().batch(rng, *args, **kwargs)


class VariantStream(ShardSet):
    """On-the-fly data of several CTs (``CTVolume``s) with synthetic anatomy, deterministic in (seed, step).

    ``slots`` anatomy variants are live at a time; every ``variant_every`` training steps the oldest one is
    replaced by a new one. Generation g (g = 0 … slots − 1 at step 0, then one more every ``variant_every``
    steps) is made from CT ``g % len(cts)`` with ``np.random.default_rng([seed, 1, g])``: the plain CT with
    probability ``p_plain``, else ``random_anatomy(ct, rng, anatomy)``; it renders its ``template_angles`` views
    (bone multiplier ``template_bone_multiplier``, 770 mm) and ``queries`` query DRRs — clinical C-arm poses
    (``CLINICAL_SAMPLER`` about random bone voxels) with probability ``p_clinical``, else ``RAYEMB_SAMPLER``
    about the bone centroid — with a bone multiplier U(1, 10) each, and samples ``n_points`` bone points.
    ``at_step(k)`` (called by ``train`` before every step) makes the live set that of step k, rendering only the
    generations it lacks: a resumed run rebuilds exactly the state the interrupted one had.

    ``device``: where the DRRs are rendered (the live set stays in host memory). Cost on one CPU thread (224², 2.5 mm): ~1 s per DRR, ~2–3 s per synthetic anatomy, i.e. about
    (queries + templates + 3) s per ``variant_every`` steps.
    """

    def __init__(self, cts, size: int = 224, voxel_mm: float = 2.5, slots: int = 4, variant_every: int = 20,
                 queries: int = 12, template_angles=None, n_points: int = 2048, template_bone_multiplier: float = 2.0,
                 p_plain: float = 0.2, p_clinical: float = 0.7, anatomy: AnatomyRanges = AnatomyRanges(),
                 seed: int = 0, device: str = "cpu") -> None:
        if slots < 1 or variant_every < 1 or queries < 1:
            raise ValueError(f"slots, variant_every and queries must be ≥ 1; got {slots}, {variant_every}, {queries}")
        cts = list(cts)
        if not cts:
            raise ValueError("VariantStream needs at least one CT")
        self.size, self.slots, self.variant_every, self.n_queries = int(size), int(slots), int(variant_every), int(queries)
        self.max_shards, self.dirs, self.paths = None, [], []
        self.K = Intrinsics.deepfluoro(self.size)
        self.angles = np.array(template_angles if template_angles is not None else grid_angles((-20.0, 0.0, 20.0)))
        self.n_points, self.template_bone_multiplier = int(n_points), float(template_bone_multiplier)
        self.p_plain, self.p_clinical, self.anatomy, self.seed = float(p_plain), float(p_clinical), anatomy, int(seed)
        self.device = device
        self.base = [ct.resampled(voxel_mm) if min(ct.spacing) < voxel_mm * 0.999 else ct for ct in cts]
        self.shards: list[dict] = [{} for _ in range(self.slots)]
        self._gen: list[int | None] = [None] * self.slots
        self.rendered = 0  # DRRs rendered so far (templates + queries); nothing before the first ``at_step``

    def generations(self, step: int) -> range:
        """The generations live at training step ``step``."""
        newest = self.slots - 1 + int(step) // self.variant_every
        return range(newest - self.slots + 1, newest + 1)

    def at_step(self, step: int) -> None:
        for g in self.generations(step):
            j = g % self.slots
            if self._gen[j] != g:
                self.shards[j] = self._make(g)
                self._gen[j] = g

    def describe(self) -> dict:
        """The settings that determine the stream (stored in checkpoints; a resume must use the same)."""
        return {"kind": "VariantStream", "cts": [c.name for c in self.base], "size": self.size, "slots": self.slots,
                "variant_every": self.variant_every, "queries": self.n_queries, "templates": self.angles.tolist(),
                "n_points": self.n_points, "p_plain": self.p_plain, "p_clinical": self.p_clinical, "seed": self.seed}

    def _make(self, g: int) -> dict:
        rng = np.random.default_rng([self.seed, 1, g])
        ct = self.base[g % len(self.base)]
        vol = ct if rng.random() < self.p_plain else random_anatomy(ct, rng, self.anatomy)
        if int((vol.hu >= BONE_HU).sum()) < 50:  # the crop lost the bone: the plain CT instead
            vol = ct
        iso = ct_isocenter(vol)
        tposes = template_poses(self.angles, iso)
        qposes = np.stack([CLINICAL_SAMPLER.sample(1, vol.sample_bone_points(1, rng)[0], rng)[0]
                           if rng.random() < self.p_clinical else RAYEMB_SAMPLER.sample(1, iso, rng)[0]
                           for _ in range(self.n_queries)])
        mults = rng.uniform(1.0, 10.0, self.n_queries)
        points = vol.sample_bone_points(self.n_points, rng).astype(np.float32)
        templates, queries = render_views(vol, self.K, tposes, qposes, mults, self.template_bone_multiplier, self.device)
        self.rendered += len(tposes) + self.n_queries
        return {"templates": templates, "template_angles": self.angles, "template_P": projection_matrices(self.K, tposes),
                "queries": queries, "query_P": projection_matrices(self.K, qposes), "points": points, "generation": g,
                "ct": ct.name}

    def batch(self, rng: np.random.Generator, *args, **kwargs) -> dict:
        if self._gen[0] is None:  # not stepped yet (``train`` steps it; a resumed run starts at its step)
            self.at_step(0)
        return super().batch(rng, *args, **kwargs)
