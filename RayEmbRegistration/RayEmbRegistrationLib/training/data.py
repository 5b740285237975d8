"""Training batches from the shards written by ``generate`` (see its docstring for the layout).

Owns: training batches drawn from ``generate``'s shards.

Loading shards into memory and drawing (queries, templates, visible bone points) batches with a NumPy
``Generator`` (deterministic given the generator's seed).

Batch (dict of tensors / arrays): ``query`` (B, S, S) line integrals, ``templates`` (T, S, S) (shared by the B
queries: same anatomy variant; from a shard with ``template_tiles`` — ``stream.DRRStream`` of a CT whose
detection uses several template tiles — the views of one tile), ``uv_query`` (B, N, 2) and ``uv_templates`` (B, T, N, 2) pixels at size S
(integers = pixel centres), ``valid`` (B, N) bool (padding is False); with ``n_outside`` > 0 also points that
every template sees but the query does not (outside its image or behind its source): ``uv_templates_out``
(B, T, M, 2) and ``valid_out`` (B, M).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..geometry.camera import project_points
from ..detection.templates import first_best_tile

__all__ = ["ShardSet"]




class ShardSet:
    """All shards of one or more ``generate`` output folders, in memory."""

    def __init__(self, dirs, max_shards: int | None = None) -> None:
        if isinstance(dirs, (str, Path)):
            dirs = [dirs]
        paths = sorted(p for d in dirs for p in Path(d).glob("shard_*.npz") if not p.name.endswith(".tmp.npz"))
        if max_shards:
            paths = paths[:max_shards]
        if not paths:
            raise ValueError(f"no training shards (shard_*.npz) in {list(map(str, dirs))}; run 'rayemb generate' first.")
        self.dirs = [Path(d) for d in dirs]
        self.max_shards = max_shards
        self.paths: list[Path] = []
        self.shards: list[dict] = []
        self._load(paths)
        self.size = self.shards[0]["queries"].shape[-1]

    def _load(self, paths) -> None:
        for p in paths:
            z = np.load(p)
            self.shards.append({k: z[k] for k in ("templates", "template_angles", "template_P", "queries", "query_P", "points")})
            self.paths.append(p)

    def refresh(self) -> int:
        """Load shards that appeared since (a ``generate`` still running beside training); returns how many."""
        if self.max_shards and len(self.paths) >= self.max_shards:
            return 0
        have = set(self.paths)
        new = sorted(p for d in self.dirs for p in d.glob("shard_*.npz") if not p.name.endswith(".tmp.npz") and p not in have)
        self._load(new)
        return len(new)

    def at_step(self, step: int) -> None:
        """Make the data that of training step ``step`` (nothing to do for cached shards; see ``stream.py``)."""

    def close(self) -> None:
        """Release what the data source holds besides memory (nothing for cached shards; ``stream.py``'s render
        process)."""

    def __len__(self) -> int:
        return sum(len(s["queries"]) for s in self.shards)

    @staticmethod
    def _inside(uv: np.ndarray, S: int, margin: float = 1.0) -> np.ndarray:
        return np.isfinite(uv).all(-1) & (uv >= margin).all(-1) & (uv <= S - 1 - margin).all(-1)

    def template_indices(self, shard: int, angles) -> np.ndarray:
        a = self.shards[shard]["template_angles"]
        return np.array([int(np.argmin(np.abs(a - np.asarray(x)).sum(1))) for x in angles])

    def _tile_views(self, s: dict, X: np.ndarray, q_idx, rng: np.random.Generator) -> np.ndarray:
        """The views of one template tile (``templates.template_isocenters``) for a batch of queries ``q_idx``: tile
        k drawn with probability ∝ the points the queries show that detection takes from tile k
        (``templates.first_best_tile``) and all of its views see (the points a batch trains on), so the tiles are
        trained as detection uses them."""
        tiles, S = s["template_tiles"], self.size
        K = int(tiles.max()) + 1
        owner = s.get("point_tile")  # (M,) that tile, -1: no tile's views all see the point (fixed for a shard)
        if owner is None:
            tile, n_seen = first_best_tile(self._inside(project_points(s["template_P"], X), S), tiles)
            owner = s["point_tile"] = np.where(n_seen == int(np.sum(tiles == 0)), tile, -1)
        shown = np.zeros(len(X), int)
        for q in q_idx:
            shown += self._inside(project_points(s["query_P"][q], X), S)
        counts = np.array([shown[owner == k].sum() for k in range(K)], float)
        k = int(rng.choice(K, p=counts / counts.sum())) if counts.sum() > 0 else int(rng.integers(K))
        return rng.permutation(np.flatnonzero(tiles == k))

    def batch(self, rng: np.random.Generator, n_queries: int = 4, n_templates: int = 4, n_points: int = 40,
              shard: int | None = None, query_idx=None, template_idx=None, n_outside: int = 0) -> dict:
        s_i = int(rng.integers(len(self.shards))) if shard is None else shard
        s = self.shards[s_i]
        S = self.size
        q_idx = rng.choice(len(s["queries"]), min(n_queries, len(s["queries"])), replace=False) if query_idx is None else np.asarray(query_idx)
        X = s["points"].astype(np.float64)
        tiles = s.get("template_tiles")
        if template_idx is not None:
            t_idx = np.asarray(template_idx)
        elif tiles is not None and int(tiles.max()) > 0 and n_templates == int(np.sum(tiles == 0)):
            t_idx = self._tile_views(s, X, q_idx, rng)
        else:
            t_idx = rng.choice(len(s["templates"]), n_templates, replace=False)
        uv_t_all = project_points(s["template_P"][t_idx], X)  # (T, M, 2)
        seen_t = self._inside(uv_t_all, S).all(0)
        B = len(q_idx)
        uv_q = np.full((B, n_points, 2), np.nan)
        uv_t = np.full((B, n_templates, n_points, 2), np.nan)
        valid = np.zeros((B, n_points), bool)
        uv_t_out = np.full((B, n_templates, n_outside, 2), np.nan)
        valid_out = np.zeros((B, n_outside), bool)
        for b, q in enumerate(q_idx):
            uvq = project_points(s["query_P"][q], X)
            ok = np.flatnonzero(seen_t & self._inside(uvq, S))
            pick = rng.choice(ok, min(n_points, len(ok)), replace=False) if len(ok) else ok
            k = len(pick)
            uv_q[b, :k] = uvq[pick]
            uv_t[b, :, :k] = uv_t_all[:, pick]
            valid[b, :k] = True
            if n_outside:  # (no draw otherwise: batches without them stay exactly as they were)
                # clearly outside (a margin of 4 px, so that no edge point is taught as invisible)
                far = ~self._inside(uvq, S, margin=-4.0)
                out = np.flatnonzero(seen_t & far)
                pick = rng.choice(out, min(n_outside, len(out)), replace=False) if len(out) else out
                uv_t_out[b, :, : len(pick)] = uv_t_all[:, pick]
                valid_out[b, : len(pick)] = True
        return dict(
            query=torch.from_numpy(s["queries"][q_idx].astype(np.float32)),
            templates=torch.from_numpy(s["templates"][t_idx].astype(np.float32)),
            uv_query=torch.from_numpy(uv_q), uv_templates=torch.from_numpy(uv_t), valid=torch.from_numpy(valid),
            uv_templates_out=torch.from_numpy(uv_t_out), valid_out=torch.from_numpy(valid_out),
            shard=s_i, query_idx=q_idx, template_idx=t_idx,
        )
