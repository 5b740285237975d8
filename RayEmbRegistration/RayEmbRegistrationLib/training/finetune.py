"""``rayemb finetune``: self-supervised patient-specific fine-tuning of a trained model on DRRs of one CT.

Owns: the patient-specific fine-tuning recipe and its report.

The fine-tuning recipe (render held-out evaluation poses and training poses of the patient's CT, measure
localisation error before, train within a time budget, measure after) and its report.

No labels are needed: DRRs of the patient's own CT at random RAYEMB_SAMPLER poses, with the bone points and
their projections known exactly, are the supervision (the same InfoNCE loss as ``train``).
Writes into ``out_dir``: ``data_train/``, ``data_eval/`` (cached DRRs, reused when run again), ``run/``
(checkpoints; ``run/model.safetensors`` = the fine-tuned weights) and ``finetune_report.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..detection.model import load_model
from ..progress import CancelFn, ProgressFn, sub_progress
from ..resources import BUNDLED_MODEL
from ..inputs.volume import BONE_HU, CTVolume, load_ct
from .data import ShardSet
from .generate import POSE_CENTERS, generate
from .stream import STREAM_POSES
from .train import evaluate, train

__all__ = ["finetune", "add_finetune_args", "finetune_main"]


def finetune(ct, out_dir, model_path=None, seconds: float = 300.0, n_train_queries: int = 48, n_variants: int = 1,
             n_eval_queries: int = 12, lr: float = 3e-4, seed: int = 0, device: str = "cpu", threads: int | None = None,
             bar: bool = True, log=print, pose_center: str = "centroid", progress: ProgressFn | None = None,
             cancel: CancelFn | None = None, on_the_fly: bool = False, poses: str = "clinical") -> dict:
    """Fine-tune ``model_path`` (None → bundled) on DRRs of ``ct`` (path or ``CTVolume``) for ``seconds``.

    ``pose_center`` (``generate.POSE_CENTERS``): training and held-out poses are centred on the bone centroid
    ("centroid", default) or on random bone voxels ("anywhere": views over the whole CT). Measured on the sample
    CT (docs/network.md): +75 min "anywhere" on top of the bundled model lowered its error on "anywhere" poses
    (7.9 → 5.8 px) but registration success on the CT-centred benchmark fell from 95 % to 80 % (n = 20).
    ``on_the_fly``: train on DRRs rendered while training runs (``stream.DRRStream``, ``poses`` as there) instead
    of a cached set of ``n_train_queries`` DRRs.
    ``bar``: tqdm bars; ``progress`` / ``cancel`` (``progress.py``): rendering 0–20 %, training 22–95 % (time
    budget), evaluation the rest; cancelling raises ``progress.Cancelled``.
    Returns the report dict: localisation error on held-out poses before/after (``train.summarize`` fields),
    timings, and the path of the fine-tuned weights.
    """
    if not (isinstance(seconds, (int, float)) and seconds > 0 and seconds < 7 * 24 * 3600):
        raise ValueError(f"--seconds {seconds!r}: the training time budget must be > 0 (and under a week).")
    for name, v in (("--queries", n_train_queries), ("--eval-queries", n_eval_queries)):
        if int(v) < 1:
            raise ValueError(f"{name} {v}: give at least 1 DRR.")
    if not (isinstance(lr, (int, float)) and 0 < lr < 1):
        raise ValueError(f"--lr {lr!r}: the learning rate must be in (0, 1).")
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.time()
    out = Path(out_dir)
    model_path = Path(model_path) if model_path else BUNDLED_MODEL
    base = load_model(model_path, device=device)
    cfg = base.config
    vol = ct if isinstance(ct, CTVolume) else load_ct(ct)
    if not (vol.hu >= BONE_HU).any():  # checked before anything is written
        raise ValueError(f"CT '{vol.name}' has no bone (no voxel ≥ {BONE_HU:g} HU, max {float(vol.hu.max()):.0f}); "
                         "fine-tuning learns bone landmarks. Is the CT in Hounsfield units?")
    # held-out poses (other seed, plain CT) and training poses of the same CT
    generate([vol], out / "data_eval", n_variants=1, n_queries=n_eval_queries, size=cfg.image_size, voxel_mm=cfg.voxel_mm,
             seed=seed + 7919, augment=False, template_bone_multiplier=cfg.template_bone_multiplier, bar=bar,
             pose_center=pose_center, progress=sub_progress(progress, 0.0, 0.05, "held-out DRRs: "), cancel=cancel)
    if on_the_fly:
        from .stream import DRRStream

        train_data = DRRStream([vol], size=cfg.image_size, voxel_mm=cfg.voxel_mm, seed=seed, poses=poses,
                               template_bone_multiplier=cfg.template_bone_multiplier, device=device)
    else:
        generate([vol], out / "data_train", n_variants=n_variants, n_queries=n_train_queries, size=cfg.image_size,
                 voxel_mm=cfg.voxel_mm, seed=seed, augment=False, template_bone_multiplier=cfg.template_bone_multiplier,
                 bar=bar, pose_center=pose_center, progress=sub_progress(progress, 0.05, 0.2, "training DRRs: "),
                 cancel=cancel)
        train_data = out / "data_train"
    t_render = time.time() - t0
    ev = ShardSet(out / "data_eval")
    if progress:
        progress(0.2, "measuring the localisation error before fine-tuning")
    before = evaluate(base, ev, device, max_queries=n_eval_queries)
    log(f"before: median {before['median_px']:.2f}px ({before['median_mm']:.2f} mm), p90 {before['p90_px']:.1f}px")
    t1 = time.time()
    train(train_data, out / "run", steps=100000, lr=lr, seed=seed, device=device, resume=False,
          max_minutes=seconds / 60.0, val_every=10**9, ckpt_every=10**9, init_weights=str(model_path),
          bar=bar, log=log, progress=sub_progress(progress, 0.22, 0.95), cancel=cancel)
    if progress:
        progress(0.95, "measuring the localisation error after fine-tuning")
    t_train = time.time() - t1
    tuned = load_model(out / "run" / "model.safetensors", device=device)
    after = evaluate(tuned, ev, device, max_queries=n_eval_queries)
    log(f"after:  median {after['median_px']:.2f}px ({after['median_mm']:.2f} mm), p90 {after['p90_px']:.1f}px")
    steps = json.loads((out / "run" / "model.json").read_text())["metadata"].get("step")
    report = {
        "ct": vol.name, "base_model": str(model_path), "base_sha256": base.sha256,
        "finetuned_model": str(out / "run" / "model.safetensors"), "finetuned_sha256": tuned.sha256,
        "pose_center": pose_center, "data": f"on the fly ({poses} poses)" if on_the_fly else "cached",
        "seconds_budget": seconds, "seconds_render": t_render, "seconds_train": t_train,
        "steps": steps,
        "eval_queries": n_eval_queries, "before": before, "after": after,
    }
    (out / "finetune_report.json").write_text(json.dumps(report, indent=2))
    if progress:
        progress(1.0, f"fine-tuned: median {after['median_px']:.2f} px (before {before['median_px']:.2f} px)")
    return report


def add_finetune_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--ct", required=True, help="the patient's CT (NIfTI/NRRD/DICOM folder)")
    p.add_argument("--out", required=True, help="output folder (fine-tuned weights in OUT/run/model.safetensors)")
    p.add_argument("--model", default=None, help="weights to start from (default: the bundled model)")
    p.add_argument("--seconds", type=float, default=300.0, help="training time budget in seconds")
    p.add_argument("--queries", type=int, default=48, help="training DRRs to render")
    p.add_argument("--eval-queries", type=int, default=12, help="held-out DRRs for the before/after report")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pose-center", choices=POSE_CENTERS, default="centroid",
                   help="centre training poses on the bone centroid (default) or on random bone voxels ('anywhere')")
    p.add_argument("--on-the-fly", action="store_true",
                   help="train on DRRs rendered while training runs (new poses every step) instead of a cached set")
    p.add_argument("--poses", choices=STREAM_POSES, default="clinical",
                   help="with --on-the-fly: the training poses (clinical C-arm use, or RAYEMB_SAMPLER)")
    return p


def finetune_main(args: argparse.Namespace) -> int:
    r = finetune(args.ct, args.out, model_path=args.model, seconds=args.seconds, n_train_queries=args.queries,
                 n_eval_queries=args.eval_queries, lr=args.lr, seed=args.seed, device=args.device, threads=args.threads,
                 pose_center=args.pose_center, log=lambda m: print(m, flush=True), on_the_fly=args.on_the_fly,
                 poses=args.poses)
    print(json.dumps({k: r[k] for k in ("ct", "seconds_train", "steps")} | {
        "before_median_px": r["before"]["median_px"], "after_median_px": r["after"]["median_px"]}))
    print(f"fine-tuned weights: {r['finetuned_model']} (use them with: rayemb register --model {r['finetuned_model']} ...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(finetune_main(add_finetune_args(argparse.ArgumentParser(description=__doc__)).parse_args()))
