"""The ``rayemb`` command: register, detect, render, demo, evaluate, and the training commands.

Owns: argument parsing, reading inputs, progress bars (tqdm), turning errors into one clear message and a
non-zero exit status (2 = bad input / registration impossible, 3 = model not available, 130 = cancelled),
the demo, and the simulated benchmark (``rayemb evaluate``). The work itself is in ``pipeline.py``,
``report.py`` and ``training/``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2
EXIT_NO_MODEL = 3
EXIT_CANCELLED = 130

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CT = REPO_ROOT / "Resources" / "SampleData" / "pelvis_abdomen_totalseg_3mm.nii.gz"
# The bundled network fine-tuned on the sample CT (``rayemb finetune``: the pre-operative, patient-specific step a
# user runs on their own CT); the demo uses it for the sample CT unless --model is given. Model card: MODEL.md.
SAMPLE_CT_MODEL = REPO_ROOT / "Resources" / "Models" / "finetuned" / "pelvis_abdomen_totalseg_3mm.safetensors"


class CLIError(ValueError):
    """A usage error (message says what to change)."""


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------


class _Progress:
    """tqdm bar driven by ``progress(fraction, message)`` callbacks."""

    def __init__(self, desc: str, enable: bool = True) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, desc=desc, disable=not enable, leave=False, file=sys.stderr,
                        bar_format="{desc}: {percentage:3.0f}%|{bar:30}| {postfix}")
        self.n = 0

    def __call__(self, fraction: float, message: str = "") -> None:
        k = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        if k > self.n:
            self.bar.update(k - self.n)
            self.n = k
        if message:
            self.bar.set_postfix_str(message[:60], refresh=False)

    def close(self) -> None:
        self.bar.close()


def _threads() -> None:
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))


def _load_ct(path):
    from .volume import load_ct

    return load_ct(path)


def _load_xray(path, geometry):
    from .xray import load_xray

    return load_xray(path, geometry=geometry)


def _options(args) -> "Any":
    from .pipeline import RegistrationOptions

    o = RegistrationOptions(device=args.device, model_path=args.model, seed=args.seed)
    if getattr(args, "no_refine", False):
        o.refine = False
    if getattr(args, "no_depth_search", False):
        o.depth_search = False
    if getattr(args, "no_bone_points", False):
        o.auto_bone_points = False
    if getattr(args, "bone_candidates", None):
        o.n_bone_candidates = args.bone_candidates
    if getattr(args, "bone_keep", None):
        o.n_bone_keep = args.bone_keep
    if getattr(args, "ransac_threshold", None):
        o.ransac_threshold_px = args.ransac_threshold
    if getattr(args, "refine_iterations", None):
        o.refine_iterations = tuple(args.refine_iterations)
    if getattr(args, "refine_levels", None):
        from .pipeline import refinement_lrs

        o.refine_levels = tuple(args.refine_levels)
        o.refine_lr_mm = refinement_lrs(len(o.refine_levels))
    return o


def _print_summary(result, truth=None, points=None) -> dict:
    from .pipeline import pose_errors

    lines = [f"final pose from stage '{result.final_stage}' (initial: {result.initial_method})"]
    if result.initial_method == "rayemb":
        lines.append(f"  PnP: {result.inliers}/{result.n_correspondences} inliers, {result.pnp_rmse_px:.2f} px RMS")
    if result.similarity_after is not None:
        lines.append(f"  similarity (multiscale NCC): {result.similarity_before:.4f} -> {result.similarity_after:.4f}")
    lines.append("  timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings_s.items()))
    errs = {}
    if truth is not None:
        for stage in ("initial", "refined", "final"):
            cam = getattr(result, stage)
            if cam is not None:
                e = pose_errors(cam.camera_from_world, truth, points, cam.intrinsics)
                errs[stage] = e
                lines.append(f"  TRUE error ({stage}): mTRE {e['mtre_mm']:.2f} mm, mean projection distance "
                             f"{e['mpd_mm']:.2f} mm, rotation {e['rot_deg']:.2f}°, source position {e['trans_mm']:.1f} mm")
    for w in result.warnings:
        lines.append(f"  warning: {w}")
    print("\n".join(lines))
    return errs


def _read_json_option(option: str, path: str):
    """The JSON content of the file given to ``option``; ``CLIError`` naming the option if missing or invalid."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{option} file not found: {p}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise CLIError(f"{option} {p} is not valid JSON: {exc}") from None


def _read_pose(path: str) -> np.ndarray:
    p = Path(path)
    d = _read_json_option("--pose", path)
    if isinstance(d, dict):
        d = d.get("camera_from_world", d.get("final", {}).get("camera_from_world") if isinstance(d.get("final"), dict) else None)
    T = np.asarray(d, dtype=np.float64) if d is not None else np.zeros(0)
    if T.shape != (4, 4):
        raise CLIError(f"--pose {p} must hold a 4×4 camera_from_world matrix (a list of 4 rows, or "
                       '{"camera_from_world": [[...], ...]}, e.g. a registration.json).')
    return T


def _read_geometry(path: str | None, size: Sequence[int] | None):
    from .camera import Intrinsics

    if path is None:
        raise CLIError("--geometry JSON is required: {\"source_to_detector_mm\": 1020, \"pixel_spacing_mm\": [du, dv], "
                       "\"width\": W, \"height\": H}.")
    d = _read_json_option("--geometry", path)
    if isinstance(d, dict) and isinstance(d.get("geometry"), dict):
        d = d["geometry"]
    w = h = None
    if size:
        w, h = int(size[0]), int(size[-1])
    return Intrinsics.from_dict(d, width=w, height=h)


def _sample_visible_pose(ct, intr, rng, sampler=None, tries: int = 1000) -> np.ndarray:
    """A RAYEMB_SAMPLER pose at which the CT centre projects inside the image (the pipeline's own overlap rule)."""
    from .camera import RAYEMB_SAMPLER, Camera
    from .pipeline import overlap_problem

    sampler = sampler or RAYEMB_SAMPLER
    for _ in range(tries):
        T = sampler.sample(1, ct.center_ras, rng)[0]
        if overlap_problem(ct, Camera(intr, T)) is None:
            return T
    raise CLIError("could not sample a pose that sees the CT")


# Baseline start: the true pose perturbed by rotations N(0, 0.05 rad) about the camera axes through the bone
# centre and translations N(0, 10/10/20 mm) (u, v, depth) — the magnitudes of camera.MILD_SAMPLER.
BASELINE_ROT_STD_RAD = 0.05
BASELINE_TRANS_STD_MM = (10.0, 10.0, 20.0)


def _perturbed_start(T, refiner, rng) -> np.ndarray:
    from .refine import perturbation_numpy

    p = np.r_[rng.normal(0, BASELINE_ROT_STD_RAD * refiner.radius_mm, 3), rng.normal(0, BASELINE_TRANS_STD_MM)]
    return perturbation_numpy(p, T, refiner.centre_ras, refiner.radius_mm)


# ------------------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------------------


def cmd_register(args) -> int:
    from .pipeline import register
    from .report import write_registration

    _threads()
    t = time.perf_counter()
    ct = _load_ct(args.ct)
    xray = _load_xray(args.xray, args.geometry)
    fids = None
    if args.fiducials:
        from .fiducials import load_fiducials

        fids = load_fiducials(args.fiducials)
    t_load = time.perf_counter() - t
    bar = _Progress("register", not args.quiet)
    try:
        result = register(ct, xray, fids, _options(args), progress=bar)
    finally:
        bar.close()
    result.timings_s = {"load": t_load, **result.timings_s}
    paths = write_registration(args.out, result, ct, xray, fids, scene=not args.no_scene)
    _print_summary(result)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_detect(args) -> int:
    from .fiducials import load_fiducials
    from .pipeline import detect
    from .report import write_json_atomic

    _threads()
    ct = _load_ct(args.ct)
    xray = _load_xray(args.xray, args.geometry)
    pts = load_fiducials(args.points)
    bar = _Progress("detect", not args.quiet)
    try:
        res = detect(ct, xray, pts, _options(args), heatmaps=args.heatmaps, progress=bar)
    finally:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.heatmaps and res.heatmaps is not None:
        tmp = out / ".heatmaps.tmp.npz"
        np.savez_compressed(tmp, heatmaps=res.heatmaps, labels=np.array(res.labels),
                            geometry=json.dumps(res.heatmap_intrinsics.to_dict()))
        tmp.replace(out / "heatmaps.npz")
        import cv2

        from .report import _to_uint8

        for i, lab in enumerate(res.labels[:50]):
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in lab) or f"P{i + 1}"
            cv2.imwrite(str(out / f"heatmap_{i:03d}_{safe}.png"), cv2.applyColorMap(_to_uint8(res.heatmaps[i]), cv2.COLORMAP_INFERNO))
    d = res.to_dict()
    d["xray"] = {"size": [xray.intrinsics.width, xray.intrinsics.height], "geometry": xray.intrinsics.to_dict()}
    d["conventions"] = "pixels (u, v) = (column, row) of the X-ray as stored, integer at pixel centres; RAS mm"
    write_json_atomic(d, out / "detections.json")
    for lab, uv, c in zip(res.labels, res.uv, res.confidence):
        print(f"{lab:>12s}: u {uv[0]:8.2f}  v {uv[1]:8.2f}  confidence {c:.3f}")
    print(f"wrote {out / 'detections.json'}")
    return 0


def cmd_render(args) -> int:
    from .camera import carm_camera_from_world
    from .render import DRRRenderer
    from .xray import CarmAngles, save_xray

    _threads()
    ct = _load_ct(args.ct)
    intr = _read_geometry(args.geometry, args.size)
    carm = None
    if args.pose:
        T = _read_pose(args.pose)
    else:
        prim, sec, sid = args.carm_angles
        if sid <= 0 or sid >= intr.source_to_detector_mm:
            raise CLIError(f"--carm-angles: source-to-isocentre distance {sid:g} mm must be in (0, SDD = "
                           f"{intr.source_to_detector_mm:g} mm).")
        T = carm_camera_from_world(prim, sec, sid, ct.center_ras)
        carm = CarmAngles(prim, sec, sid)
    r = DRRRenderer(ct, intr, backend=args.backend, bone_multiplier=args.bone_multiplier, device=args.device if args.device != "auto" else "cpu")
    img = r.render_numpy(T)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img_path, side = save_xray(img, intr, out, carm=carm)
    # Record the pose too (not needed by load_xray; handy for checking registrations).
    d = json.loads(side.read_text())
    d["camera_from_world"] = T.tolist()
    side.write_text(json.dumps(d, indent=2))
    print(f"wrote {img_path} and {side}")
    return 0


def cmd_demo(args) -> int:
    from .camera import Intrinsics
    from .pipeline import ModelUnavailable, RegistrationError, RegistrationOptions, _get_refiner, register, simulate_xray
    from .report import write_json_atomic, write_registration
    from .xray import XRayImage, save_xray

    _threads()
    ct_path = Path(args.ct) if args.ct else SAMPLE_CT
    ct = _load_ct(ct_path)
    rng = np.random.default_rng(args.seed)
    intr = Intrinsics.deepfluoro(args.size)
    T_true = _sample_visible_pose(ct, intr, rng)
    pixels = simulate_xray(ct, intr, T_true, rng)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_xray(pixels, intr, out / "xray.tif")
    write_json_atomic({"camera_from_world": T_true, "note": "ground truth of the simulated X-ray (not given to the pipeline)"},
                      out / "truth.json")
    eval_pts = ct.sample_bone_points(500, np.random.default_rng(12345))
    xray = XRayImage(pixels, intr, "simulated X-ray")
    print(f"CT {ct_path.name}: {ct.shape} voxels; X-ray simulated at a random RAYEMB_SAMPLER pose, "
          f"{intr.width}×{intr.height} px DeepFluoro-like geometry (saved to {out / 'xray.tif'}).")
    options = _options(args)
    if not args.model and ct_path.resolve() == SAMPLE_CT.resolve() and SAMPLE_CT_MODEL.is_file():
        options.model_path = str(SAMPLE_CT_MODEL)
        print(f"network: {SAMPLE_CT_MODEL.relative_to(REPO_ROOT)} — the bundled model fine-tuned on this CT "
              "('rayemb finetune', the pre-operative step; it never saw this X-ray or its pose). "
              "Use --model Resources/Models/rayemb_unet.safetensors for the general model.")
    bar = _Progress("demo", not args.quiet)
    missing = []
    result = None
    try:
        result = register(ct, xray, None, options, progress=bar)
    except ModelUnavailable as exc:
        missing.append(f"RayEmb landmark detection + PnP initialisation: NOT YET AVAILABLE ({exc})")
    except RegistrationError as exc:
        missing.append(f"RayEmb landmark detection + PnP initialisation FAILED on this X-ray ({exc})")
    finally:
        bar.close()
    if result is None:
        print("\n*** " + missing[0])
        print("*** Falling back to intensity-only registration from a perturbed start pose (true pose + rotations "
              f"N(0, {BASELINE_ROT_STD_RAD} rad), translations N(0, {BASELINE_TRANS_STD_MM} mm)); this is NOT a "
              "markerless initialisation, it only demonstrates the refinement, the outputs and the scene.\n")
        refiner = _get_refiner(ct, options, "cpu" if options.device == "auto" else options.device)
        start = _perturbed_start(T_true, refiner, rng)
        opt2 = RegistrationOptions(**{**options.__dict__, "initial_camera_from_world": start})
        bar = _Progress("demo (intensity only)", not args.quiet)
        try:
            result = register(ct, xray, None, opt2, progress=bar)
        finally:
            bar.close()
    extra = {"demo": {"true_camera_from_world": T_true.tolist(), "not_yet_available": missing}}
    errs = _print_summary(result, T_true, eval_pts)
    extra["demo"]["true_errors"] = errs
    paths = write_registration(out, result, ct, xray, None, scene=not args.no_scene, extra=extra)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if missing:
        print("not available in this run: " + "; ".join(missing))
    return 0


# ------------------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------------------


def _summarise(rows: list[dict], method: str) -> dict:
    r = [x for x in rows if x["method"] == method]
    m = np.array([x["mtre_mm"] for x in r], dtype=float)
    m = np.where(np.isfinite(m), m, np.inf)
    mpd = np.array([x["mpd_mm"] for x in r], dtype=float)
    rt = np.array([x["total_s"] for x in r], dtype=float)
    fin = m[np.isfinite(m)]

    def pct(a, q):
        return float(np.percentile(a, q)) if len(a) else math.nan

    out = {"method": method, "n": len(r), "success_10mm_%": 100 * float(np.mean(m <= 10)) if len(m) else math.nan,
           "GFR@10mm_%": 100 * float(np.mean(m > 10)) if len(m) else math.nan,
           "GFR@5mm_%": 100 * float(np.mean(m > 5)) if len(m) else math.nan,
           "errors_%": 100 * float(np.mean([x["error"] != "" for x in r])) if r else math.nan,
           "mTRE_p25_mm": pct(m, 25) if len(m) else math.nan, "mTRE_p50_mm": pct(m, 50) if len(m) else math.nan,
           "mTRE_p95_mm": pct(m, 95) if len(m) else math.nan,
           "mPD_p50_mm": pct(mpd[np.isfinite(mpd)], 50), "runtime_p50_s": pct(rt[np.isfinite(rt)], 50)}
    for stage in ("detector_setup", "detection", "pnp", "refine"):
        v = np.array([x.get(f"{stage}_s", math.nan) for x in r], dtype=float)
        out[f"{stage}_p50_s"] = pct(v[np.isfinite(v)], 50)
    del fin
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.2f}")
    return str(v)


def cmd_evaluate(args) -> int:
    import csv

    from .camera import Camera, Intrinsics
    from .pipeline import (ModelUnavailable, RegistrationError, RegistrationOptions, _get_refiner, overlap_problem,
                           pose_errors, register, simulate_xray)
    from .render import DRRRenderer
    from .xray import XRayImage

    _threads()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    intr = Intrinsics.deepfluoro(args.size)
    base_opt = _options(args)
    rows: list[dict] = []
    rayemb_missing = None
    from tqdm import tqdm

    for ct_path in args.ct:
        ct = _load_ct(ct_path)
        rng = np.random.default_rng(args.seed)
        eval_pts = ct.sample_bone_points(500, np.random.default_rng(12345))
        sim_r = DRRRenderer(ct, intr)
        refiner = _get_refiner(ct, base_opt, "cpu" if base_opt.device == "auto" else base_opt.device)
        for case in tqdm(range(args.n), desc=f"evaluate {Path(ct_path).name}", file=sys.stderr, disable=args.quiet):
            T = _sample_visible_pose(ct, intr, rng)
            xray = XRayImage(simulate_xray(ct, intr, T, rng, renderer=sim_r), intr, f"case{case}")
            start = _perturbed_start(T, refiner, rng)
            for _ in range(50):  # the baseline's start must itself pass the pipeline's overlap check
                if overlap_problem(ct, Camera(intr, start)) is None:
                    break
                start = _perturbed_start(T, refiner, rng)
            jobs = [("intensity-only baseline", RegistrationOptions(**{**base_opt.__dict__, "initial_camera_from_world": start, "refine": True}))]
            if rayemb_missing is None:
                jobs.insert(0, ("rayemb", base_opt))
            for name, opt in jobs:
                row_common = {"ct": Path(ct_path).name, "case": case}
                try:
                    res = register(ct, xray, None, opt)
                except ModelUnavailable as exc:
                    rayemb_missing = str(exc)
                    continue
                except RegistrationError as exc:
                    methods = ["RayEmb initial", "RayEmb refined"] if name == "rayemb" else ["intensity-only (refined)"]
                    for m in methods:
                        rows.append({**row_common, "method": m, "mtre_mm": math.inf, "mpd_mm": math.inf, "rot_deg": math.nan,
                                     "trans_mm": math.nan, "total_s": math.nan, "error": str(exc)[:120]})
                    continue
                stages = [("RayEmb initial", res.initial), ("RayEmb refined", res.final)] if name == "rayemb" else \
                         [("intensity-only start", res.initial), ("intensity-only (refined)", res.final)]
                for m, cam in stages:
                    e = pose_errors(cam.camera_from_world, T, eval_pts, intr)
                    row = {**row_common, "method": m, **e, "error": ""}
                    ts = dict(res.timings_s)
                    if m.endswith("initial") or m.endswith("start"):
                        ts.pop("refine", None)
                        ts["total"] = sum(v for k, v in ts.items() if k in ("detector_setup", "detection", "pnp"))
                    row["total_s"] = ts.get("total", math.nan)
                    for k, v in ts.items():
                        row[f"{k}_s"] = v
                    rows.append(row)
    methods = [m for m in ("RayEmb initial", "RayEmb refined", "intensity-only start", "intensity-only (refined)")
               if any(r["method"] == m for r in rows)]
    summary = [_summarise(rows, m) for m in methods]
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("ct", "case", "method"), k))
    with open(out / "cases.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    if summary:
        with open(out / "summary.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(summary[0]))
            w.writeheader()
            w.writerows(summary)
    cols = ["method", "n", "success_10mm_%", "GFR@10mm_%", "GFR@5mm_%", "mTRE_p25_mm", "mTRE_p50_mm", "mTRE_p95_mm",
            "mPD_p50_mm", "runtime_p50_s", "detection_p50_s", "pnp_p50_s", "refine_p50_s"]
    md = [f"Simulated benchmark: {args.n} random RAYEMB_SAMPLER poses per CT ({', '.join(Path(c).name for c in args.ct)}), "
          f"DeepFluoro-like {args.size}² X-rays (pipeline.simulate_xray), seed {args.seed}. mTRE over 500 fixed bone "
          "points in the camera frame; mPD = mean projection distance at the detector. Intensity-only start = true pose "
          f"perturbed by N(0, {BASELINE_ROT_STD_RAD} rad) rotations about the bone centre and N(0, {BASELINE_TRANS_STD_MM}) mm.", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in summary:
        md.append("| " + " | ".join(_fmt(s.get(c, math.nan)) for c in cols) + " |")
    if rayemb_missing:
        md += ["", f"RayEmb (landmarks + PnP): NOT YET AVAILABLE — {rayemb_missing}"]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    _plots(rows, methods, out)
    print("\n".join(md))
    print(f"wrote {out / 'cases.csv'}, {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'mtre.png'}")
    return 0


def _plots(rows, methods, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for m in methods:
        v = np.sort([r["mtre_mm"] for r in rows if r["method"] == m])
        v = np.where(np.isfinite(v), v, 1e3)
        if len(v):
            ax[0].step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=m)
    ax[0].axvline(10, color="grey", ls="--", lw=0.8)
    ax[0].set_xscale("log")
    ax[0].set_xlabel("mTRE (mm)")
    ax[0].set_ylabel("fraction of cases ≤ x")
    ax[0].legend(fontsize=8)
    data = [[r["mtre_mm"] for r in rows if r["method"] == m and np.isfinite(r["mtre_mm"])] for m in methods]
    ax[1].boxplot([d if d else [np.nan] for d in data])
    ax[1].set_xticks(range(1, len(methods) + 1), [m.replace(" ", "\n") for m in methods], fontsize=8)
    ax[1].set_yscale("log")
    ax[1].set_ylabel("mTRE (mm)")
    fig.tight_layout()
    fig.savefig(out / "mtre.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------
# Parser
# ------------------------------------------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser, registration: bool = True) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the network and the DRRs run (auto: CUDA if available, else CPU)")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="network weights (.safetensors written by 'rayemb train'); default: the bundled model")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (bone points, RANSAC, simulation)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if registration:
        p.add_argument("--no-refine", action="store_true",
                       help="skip the intensity refinement (final pose = PnP pose)")
        p.add_argument("--no-depth-search", action="store_true",
                       help="refine from the PnP pose as it is, without first searching its depth along the "
                            "viewing ray by image similarity")
        p.add_argument("--no-bone-points", action="store_true",
                       help="use only the given fiducials, no automatically sampled bone points")
        p.add_argument("--bone-candidates", type=int, default=None, metavar="N",
                       help="bone points (HU >= 350) to detect (default 10000 on CUDA, 2000 on CPU; paper: 10000)")
        p.add_argument("--bone-keep", type=int, default=None, metavar="N",
                       help="most confident bone points given to PnP (default 600, as in the paper)")
        p.add_argument("--ransac-threshold", type=float, default=None, metavar="PX",
                       help="RANSAC inlier threshold in pixels of the X-ray as given (default 10)")
        p.add_argument("--refine-levels", type=int, nargs="+", default=None, metavar="SIZE",
                       help="coarse-to-fine DRR grid sizes, longer side in px (default 32 64 96; steps 8 → 1 mm)")
        p.add_argument("--refine-iterations", type=int, nargs="+", default=None, metavar="N",
                       help="Adam iterations per refinement level (default 60 40 20)")
        p.add_argument("--no-scene", action="store_true", help="do not write scene.mrb")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="rayemb",
        description="Markerless 2D/3D X-ray to CT registration with ray embeddings (RayEmb). World = the CT's RAS "
                    "frame (mm); cameras are OpenCV pinholes; pixels (u, v) = (column, row), integer at pixel centres.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    F = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("register", help="register an X-ray to a CT", formatter_class=F,
                       description="Register an X-ray to a CT: landmark detection, PnP + RANSAC, intensity refinement. "
                                   "Writes OUT/registration.json, OUT/overlay.png and OUT/scene.mrb (all or nothing).")
    p.add_argument("--ct", required=True, help="CT: NIfTI (.nii/.nii.gz), NRRD or a DICOM series folder")
    p.add_argument("--xray", required=True, help="X-ray: DICOM, PNG/TIFF/NRRD/NIfTI/NPY (+ geometry)")
    p.add_argument("--geometry", default=None, metavar="JSON",
                   help='X-ray geometry sidecar {"source_to_detector_mm", "pixel_spacing_mm": [du, dv], '
                        '"principal_point_px"} (default: DICOM tags or <xray>.json next to the image)')
    p.add_argument("--fiducials", default=None, metavar="FILE",
                   help="3D points to detect and use: Slicer markups .mrk.json, .fcsv or CSV label,r,a,s (RAS mm)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_common(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("detect", help="detect the 2D projections of 3D points in an X-ray", formatter_class=F,
                       description="Detect where the given CT points project in the X-ray. Writes OUT/detections.json "
                                   "(label, detected pixel, confidence) and, with --heatmaps, OUT/heatmaps.npz + PNGs.")
    p.add_argument("--ct", required=True, help="CT: NIfTI, NRRD or DICOM series folder")
    p.add_argument("--xray", required=True, help="X-ray image (see 'register')")
    p.add_argument("--geometry", default=None, metavar="JSON", help="X-ray geometry sidecar (see 'register')")
    p.add_argument("--points", required=True, metavar="FILE", help="3D points: markups .mrk.json, .fcsv or CSV label,r,a,s")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--heatmaps", action="store_true", help="also write the score maps (heatmaps.npz and PNGs, first 50 points)")
    _add_common(p, registration=False)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("render", help="render a DRR of a CT at a pose", formatter_class=F,
                       description="Render a DRR (line integrals, bone bright) and its geometry sidecar IMAGE.json "
                                   "(readable by load_xray / 'rayemb register').")
    p.add_argument("--ct", required=True, help="CT: NIfTI, NRRD or DICOM series folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--pose", metavar="JSON_4x4",
                   help="camera_from_world 4×4 (RAS mm → OpenCV camera): a JSON list of rows, {\"camera_from_world\": ...} "
                        "or a registration.json")
    g.add_argument("--carm-angles", nargs=3, type=float, metavar=("PRIMARY", "SECONDARY", "SID"),
                   help="C-arm angles in degrees (DICOM: primary + = LAO, secondary + = cranial) and the "
                        "source-to-isocentre distance in mm; the isocentre is the CT centre")
    p.add_argument("--geometry", required=True, metavar="JSON",
                   help='detector {"source_to_detector_mm", "pixel_spacing_mm": [du, dv], "width", "height", '
                        '"principal_point_px" (optional)}')
    p.add_argument("--size", type=int, nargs="+", default=None, metavar="PX",
                   help="image width [height] if the geometry JSON has none")
    p.add_argument("--out", required=True, metavar="IMAGE", help="output image (.tif, .npy, .nrrd or 16-bit .png)")
    p.add_argument("--backend", default="nanodrr", choices=["nanodrr", "diffdrr"], help="DRR renderer")
    p.add_argument("--bone-multiplier", type=float, default=1.0, help="bone attenuation multiplier (1 = physical)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("demo", help="simulate an X-ray of the sample CT and register it", formatter_class=F,
                       description="The bundled sample CT, an X-ray simulated at a random pose (RAYEMB_SAMPLER, "
                                   "DeepFluoro-like geometry, noise), a full registration that does not see the pose, "
                                   "the outputs of 'register' and the true errors. For the sample CT the network "
                                   "fine-tuned on it (Resources/Models/finetuned/) is used unless --model is given.")
    p.add_argument("--out", default="rayemb-demo", metavar="DIR", help="output folder")
    p.add_argument("--ct", default=None, help="another CT instead of the bundled sample")
    p.add_argument("--size", type=int, default=256, help="simulated X-ray size (pixels, square)")
    _add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="simulated benchmark on random poses", formatter_class=F,
                       description="For each CT, N X-rays simulated at random RAYEMB_SAMPLER poses (DeepFluoro-like "
                                   "geometry), registered with RayEmb (initial, refined) and with the intensity-only "
                                   "baseline (refinement from a perturbed true pose). Writes cases.csv, summary.csv, "
                                   "summary.md and mtre.png.")
    p.add_argument("--ct", nargs="+", default=[str(SAMPLE_CT)], help="CTs (default: the bundled sample CT)")
    p.add_argument("--n", type=int, default=20, help="random poses per CT")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--size", type=int, default=256, help="simulated X-ray size (pixels, square)")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    _add_training(sub, F)
    return ap


def _add_training(sub, F) -> None:
    import importlib

    for name, text in (("generate", "render a cached training set of DRRs"),
                       ("train", "train the ray-embedding network"),
                       ("finetune", "patient-specific self-supervised fine-tuning")):
        add = main_fn = None
        why = ""
        try:
            mod = importlib.import_module(f".training.{name}", __package__)
            add, main_fn = getattr(mod, f"add_{name}_args", None), getattr(mod, f"{name}_main", None)
            if add is None or main_fn is None:
                why = f"training/{name}.py has no add_{name}_args/{name}_main"
        except ImportError as exc:
            why = f"training/{name}.py is not available ({exc})"
        p = sub.add_parser(name, help=text + ("" if not why else " (not yet available)"), formatter_class=F,
                           description=text + "." + ("" if not why else f" NOT YET AVAILABLE: {why}."))
        if add is not None and main_fn is not None:
            add(p)
            p.set_defaults(func=main_fn)
        else:
            p.set_defaults(func=lambda args, _w=why: (_ for _ in ()).throw(CLIError(f"not yet available: {_w}")))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rayemb``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .pipeline import ModelUnavailable, RegistrationCancelled

    try:
        rc = args.func(args)
        return int(rc or 0)
    except ModelUnavailable as exc:
        print(f"rayemb {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_NO_MODEL
    except RegistrationCancelled as exc:
        print(f"rayemb {args.command}: cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print(f"rayemb {args.command}: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"rayemb {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
