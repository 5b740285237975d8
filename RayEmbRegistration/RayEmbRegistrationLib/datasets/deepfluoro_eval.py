"""The DeepFluoro benchmark as the RayEmb paper scores it: every frame (or a subset) of a user's copy through several
methods, per-specimen and pooled tables.

Owns: ``run_deepfluoro`` (frames × methods → ``cases.csv``, resumable), ``STANDARD_START`` and the tables
(``summary.csv``, ``summary.md``, ``mtre.png``).

Methods (``METHODS``):

* ``rayemb`` — the pipeline as ``rayemb register`` runs it (detection + PnP + refinement + verdict), with the
  network of the protocol: a prepared folder of the specimen's CT (``--prepared DIR|auto``) or the general network.
* ``fixed`` — the paper's "Fixed Landmark" column (``detection.fixed_landmarks``): a heatmap network for the
  specimen's 14 landmarks trained on DRRs of its CT (``fixed_minutes`` per specimen, cached in
  ``out/fixed_landmarks/``), PnP + RANSAC on its confident detections, then the same refinement.
* ``intensity`` — the RayEmb paper's "DiffDRR" column: the intensity refinement alone from an uninformed standard
  start, ``STANDARD_START``: an AP view (C-arm 0°/0°, ``carm.carm_camera_from_world``) with the CT's centre halfway
  between source and detector (DiffPose's standard DeepFluoro start), whatever the frame shows.

Scores, over the specimen's 14 landmarks (``evaluate.pose_errors``): mTRE (mean 3D distance of the landmarks in the
camera frame of the estimate vs the truth), mPD (mean projection distance at the detector, mm), their 25th / 50th /
95th percentiles over frames, GFR@10 / GFR@5 (share of frames with mTRE above 10 / 5 mm), the verdicts, runtime, and each row's protocol (which network found the start).
A frame that raises (too few detections, …) counts as a failure with infinite error.

Published rows: the RayEmb paper's per-specimen table is not available to this project as numbers (its paper and
poster give it as an image), so none are bundled; ``published=`` takes a CSV a user transcribed from the paper
(columns ``source, specimen, method`` and any of this table's columns) and prints it beside these figures.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np

__all__ = ["METHODS", "STANDARD_START", "run_deepfluoro", "standard_start", "summarise_deepfluoro"]

METHODS = ("rayemb", "fixed", "intensity")
#: the uninformed start of the intensity-only method: C-arm angles (deg) and the CT centre's share of the SDD
STANDARD_START = {"primary_deg": 0.0, "secondary_deg": 0.0, "isocentre_share_of_sdd": 0.5}

_FIELDS = ["specimen", "frame", "method", "protocol", "mtre_mm", "mpd_mm", "rot_deg", "trans_mm", "verdict",
           "final_stage", "total_s", "visible_landmarks", "mirrored", "rotated", "error"]


def standard_start(ct, intrinsics) -> np.ndarray:
    """(4, 4) ``camera_from_world`` of ``STANDARD_START`` for ``ct`` seen by ``intrinsics``."""
    from ..geometry.carm import carm_camera_from_world

    s = STANDARD_START
    return carm_camera_from_world(s["primary_deg"], s["secondary_deg"],
                                  s["isocentre_share_of_sdd"] * intrinsics.source_to_detector_mm, ct.center_ras)


def _done(path: Path) -> set[tuple[str, str, str]]:
    if not path.is_file():
        return set()
    with open(path, newline="") as f:
        return {(r["specimen"], r["frame"], r["method"]) for r in csv.DictReader(f)}


def _parse_frames(spec: str | None, ids: list[str]) -> list[str]:
    """``"0-9,12"`` → those frame ids that exist (all when None)."""
    if not spec:
        return ids
    want: set[int] = set()
    try:
        for part in str(spec).split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                want.update(range(a, b + 1))
            elif part:
                want.add(int(part))
    except ValueError:
        raise ValueError(f"--frames {spec!r}: give frame numbers and ranges, e.g. 0-9,12") from None
    return [i for i in ids if i.isdigit() and int(i) in want]


def run_deepfluoro(path, out, options, specimens=None, frames: str | None = None, methods=METHODS,
                   prepared: str | None = None, fixed_minutes: float = 5.0, progress=None, cancel=None,
                   log=print) -> list[str]:
    """Run ``methods`` on the frames of ``specimens`` (numbers or names; all by default) of the DeepFluoro file
    ``path``; rows appended to ``out/cases.csv`` as they finish (a rerun skips the rows already there), then the
    tables. ``prepared``: a prepared-CT folder (one specimen) or ``"auto"`` (each specimen's CT in the cache).
    Returns the Markdown lines of ``summary.md``."""
    from ..detection.fixed_landmarks import fixed_landmark_pose
    from ..errors import ModelUnavailable
    from ..evaluate import pose_errors
    from ..progress import check_cancel
    from ..registration.pipeline import Registrar
    from ..training.prepare import use_prepared
    from .deepfluoro import DeepFluoroFile

    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}: choose from {', '.join(METHODS)}")
    out = Path(out)
    cases = out / "cases.csv"
    done = _done(cases)
    with DeepFluoroFile(path) as f:
        chosen = [f.specimen(s) for s in (specimens or f.specimens)]
        if prepared and prepared != "auto" and len(chosen) > 1:
            raise ValueError("--prepared DIR belongs to one specimen's CT: give --specimen N, or --prepared auto")
        jobs = [(sp, fid, m) for sp in chosen for fid in _parse_frames(frames, sp.frame_ids()) for m in methods]
        todo = [j for j in jobs if (j[0].id, j[1], j[2]) not in done]
        log(f"DeepFluoro {Path(path).name}: {len(jobs)} runs ({len(jobs) - len(todo)} already in {cases})")
        out.mkdir(parents=True, exist_ok=True)  # only once the file, the specimens and the frames are known good
        new_file = not cases.is_file()
        with open(cases, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=_FIELDS)
            if new_file:
                w.writeheader()
            current, registrar, lm, protocol, fr = None, None, None, "", None
            for k, (sp, fid, method) in enumerate(todo):
                check_cancel(cancel, "DeepFluoro benchmark")
                if current is not sp:
                    ct, lm = sp.ct(), sp.landmarks()
                    opts = use_prepared(options, ct, prepared) if prepared else options
                    opts = opts.replace(initial="rayemb")  # the paper's method: detections + PnP, nothing else
                    protocol = ("patient-prepared " + Path(opts.model_path).parent.name) if prepared else \
                        ("weights " + Path(opts.model_path).name if opts.model_path else "general network")
                    registrar, current = Registrar(ct, opts), sp
                    fixed = _fixed_network(out, sp, ct, lm, fixed_minutes, log, cancel) if "fixed" in methods else None
                if fr is None or (fr.specimen, fr.frame_id) != (sp.id, fid):  # read once for all its methods
                    fr = sp.frame(fid)
                how = {"rayemb": protocol, "intensity": "standard AP start",
                       "fixed": f"fixed-landmark network ({fixed_minutes:g} min)"}[method]
                row = {"specimen": sp.id, "frame": fid, "method": method, "protocol": how,
                       "visible_landmarks": len(fr.visible_landmarks()), "mirrored": int(fr.mirrored),
                       "rotated": int(fr.rotated), "error": ""}
                t0 = time.perf_counter()
                try:
                    start = standard_start(ct, fr.xray.intrinsics) if method == "intensity" else None
                    if method == "fixed":
                        start = fixed_landmark_pose(fixed[0], fixed[1], fr.xray, lm, seed=options.seed).camera_from_world
                    res = registrar.register(fr.xray, initial_camera_from_world=start, cancel=cancel)
                    row.update(pose_errors(res.final.camera_from_world, fr.truth.camera_from_world, lm.ras,
                                           fr.truth.intrinsics))
                    row.update(verdict=res.verdict.status if res.verdict is not None else "",
                               final_stage=res.final_stage, total_s=res.timings_s.get("total", math.nan))
                except ModelUnavailable:
                    raise
                except ValueError as exc:  # RegistrationError and bad input: a failure of this method on this frame
                    row.update(mtre_mm=math.inf, mpd_mm=math.inf, rot_deg=math.nan, trans_mm=math.nan, verdict="",
                               final_stage="", total_s=time.perf_counter() - t0, error=str(exc)[:200])
                w.writerow(row)
                fh.flush()
                if progress:
                    progress((k + 1) / max(1, len(todo)), f"{sp.id}/{fid} {method}: mTRE {row['mtre_mm']:.2f} mm")
    return write_tables(out, published=None)


def _fixed_network(out: Path, sp, ct, lm, minutes: float, log, cancel):
    """The specimen's fixed-landmark network: ``out/fixed_landmarks/<specimen>.safetensors``, trained once."""
    from ..detection.fixed_landmarks import load_fixed_landmarks, train_fixed_landmarks

    path = out / "fixed_landmarks" / f"{sp.id}.safetensors"
    if not path.is_file():
        train_fixed_landmarks(ct, lm, path, minutes=minutes, cancel=cancel, log=log)
    return load_fixed_landmarks(path)


def _read_cases(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("mtre_mm", "mpd_mm", "total_s"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else math.nan
    return rows


def summarise_deepfluoro(rows: list[dict]) -> list[dict]:
    """One summary row per (specimen, method) and per method pooled over specimens."""
    def stats(rs: list[dict]) -> dict:
        m = np.array([r["mtre_mm"] for r in rs], float)
        m = np.where(np.isfinite(m), m, np.inf)
        mpd = np.array([r["mpd_mm"] for r in rs], float)
        t = np.array([r["total_s"] for r in rs], float)
        def pct(a, q):  # a failed frame (inf) ranks above every finite one; a percentile that touches one is inf
            if not len(a):
                return math.nan
            v = float(np.percentile(np.where(np.isfinite(a), a, 1e12), q))
            return math.inf if v > 1e9 else v

        return {"n": len(rs), "mTRE_p25_mm": pct(m, 25), "mTRE_p50_mm": pct(m, 50), "mTRE_p95_mm": pct(m, 95),
                "mPD_p50_mm": pct(mpd[np.isfinite(mpd)], 50) if np.isfinite(mpd).any() else math.inf,
                "GFR@10mm_%": 100.0 * float(np.mean(m > 10)), "GFR@5mm_%": 100.0 * float(np.mean(m > 5)),
                "accepted_%": 100.0 * float(np.mean([r["verdict"] == "accepted" for r in rs])),
                "accepted_failures": int(sum(r["verdict"] == "accepted" and not r["mtre_mm"] <= 10 for r in rs)),
                "runtime_p50_s": pct(t[np.isfinite(t)], 50) if np.isfinite(t).any() else math.nan,
                "protocol": ", ".join(sorted({r["protocol"] for r in rs}))}

    out = []
    specimens = sorted({r["specimen"] for r in rows})
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
        for s in specimens:
            rs = [r for r in rows if r["method"] == method and r["specimen"] == s]
            if rs:
                out.append({"specimen": s, "method": method, **stats(rs)})
        out.append({"specimen": "pooled", "method": method, **stats([r for r in rows if r["method"] == method])})
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.2f}")
    return str(v)


def write_tables(out, published: str | None = None) -> list[str]:
    """``summary.csv``, ``summary.md`` and ``mtre.png`` from ``out/cases.csv`` (and a user's ``published`` CSV)."""
    out = Path(out)
    rows = _read_cases(out / "cases.csv")
    summ = summarise_deepfluoro(rows)
    cols = ["specimen", "method", "n", "mTRE_p25_mm", "mTRE_p50_mm", "mTRE_p95_mm", "mPD_p50_mm", "GFR@10mm_%",
            "GFR@5mm_%", "accepted_%", "accepted_failures", "runtime_p50_s", "protocol"]
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in summ:
            w.writerow({c: r[c] for c in cols})
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in summ]
    if published:
        with open(published, newline="") as f:
            pub = list(csv.DictReader(f))
        md += ["", f"Published (transcribed by the user, {Path(published).name}):", "",
               "| " + " | ".join(pub[0].keys()) + " |", "|" + "---|" * len(pub[0])]
        md += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in pub]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    _plot(out / "mtre.png", rows)
    (out / "run.json").write_text(json.dumps({"methods": sorted({r["method"] for r in rows}),
                                              "standard_start": STANDARD_START, "n_rows": len(rows)}, indent=1))
    return md


def _plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specimens = sorted({r["specimen"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(specimens) * len(methods), 3.6))
    pos, labels = [], []
    for i, s in enumerate(specimens):
        for j, m in enumerate(methods):
            v = np.array([r["mtre_mm"] for r in rows if r["specimen"] == s and r["method"] == m], float)
            v = np.clip(np.where(np.isfinite(v), v, 1e3), 1e-2, 1e3)
            p = i * (len(methods) + 1) + j
            ax.boxplot([v], positions=[p], widths=0.7)
            pos.append(p)
            labels.append(f"{s}\n{m}")
    ax.set_yscale("log")
    ax.axhline(10, color="grey", ls="--", lw=0.8)
    ax.set_xticks(pos, labels, fontsize=7)
    ax.set_ylabel("mTRE over the 14 landmarks (mm; 1000 = failed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
