"""The simulated registration benchmark (``rayemb evaluate``) and its pose-error metrics.

Owns: the simulated registration benchmark and its pose-error metrics.

The benchmark — X-rays simulated at random poses of each CT, registered by RayEmb and by the intensity-only
baseline, their errors (``pose_errors``), summary statistics and the files ``cases.csv``, ``summary.csv``,
``summary.md``, ``mtre.png``.

Frames: poses ``camera_from_world`` (4, 4) (RAS mm → OpenCV camera); mTRE over fixed bone points in the camera
frame, mPD at the detector (mm).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from .geometry.camera import Camera, Intrinsics
from .errors import ModelUnavailable, RegistrationError
from .options import RegistrationOptions
from .rendering.simulate import BASELINE_ROT_STD_RAD, BASELINE_TRANS_STD_MM, perturbed_start, sample_visible_pose, simulate_xray

__all__ = ["pose_errors", "run_benchmark", "simulated_cases", "summarise", "SUMMARY_COLUMNS", "METHODS", "STAGES"]

#: the methods ``run_benchmark`` can run (``--methods``) and the two rows (start, refined) each gives
STAGES = {"rayemb": ("RayEmb initial", "RayEmb refined"),
          "regression": ("regression initial", "regression refined"),
          "both": ("both initial", "both refined"),
          "intensity": ("intensity-only start", "intensity-only (refined)")}
METHODS = tuple(m for rows in STAGES.values() for m in rows)
SUMMARY_COLUMNS = ("method", "n", "success_10mm_%", "GFR@10mm_%", "GFR@5mm_%", "mTRE_p25_mm", "mTRE_p50_mm",
                   "mTRE_p95_mm", "mPD_p50_mm", "runtime_p50_s", "detection_p50_s", "pnp_p50_s", "refine_p50_s",
                   "accepted_%", "accepted_failures", "regression_start_%")
#: bone points (this seed) over which the mTRE of every case is measured
EVAL_POINTS, EVAL_POINTS_SEED = 500, 12345


def pose_errors(estimate, truth, points_ras, intrinsics: Intrinsics) -> dict[str, float]:
    """Errors of an estimated ``camera_from_world`` (4, 4) against the truth, over points (N, 3) RAS.

    Returns ``mtre_mm`` (mean 3D distance of the points in the camera frame), ``mpd_mm`` (mean projection
    distance at the detector, mm), ``rot_deg`` (geodesic rotation error) and ``trans_mm`` (camera-centre
    distance).
    """
    A, B = Camera(intrinsics, estimate), Camera(intrinsics, truth)
    mtre = float(np.linalg.norm(A.to_camera(points_ras) - B.to_camera(points_ras), axis=1).mean())
    d = A.project(points_ras) - B.project(points_ras)
    d[..., 0] *= intrinsics.pixel_spacing_mm[0]
    d[..., 1] *= intrinsics.pixel_spacing_mm[1]
    dist = np.linalg.norm(d, axis=1)
    mpd = float(np.nanmean(dist)) if np.isfinite(dist).any() else math.inf
    c = (np.trace(A.R.T @ B.R) - 1) / 2
    return {"mtre_mm": mtre, "mpd_mm": mpd, "rot_deg": math.degrees(math.acos(float(np.clip(c, -1, 1)))),
            "trans_mm": float(np.linalg.norm(A.source_ras - B.source_ras))}


def summarise(rows: list[dict], method: str) -> dict:
    r = [x for x in rows if x["method"] == method]
    m = np.array([x["mtre_mm"] for x in r], dtype=float)
    m = np.where(np.isfinite(m), m, np.inf)
    mpd = np.array([x["mpd_mm"] for x in r], dtype=float)
    rt = np.array([x["total_s"] for x in r], dtype=float)

    def pct(a, q):
        return float(np.percentile(a, q)) if len(a) else math.nan

    out = {"method": method, "n": len(r), "success_10mm_%": 100 * float(np.mean(m <= 10)) if len(m) else math.nan,
           "GFR@10mm_%": 100 * float(np.mean(m > 10)) if len(m) else math.nan,
           "GFR@5mm_%": 100 * float(np.mean(m > 5)) if len(m) else math.nan,
           "errors_%": 100 * float(np.mean([x["error"] != "" for x in r])) if r else math.nan,
           "mTRE_p25_mm": pct(m, 25) if len(m) else math.nan, "mTRE_p50_mm": pct(m, 50) if len(m) else math.nan,
           "mTRE_p95_mm": pct(m, 95) if len(m) else math.nan,
           "mPD_p50_mm": pct(mpd[np.isfinite(mpd)], 50), "runtime_p50_s": pct(rt[np.isfinite(rt)], 50)}
    judged = [x for x in r if x.get("verdict")]
    out["accepted_%"] = 100 * float(np.mean([x["verdict"] == "accepted" for x in judged])) if judged else math.nan
    out["accepted_failures"] = sum(1 for x in judged if x["verdict"] == "accepted" and not x["mtre_mm"] <= 10)
    # ``both``: how often the regressed pose won the competition of starts
    out["regression_start_%"] = (100 * float(np.mean([x.get("initial_method") == "regression" for x in judged]))
                                 if judged and method.startswith("both") else math.nan)
    for stage in ("detector_setup", "detection", "pnp", "refine"):
        v = np.array([x.get(f"{stage}_s", math.nan) for x in r], dtype=float)
        out[f"{stage}_p50_s"] = pct(v[np.isfinite(v)], 50)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.2f}")
    return str(v)


def _case_rows(res, name: str, T, eval_pts, intr, common: dict) -> list[dict]:
    first, refined = STAGES[name]
    stages = [(first, res.initial), (refined, res.final)]
    rows = []
    for m, cam in stages:
        row = {**common, "method": m, **pose_errors(cam.camera_from_world, T, eval_pts, intr), "error": ""}
        if not (m.endswith("initial") or m.endswith("start")):
            row["verdict"] = res.verdict.status
            row["initial_method"] = res.initial_method  # which start won (``both``: rayemb or regression)
            # the verdict's signals, so that a benchmark run is also calibration data (benchmarks/calibrate_verdict.py)
            row.update({f"signal_{k}": float(v) for k, v in (res.verdict.signals or {}).items()
                        if isinstance(v, (bool, int, float, np.number))})
        ts = dict(res.timings_s)
        if m.endswith("initial") or m.endswith("start"):
            ts.pop("refine", None)
            ts["total"] = sum(v for k, v in ts.items() if k in ("detector_setup", "detection", "pnp", "regression"))
        row["total_s"] = ts.get("total", math.nan)
        row.update({f"{k}_s": v for k, v in ts.items()})
        rows.append(row)
    return rows


def simulated_cases(ct, intr: Intrinsics, n: int, seed: int, poses: str, renderer, refiner, appearance: str = "project"):
    """The benchmark's ``n`` X-rays of ``ct``: yields ``(case, camera_from_world (4, 4), XRayImage, start)`` — the
    true pose (``simulate.sample_visible_pose(poses=…)``), the X-ray simulated there with ``renderer``, and the
    intensity-only baseline's perturbed start (about ``refiner``'s centre), all from one generator seeded by
    ``seed``, so that any script that iterates it sees exactly ``run_benchmark``'s cases.

    ``appearance`` (``rendering.appearance.FAMILIES``): the family the X-ray is made in. The project family's X-ray
    is made in every family (and discarded in the others), so that the poses and starts are the same in all of them;
    another family draws its parameters from ``rng([seed, 7, case])`` and records them in the X-ray's
    ``metadata["appearance"]``."""
    from .inputs.xray import XRayImage
    from .rendering.appearance import FAMILIES, case_in_family

    if appearance not in FAMILIES:
        raise ValueError(f"unknown appearance {appearance!r}; choose one of {', '.join(FAMILIES)}")
    rng = np.random.default_rng(seed)
    for case in range(n):
        T = sample_visible_pose(ct, intr, rng, poses=poses)
        record: dict = {}
        project = simulate_xray(ct, intr, T, rng, renderer=renderer, record=record), {"family": "project", **record}
        pixels, params = case_in_family(ct, intr, T, appearance, project, (seed, 7, case))
        xray = XRayImage(pixels, intr, f"case{case}", metadata={"appearance": params})
        yield case, T, xray, perturbed_start(ct, intr, T, refiner.centre_ras, refiner.radius_mm, rng)


def run_benchmark(ct_paths, n: int, out, options: RegistrationOptions, size: int = 256, seed: int = 0,
                  quiet: bool = False, poses: str = "rayemb", prepared: str | None = None,
                  appearance: str = "project", methods=("rayemb", "intensity")) -> list[str]:
    """For each CT, ``n`` X-rays simulated at random poses (``simulate.sample_visible_pose(poses=…)``: ``"rayemb"``
    around the CT centre, or ``"clinical"`` C-arm use about random bone voxels; DeepFluoro-like ``size``²),
    registered by each of ``methods`` (initial, refined; by default RayEmb and the intensity-only baseline:
    refinement from a perturbed true pose); writes the benchmark files into ``out`` and returns the Markdown summary lines. ``prepared``: a
    prepared-CT folder (or ``"auto"``: each CT's own, by content hash) whose weights and templates RayEmb uses.
    ``appearance``: the X-ray family (``rendering.appearance.FAMILIES``) at the same poses; each case's drawn
    parameters go into ``cases.csv`` (``appearance`` column, JSON). ``methods`` (keys of ``STAGES``), on the same
    X-rays: ``rayemb`` (detections + PnP), ``regression`` (the prepared folder's pose-regression network),
    ``both`` (``--initial both``), ``intensity`` (refinement from the perturbed true pose)."""
    from tqdm import tqdm

    from .registration.pipeline import Registrar
    from .rendering.render import DRRRenderer
    from .inputs.volume import load_ct

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [m for m in methods if m not in STAGES]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(STAGES)}")
    intr = Intrinsics.deepfluoro(size)
    rows: list[dict] = []
    missing: dict[str, str] = {}
    folders: list[tuple[str, Path]] = []  # (CT name, prepared folder) of each CT with a pose-regression network
    for ct_path in ct_paths:
        ct = load_ct(ct_path)
        eval_pts = ct.sample_bone_points(EVAL_POINTS, np.random.default_rng(EVAL_POINTS_SEED))
        sim_r = DRRRenderer(ct, intr)
        ct_options = options
        if prepared:
            from .training.prepare import use_prepared

            ct_options = use_prepared(options, ct, prepared)
        if ct_options.regression_path:
            folders.append((Path(ct_path).name, Path(ct_options.regression_path).parent))
        registrar = Registrar(ct, ct_options)
        refiner = registrar.refiner()
        cases = simulated_cases(ct, intr, n, seed, poses, sim_r, refiner, appearance=appearance)
        jobs = {m: (ct_options.replace(refine={"enabled": True}) if m == "intensity" else
                    ct_options.replace(initial=m)) for m in methods}
        for case, T, xray, start in tqdm(cases, total=n, desc=f"evaluate {Path(ct_path).name}", file=sys.stderr,
                                         disable=quiet):
            for name, opt in jobs.items():
                if name in missing:
                    continue
                common = {"ct": Path(ct_path).name, "case": case,
                          "appearance": json.dumps(xray.metadata.get("appearance", {}), sort_keys=True)}
                registrar.options = opt
                try:
                    res = registrar.register(xray, None, start if name == "intensity" else None)
                except ModelUnavailable as exc:
                    missing[name] = str(exc)
                    continue
                except RegistrationError as exc:
                    failed = STAGES[name] if name != "intensity" else STAGES[name][1:]
                    rows += [{**common, "method": m, "mtre_mm": math.inf, "mpd_mm": math.inf, "rot_deg": math.nan,
                              "trans_mm": math.nan, "total_s": math.nan, "error": str(exc)[:120]} for m in failed]
                    continue
                rows += _case_rows(res, name, T, eval_pts, intr, common)
    present = [m for m in METHODS if any(r["method"] == m for r in rows)]
    summary = [summarise(rows, m) for m in present]
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
    where = "RAYEMB_SAMPLER poses" if poses == "rayemb" else "clinical C-arm poses (carm.CLINICAL_SAMPLER)"
    md = [f"Simulated benchmark: {n} random {where} per CT ({', '.join(Path(c).name for c in ct_paths)}), "
          f"DeepFluoro-like {size}² X-rays (appearance: {appearance}, rendering/appearance.py), seed {seed}. "
          f"mTRE over {EVAL_POINTS} fixed bone "
          "points in the camera frame; mPD = mean projection distance at the detector. Intensity-only start = true pose "
          f"perturbed by N(0, {BASELINE_ROT_STD_RAD} rad) rotations about the bone centre and N(0, {BASELINE_TRANS_STD_MM}) mm.", "",
          "| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    md += ["| " + " | ".join(_fmt(s.get(c, math.nan)) for c in SUMMARY_COLUMNS) + " |" for s in summary]
    for name, why in missing.items():
        md += ["", f"{name}: not available — {why}"]
    if any(m in ("regression", "both") for m in methods):
        md += regression_curve_lines(folders)
    (out / "summary.md").write_text("\n".join(md) + "\n")
    plot_mtre(rows, present, out)
    return md


def regression_curve_lines(folders) -> list[str]:
    """The pose-regression network's learning curve (held-out mTRE before refinement per appearance family against
    its training minutes) as each prepared folder recorded it: one table per ``(CT name, folder)``; none for a folder
    without one."""
    from .training.prepare import PreparedCT

    lines = []
    for name, folder in folders:
        curve = (PreparedCT(Path(folder)).readiness.get("pose_regression") or {}).get("learning_curve") or []
        if not curve:
            continue
        fams = [k for k, v in curve[0].items() if isinstance(v, dict)]
        lines += ["", f"Pose-regression network of {name} (prepared folder): held-out mTRE before "
                      "refinement, median (share ≤ 20 mm), against its training minutes",
                  "", "| minutes | steps | " + " | ".join(fams) + " |", "|---|---|" + "---|" * len(fams)]
        lines += [f"| {c['minutes']:.1f} | {c['steps']} | " + " | ".join(
            f"{c[f]['mtre_p50_mm']:.0f} mm ({c[f]['within_20mm_%']:.0f} %)" for f in fams) + " |" for c in curve]
    return lines


def plot_mtre(rows, methods, out: Path) -> None:
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
