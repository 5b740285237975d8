"""Benchmark of the ray-embedding network(s), leave-one-CT-out on a CT none of them saw (default: the pelvis CT).

Measures, for every ``--model`` side by side (the first is the baseline), on DRRs of the CT at random poses
(``--pose-center``: RAYEMB_SAMPLER about the bone centroid, or clinical C-arm poses about random bone voxels;
bone multiplier 1–10, no image augmentation):
  * 2D localisation error of bone points (HU ≥ 350) at the network size (px) and at the detector (mm):
    median / mean / p90, and the same for the 25 % most confident points; for several template spreads;
  * the same after patient-specific fine-tuning on that CT (before vs after, same held-out poses);
  * CPU inference time: embedding one image + scoring 1,000 points (``LandmarkDetector.detect``).

Usage:
    .venv/bin/python benchmarks/bench_network.py [--model BASELINE NEW ...] [--pose-center clinical]
        [--finetune-seconds 300] [--out out/bench]
Writes OUT/bench_network.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.detection.model import load_model  # noqa: E402
from RayEmbRegistrationLib.detection.templates import inference_template_angles  # noqa: E402
from RayEmbRegistrationLib.training.data import ShardSet  # noqa: E402
from RayEmbRegistrationLib.training.generate import generate  # noqa: E402
from RayEmbRegistrationLib.training.train import evaluate  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402

DEFAULT_CT = REPO.parent / "shared" / "data" / "ct" / "pelvis_abdomen_totalseg_3mm.nii.gz"


def time_inference(model, ct, images, n_points=1000, repeats=5) -> dict:
    from RayEmbRegistrationLib.detection.detect import LandmarkDetector

    t0 = time.perf_counter()
    det = LandmarkDetector(model, ct, n_templates=4)
    t_templates = time.perf_counter() - t0
    pts = ct.sample_bone_points(n_points, rng=0)
    K = det.templates.intrinsics
    det.detect(images[0], K, pts)  # warm-up
    times, t_embed, fast = [], [], []
    for i in range(repeats):
        img = images[i % len(images)]
        t0 = time.perf_counter()
        model.embed(img)
        t_embed.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        det.detect(img, K, pts)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        det.detect(img, K, pts, fast=True)
        fast.append(time.perf_counter() - t0)
    return {"templates_build_s": t_templates, "embed_s_median": float(np.median(t_embed)),
            "detect_1000_points_s_median": float(np.median(times)),
            "detect_1000_points_fast_s_median": float(np.median(fast)), "threads": torch.get_num_threads(),
            "image_size": model.config.image_size}


def end_to_end(model, ct, ev: ShardSet, n_queries: int, n_points: int) -> dict:
    """The inference API itself (LandmarkDetector.detect on the query image, its own templates), full vs fast."""
    from RayEmbRegistrationLib.detection.detect import LandmarkDetector
    from RayEmbRegistrationLib.geometry.camera import project_points
    from RayEmbRegistrationLib.training.train import summarize

    det = LandmarkDetector(model, ct, n_templates=4)
    K = det.templates.intrinsics
    sh = ev.shards[0]
    out = {}
    for fast in (False, True):
        rng = np.random.default_rng(0)  # the same points for both modes
        errs, confs = [], []
        for q in range(min(n_queries, len(sh["queries"]))):
            X = sh["points"][rng.choice(len(sh["points"]), n_points, replace=False)].astype(np.float64)
            uv = project_points(sh["query_P"][q], X)
            ok = np.isfinite(uv).all(1) & (uv >= 1).all(1) & (uv <= K.width - 2).all(1)
            d = det.detect(sh["queries"][q].astype(np.float32), K, X[ok], fast=fast)
            errs.append(np.linalg.norm(d.uv - uv[ok], axis=1))
            confs.append(d.confidence)
        out["fast" if fast else "full"] = summarize(np.concatenate(errs), np.concatenate(confs), K.width)
    return out


def row(name, s):
    return (f"| {name} | {s['n']} | {s['median_px']:.2f} | {s['mean_px']:.2f} | {s['p90_px']:.1f} | {s['median_mm']:.2f} | "
            f"{s['p90_mm']:.1f} | {s['top25_median_px']:.2f} | {100 * s['within_3px']:.0f} % |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=[None], help="weights to compare (default: bundled); the first "
                   "is also timed and fine-tuned")
    p.add_argument("--ct", default=str(DEFAULT_CT), help="held-out CT (default: the pelvis CT)")
    p.add_argument("--out", default=str(REPO / "out" / "bench"))
    p.add_argument("--queries", type=int, default=24, help="held-out query DRRs")
    p.add_argument("--points", type=int, default=40, help="bone points per query")
    p.add_argument("--templates", type=int, nargs="+", default=[1, 4, 9], help="template spreads to compare")
    p.add_argument("--finetune-seconds", type=float, default=300.0, help="0 = skip fine-tuning")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--pose-center", choices=("centroid", "clinical"), default="centroid",
                   help="held-out poses: RAYEMB_SAMPLER about the bone centroid, or clinical C-arm poses")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    models = [load_model(m) for m in a.model]
    model = models[0]
    cfg = model.config
    if any(m.config.image_size != cfg.image_size or m.config.voxel_mm != cfg.voxel_mm for m in models):
        raise SystemExit("--model: the networks to compare must share image size and voxel size")
    ct = load_ct(a.ct)
    generate([ct], out / "eval", n_variants=1, n_queries=a.queries, size=cfg.image_size, voxel_mm=cfg.voxel_mm,
             seed=a.seed, augment=False, template_bone_multiplier=cfg.template_bone_multiplier,
             pose_center=a.pose_center)
    ev = ShardSet(out / "eval")
    res = {"model": str(model.path), "sha256": model.sha256, "ct": ct.name, "queries": a.queries,
           "pose_center": a.pose_center, "spreads": {}, "models": {}}
    for n in a.templates:
        res["spreads"][n] = evaluate(model, ev, max_queries=a.queries, n_points=a.points,
                                     template_angles=inference_template_angles(n))
    for m in models:
        res["models"][f"{Path(m.path).parent.name}/{Path(m.path).name} ({m.sha256[:8]})"] = evaluate(
            m, ev, max_queries=a.queries, n_points=a.points)
    res["end_to_end"] = end_to_end(model, ct, ev, min(8, a.queries), a.points)
    res["timing"] = time_inference(model, ct, [ev.shards[0]["queries"][i].astype(np.float32) for i in range(3)])
    if a.finetune_seconds > 0:
        from RayEmbRegistrationLib.training.finetune import finetune

        rep = finetune(ct, out / "finetune", model_path=model.path, seconds=a.finetune_seconds, seed=a.seed + 1)
        tuned = load_model(rep["finetuned_model"])
        res["finetune"] = {
            "seconds_train": rep["seconds_train"], "seconds_render": rep["seconds_render"], "steps": rep["steps"],
            "before": evaluate(model, ev, max_queries=a.queries, n_points=a.points),
            "after": evaluate(tuned, ev, max_queries=a.queries, n_points=a.points),
            "report_before": rep["before"], "report_after": rep["after"],
        }
    (out / "bench_network.json").write_text(json.dumps(res, indent=2))
    print(f"\nLeave-one-CT-out on {ct.name}: {a.queries} DRRs at {a.pose_center} poses × ≤{a.points} bone points, "
          f"{cfg.image_size}² (1 px = {1536 * 0.194 / cfg.image_size:.2f} mm at the detector)\n")
    print("| setting | points | median px | mean px | p90 px | median mm | p90 mm | top-25% median px | ≤3 px |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, s in res["models"].items():
        print(row(f"{name}, 4 templates", s))
    for n, s in res["spreads"].items():
        print(row(f"{n} templates", s))
    if "finetune" in res:
        f = res["finetune"]
        print(row("4 templates, before fine-tuning", f["before"]))
        print(row(f"4 templates, after {f['seconds_train']:.0f} s fine-tuning ({f['steps']} steps)", f["after"]))
    for k, s in res["end_to_end"].items():
        print(row(f"LandmarkDetector.detect ({k} scoring), 4 templates", s))
    t = res["timing"]
    print(f"\nCPU ({t['threads']} threads): embed one {t['image_size']}² image {t['embed_s_median']:.3f} s; "
          f"embed + score 1000 points {t['detect_1000_points_s_median']:.3f} s (fast: "
          f"{t['detect_1000_points_fast_s_median']:.3f} s); templates (once per CT) "
          f"{t['templates_build_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
