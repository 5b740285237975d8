"""Training data made on the fly: DRRs rendered while training runs, never a fixed small set.

Owns: the two on-the-fly data sources ``train.train`` takes in place of ``data.ShardSet`` (both draw batches
exactly as it does):

* ``DRRStream`` (patient preparation: one CT) — a pool of query DRRs per CT that every training step renews (the
  oldest queries replaced by DRRs at new random poses), with the CT's template views rendered once;
* ``VariantStream`` (the general network: several CTs) — a few synthetic patients (``anatomy.random_anatomy``)
  live at a time, the oldest replaced by a new one every few steps, each with its own templates and queries;
  its state at step k depends only on (seed, k), so a resumed run continues bit for bit.

Both can render in a separate process (``workers=1``, CPU): what step k (generation g) needs depends only on the
seed and k (g), so a process one core away renders the coming ones while the network trains on the others, and the
data are the same as rendering in the training process.

Poses (``DRRStream``): ``"clinical"`` (``carm.CLINICAL_SAMPLER`` about random bone voxels: LAO/RAO ±45°, cranial/caudal ±30°, roll
±20°, source-to-isocentre 450–900 mm) or ``"rayemb"`` (``RAYEMB_SAMPLER`` about the bone centroid); bone multiplier
U(1, 10) per query, as ``generate``. Deterministic given the step's generator; the pool itself is not part of a
checkpoint (a resumed run renews it from the resumed step on).
Shapes: queries and templates (·, S, S) float32 line integrals; projection matrices (·, 3, 4); points (M, 3) RAS.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ..geometry.camera import Camera, Intrinsics
from ..geometry.carm import CLINICAL_SAMPLER, RAYEMB_SAMPLER
from ..detection.templates import (TEMPLATE_GRID_DEG, ct_isocenter, grid_angles, template_isocenters, template_poses,
                         tiled_template_poses)
from ..inputs.volume import BONE_HU
from .anatomy import AnatomyRanges, random_anatomy
from .data import ShardSet
from .generate import projection_matrices, render_views

__all__ = ["DRRStream", "VariantStream", "STREAM_POSES", "query_appearance"]

STREAM_POSES = ("clinical", "rayemb")
#: the renderer of the query DRRs (``render.DRRRenderer``): Joseph's method, 5 ms per 96² DRR on one thread against
#: nanodrr's 116 ms (``benchmarks/bench_render.py --backends nanodrr joseph --sizes 96 --threads 1``), so that
#: rendering is a few per cent of a preparation step instead of more than the whole step; the images correlate to 0.9999
#: (``test_render.py``). Templates stay nanodrr's, as at inference (``templates.py``).
QUERY_BACKEND = "joseph"


class _RenderProcessOwner:
    """What a stream with an optional render process (``_AheadWorker`` in ``_worker``) does to stop it."""

    _worker = None

    def close(self) -> None:
        """Stop the render process (if any); the stream then renders in this process."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class DRRStream(_RenderProcessOwner, ShardSet):
    """On-the-fly training data of ``cts`` (``CTVolume``s).

    Args:
        size: image size S (the network's). voxel_mm: the CT grid the DRRs are rendered from.
        pool: query DRRs kept per CT; renew: how many of them each training step (``at_step``) replaces with fresh
            ones.
        n_points: bone points per CT the batches draw from; template_bone_multiplier: as ``generate``.
        poses: one of ``STREAM_POSES``; seed: the initial pool and the renewals; device: where the DRRs are rendered
        (``cuda``: on the GPU, nanodrr's kernel; the pool itself stays in host memory, as cached shards do).
        template_angles: the template views [(primary, secondary), ...] in degrees (default: the 5 × 5 training
        grid ``TEMPLATE_GRID_DEG`` about the bone centroid; ``templates.inference_template_angles(4)`` trains on
        exactly the views that detection uses for this CT).
        tiles: with ``template_angles``, those views about each of the CT's template tiles' isocentres
        (``templates.template_isocenters``), as detection uses them for a network trained so
        (``ModelConfig.template_tiles``; ``train`` marks the network): a shard of a CT with several tiles then has
        ``template_tiles`` and ``ShardSet.batch`` draws one tile's views per batch.
        workers: 0 = render in the training process; 1 = a separate process (one CPU thread) renders the renewals
            of the coming steps while the network trains (CPU only: at 96² rendering is half of a one-thread
            step, ``benchmarks/bench_prepare.py``). The data are the same either way: the renewal of step k depends
            only on (seed, k) (``renewal_views``). Call ``close()`` when done (it stops the process).
        appearance: the share of query DRRs made in another X-ray appearance family than the project's
            (``rendering.appearance``: ``diffdrr`` or ``physics``, half each, rendered with Joseph's projector),
            drawn per query from (seed, step) (``query_appearance``); 0 = the project's DRRs only.

    ``at_step(k)`` (``train`` calls it before every step) renews the pool for step k — one CT (drawn from (seed,
    k)), ``renew`` queries — and ``batch`` then draws from that CT. Without ``at_step`` nothing is renewed.
    """

    def __init__(self, cts, size: int = 224, voxel_mm: float = 2.5, pool: int = 16, renew: int = 2,
                 n_points: int = 2048, template_bone_multiplier: float = 2.0, poses: str = "clinical",
                 seed: int = 0, device: str = "cpu", template_angles=None, workers: int = 0, tiles: bool = False,
                 appearance: float = 0.0) -> None:
        if poses not in STREAM_POSES:
            raise ValueError(f"poses must be one of {STREAM_POSES}, got {poses!r}")
        if pool < 1 or not 0 <= renew <= pool:
            raise ValueError(f"pool must be ≥ 1 and renew in [0, pool]; got pool {pool}, renew {renew}")
        if workers not in (0, 1):
            raise ValueError(f"workers must be 0 (render in this process) or 1 (a render process); got {workers}")
        if not 0.0 <= float(appearance) <= 1.0:
            raise ValueError(f"appearance is a share in [0, 1]; got {appearance}")
        self.size, self.poses, self.renew_n, self.seed = int(size), poses, int(renew), int(seed)
        self.appearance = float(appearance)
        self.template_tiles = bool(tiles) and template_angles is not None  # (``train`` marks the network so)
        self.max_shards, self.dirs, self.paths = None, [], []
        self.K = Intrinsics.deepfluoro(self.size)
        rng = np.random.default_rng(seed)
        self.shards, self._next = [], []
        angles = np.array(grid_angles(TEMPLATE_GRID_DEG) if template_angles is None else template_angles, float)
        self._volumes = [ct.resampled(voxel_mm) if min(ct.spacing) < voxel_mm * 0.999 else ct for ct in cts]
        self._renewals = _QueryRenewals(self._volumes, self.K, poses, self.seed, self.renew_n, device, self.appearance)
        self._worker = _AheadWorker(self._renewals) if workers and self.renew_n and not str(device).startswith("cuda") \
            else None
        if self._worker is not None:
            self._worker.start(0)  # it starts up (imports, renderers) while the initial pool renders here
        for i, (ct, vol) in enumerate(zip(cts, self._volumes)):
            if not self.template_tiles:
                tposes, tile_of = template_poses(angles, ct_isocenter(vol)), None
            else:  # the views detection uses, tiles included (computed on the CT itself, as detection does)
                tposes, tile_of = tiled_template_poses(angles, template_isocenters(ct, angles))
                angles_all = np.concatenate([angles] * (int(tile_of.max()) + 1))
            r = self._renewals.renderer(i)  # (this process's renderer of the CT: templates, initial pool, renewals)
            r.set_bone_multiplier(template_bone_multiplier)
            with torch.no_grad():
                templates = r(torch.as_tensor(tposes), max_batch=5).float().cpu().numpy()
            shard = {"templates": templates, "template_angles": angles if tile_of is None else angles_all,
                     "template_P": projection_matrices(self.K, tposes),
                     "queries": np.zeros((pool, self.size, self.size), np.float32),
                     "query_P": np.zeros((pool, 3, 4)), "points": vol.sample_bone_points(n_points, rng).astype(np.float32)}
            if tile_of is not None and tile_of.max() > 0:
                shard["template_tiles"] = tile_of
            self.shards.append(shard)
            self._next.append(0)
            for k in range(pool):
                T = _sample_pose(vol, poses, rng)
                img = render_query(r, T, float(rng.uniform(1.0, 10.0)))
                self._store(i, T, query_appearance(vol, self.K, T, img, self.appearance, (self.seed, 4, i, k)))
        self.rendered = 0  # fresh query DRRs rendered since the initial pool
        self._step: int | None = None  # the step whose renewal the pool holds
        self._current: int | None = None  # the CT renewed for that step (the one ``batch`` draws from)

    def _store(self, i: int, T: np.ndarray, image: np.ndarray) -> None:
        """Replace the oldest query of CT ``i`` by ``image``, the DRR at pose ``T``."""
        shard, k = self.shards[i], self._next[i]
        shard["queries"][k] = image
        shard["query_P"][k] = Camera(self.K, T).projection_matrix
        self._next[i] = (k + 1) % len(shard["queries"])

    def at_step(self, step: int) -> None:
        """Renew the pool for training step ``step`` (once per step; rendered here or taken from the worker)."""
        step = int(step)
        if not self.renew_n or self._step == step:
            return
        i, poses, images = (self._worker.get if self._worker is not None else self._renewals)(step)
        for T, img in zip(poses, images):
            self._store(i, T, img)
        self.rendered += len(images)
        self._step, self._current = step, i

    def batch(self, rng: np.random.Generator, *args, **kwargs) -> dict:
        """A batch as ``ShardSet.batch``, from the CT renewed by the last ``at_step`` (unless ``shard`` is given)."""
        if "shard" not in kwargs and self._current is not None:
            kwargs["shard"] = self._current
        return super().batch(rng, *args, **kwargs)

    def describe(self) -> dict:
        d = {"kind": "DRRStream", "cts": [v.name for v in self._volumes], "size": self.size, "poses": self.poses,
             "pool": len(self.shards[0]["queries"]), "renew": self.renew_n, "seed": self.seed}
        if self.appearance:  # no key: the project's DRRs only, as checkpoints without it read
            d["appearance"] = self.appearance
        return {**d, "template_tiles": True} if self.template_tiles else d  # no key: untiled, as checkpoints without it read


def _sample_pose(vol, poses: str, rng: np.random.Generator) -> np.ndarray:
    """A random query pose ``camera_from_world`` (4, 4) of ``vol``: clinical C-arm use about a random bone voxel, or
    ``RAYEMB_SAMPLER`` about the bone centroid."""
    if poses == "clinical":
        return CLINICAL_SAMPLER.sample(1, vol.sample_bone_points(1, rng)[0], rng)[0]
    return RAYEMB_SAMPLER.sample(1, ct_isocenter(vol), rng)[0]


def renewal_views(volumes, poses: str, seed: int, step: int, renew: int) -> tuple[int, list[tuple[np.ndarray, float]]]:
    """What ``DRRStream`` renders for training step ``step``: (the CT index, ``renew`` × (pose, bone multiplier
    U(1, 10))), drawn from ``default_rng([seed, 2, step])`` alone (so a render process and the training process
    agree, and a resumed run renders what the interrupted one would have)."""
    rng = np.random.default_rng([int(seed), 2, int(step)])
    i = int(rng.integers(len(volumes)))
    views = []
    for _ in range(int(renew)):
        T = _sample_pose(volumes[i], poses, rng)
        views.append((T, float(rng.uniform(1.0, 10.0))))
    return i, views


def query_appearance(vol, K, T: np.ndarray, image: np.ndarray, share: float, key: tuple) -> np.ndarray:
    """``image`` (the project's query DRR at ``T``), or — with probability ``share``, drawn from
    ``default_rng(key)`` alone — the same view of ``vol`` made in the ``diffdrr`` or the ``physics`` appearance
    family (``rendering.appearance.simulate`` with Joseph's projector, its parameters from the same generator)."""
    if share <= 0:
        return image
    rng = np.random.default_rng([int(x) for x in key])
    if rng.random() >= share:
        return image
    from ..rendering.appearance import simulate

    family = "diffdrr" if rng.random() < 0.5 else "physics"
    return simulate(vol, K, T, family, rng=rng, backend=QUERY_BACKEND)[0].astype(np.float32)


def render_query(renderer, T: np.ndarray, bone_multiplier: float) -> np.ndarray:
    """The (S, S) float32 query DRR at pose ``T`` with this bone multiplier."""
    renderer.set_bone_multiplier(bone_multiplier)
    with torch.no_grad():
        return renderer.render_numpy(T).astype(np.float32)


class _QueryRenewals:
    """``DRRStream``'s renewals as a function of the step (picklable; its renderers are built on first use, in the
    process that renders): ``step`` → (CT index, poses, images)."""

    def __init__(self, volumes, K, poses: str, seed: int, renew: int, device: str = "cpu", appearance: float = 0.0) -> None:
        self.volumes, self.K, self.poses, self.seed, self.renew = volumes, K, poses, int(seed), int(renew)
        self.device, self._renderers, self.appearance = device, None, float(appearance)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_renderers": None}

    def renderer(self, i: int):
        """This process's ``DRRRenderer`` of CT ``i`` (made on first use)."""
        from ..rendering.render import DRRRenderer

        if self._renderers is None:
            self._renderers = [DRRRenderer(v, self.K, device=self.device, backend=QUERY_BACKEND) for v in self.volumes]
        return self._renderers[i]

    def __call__(self, step: int):
        i, views = renewal_views(self.volumes, self.poses, self.seed, step, self.renew)
        images = [query_appearance(self.volumes[i], self.K, T, render_query(self.renderer(i), T, m), self.appearance,
                                   (self.seed, 3, step, j)) for j, (T, m) in enumerate(views)]
        return i, [T for T, _ in views], images


def _ahead_loop(make, start: int, out) -> None:
    """The render process: ``make(k)`` for k = ``start``, ``start`` + 1, … into the queue ``out`` (it waits while the
    queue is full: it runs at most a few items ahead of training). It ends when the training process stops it
    (SIGTERM: the default action, not the training process's inherited handler; Ctrl-C is the training process's
    to handle) or goes away."""
    import os
    import queue as queue_mod
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    parent = os.getppid()

    def put(item) -> bool:
        while True:
            try:
                out.put(item, timeout=1.0)
                return True
            except queue_mod.Full:
                if os.getppid() != parent:  # the training process is gone
                    return False

    k = int(start)
    while True:
        try:
            item = (k, make(k))
        except Exception as exc:  # reported to the training process, which raises it
            put(("error", f"{type(exc).__name__}: {exc}"))
            return
        if not put(item):
            return
        k += 1


class _AheadWorker:
    """A separate process computing ``make(k)`` for the coming keys k (steps, generations) while training runs:
    forked on Linux (as torch's DataLoader workers: one thread, numpy and torch only), spawned elsewhere (there
    ``make`` is pickled and the calling script needs the ``if __name__ == "__main__":`` guard of every
    multiprocessing program; the ``rayemb`` command has it). ``get(k)`` returns ``make(k)``; asking for another key
    than the next one restarts the process at that key."""

    AHEAD = 4  # items computed in advance

    def __init__(self, make) -> None:
        self.make = make
        self.proc = self.queue = None
        self.next = None

    def start(self, key: int) -> None:
        import multiprocessing as mp

        self.stop()
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.queue = ctx.Queue(maxsize=self.AHEAD)
        self.proc = ctx.Process(target=_ahead_loop, args=(self.make, int(key), self.queue), daemon=True,
                                name="rayemb-render")
        self.proc.start()
        self.next = int(key)

    def get(self, key: int):
        import queue as queue_mod

        key = int(key)
        if self.proc is None or key != self.next:
            self.start(key)
        while True:
            try:
                item = self.queue.get(timeout=5.0)
                break
            except queue_mod.Empty:
                if not self.proc.is_alive():
                    raise RuntimeError(f"the DRR render process stopped (exit code {self.proc.exitcode}); run with "
                                       "workers=0 to see the error in this process") from None
        if item[0] == "error":
            self.stop()
            raise RuntimeError(f"the DRR render process failed: {item[1]}")
        got, value = item
        if got != key:  # cannot happen: the process works through the keys in order
            raise RuntimeError(f"the DRR render process sent item {got} for {key}")
        self.next = key + 1
        return value

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.join(timeout=5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(timeout=5)
            self.queue.close()
            self.queue.cancel_join_thread()
        self.proc = self.queue = None


class VariantStream(_RenderProcessOwner, ShardSet):
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

    ``workers`` = 1: a separate process (one CPU thread) makes the coming generations while the network trains
    (the same data: a generation depends only on (seed, g)); ``close()`` stops it.
    ``device``: where the DRRs are rendered (the live set stays in host memory). Cost on one CPU thread (224², 2.5 mm): ~1 s per DRR, ~2–3 s per synthetic anatomy, i.e. about
    (queries + templates + 3) s per ``variant_every`` steps.
    """

    def __init__(self, cts, size: int = 224, voxel_mm: float = 2.5, slots: int = 4, variant_every: int = 20,
                 queries: int = 12, template_angles=None, n_points: int = 2048, template_bone_multiplier: float = 2.0,
                 p_plain: float = 0.2, p_clinical: float = 0.7, anatomy: AnatomyRanges = AnatomyRanges(),
                 seed: int = 0, device: str = "cpu", workers: int = 0) -> None:
        if slots < 1 or variant_every < 1 or queries < 1:
            raise ValueError(f"slots, variant_every and queries must be ≥ 1; got {slots}, {variant_every}, {queries}")
        if workers not in (0, 1):
            raise ValueError(f"workers must be 0 (render in this process) or 1 (a render process); got {workers}")
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
        self._make = _Generations(self)
        self._worker = _AheadWorker(self._make) if workers and not str(device).startswith("cuda") else None
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
                self.shards[j] = self._worker.get(g) if self._worker is not None else self._make(g)
                self._gen[j] = g
                self.rendered += len(self.shards[j]["templates"]) + len(self.shards[j]["queries"])

    def describe(self) -> dict:
        """The settings that determine the stream (stored in checkpoints; a resume must use the same)."""
        return {"kind": "VariantStream", "cts": [c.name for c in self.base], "size": self.size, "slots": self.slots,
                "variant_every": self.variant_every, "queries": self.n_queries, "templates": self.angles.tolist(),
                "n_points": self.n_points, "p_plain": self.p_plain, "p_clinical": self.p_clinical, "seed": self.seed}

    def batch(self, rng: np.random.Generator, *args, **kwargs) -> dict:
        if self._gen[0] is None:  # not stepped yet (``train`` steps it; a resumed run starts at its step)
            self.at_step(0)
        return super().batch(rng, *args, **kwargs)


class _Generations:
    """``VariantStream``'s synthetic patients as a function of the generation g (picklable: the stream's settings,
    not its live set): ``g`` → a shard (templates, queries, projections, points), from ``default_rng([seed, 1, g])``."""

    def __init__(self, stream: VariantStream) -> None:
        keys = ("size", "K", "angles", "n_points", "n_queries", "template_bone_multiplier", "p_plain", "p_clinical",
                "anatomy", "seed", "device", "base")
        self.__dict__.update({k: getattr(stream, k) for k in keys})

    def __call__(self, g: int) -> dict:
        rng = np.random.default_rng([self.seed, 1, int(g)])
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
        return {"templates": templates, "template_angles": self.angles, "template_P": projection_matrices(self.K, tposes),
                "queries": queries, "query_P": projection_matrices(self.K, qposes), "points": points, "generation": g,
                "ct": ct.name}
