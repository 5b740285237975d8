"""Is the registered pose the only one that explains the X-ray? Per X-ray of ``rayemb evaluate``'s benchmark: the
registration's result and true error, then a *competitor search* around its final pose — the data behind the
verdict's ambiguity signal (docs/verdict.md).

Repeating anatomy (a lumbar spine: one vertebra looks like the next) and close-ups that show little of the bone
give wrong poses whose DRR matches the X-ray as well as the right one: their footprint similarity is as high as a
success's, so the verdict accepts them. A pose is trustworthy only if no *different* pose explains the image about
as well. The search: start the refinement from the final pose shifted in the image plane (``--shift-mm`` in 8
directions, twice that along the 4 axes, camera frame), every level (``--levels 1``: the coarsest only), all
starts in one batch; the final pose itself is start 0, so that every similarity is on the same grid. For each
start: its similarity, how far (mean bone-point distance, mm) it ended from the final pose, and its true error.

``--rule-levels L ...`` measures instead the pipeline's own check (``verdict.competitor_margin``: 4 starts at
±``refine.competitor_shift_mm``) run over the first L refinement levels only (0: every level), each L on the same
registration, with its cost in seconds: the data for ``refine.competitor_levels``.

The X-rays are exactly ``evaluate.run_benchmark``'s (``evaluate.simulated_cases``). Prints one JSON line per case
and writes them all to ``--out``; ``--table OUT.json ...`` prints the separation of successes and failures by the
margin (the final's similarity minus the best competitor's that ended more than ``--distinct-mm`` away).

Usage:
    .venv/bin/python benchmarks/competitor_margin.py --ct ../shared/data/ct/lumbar_spine_tptbox.nii.gz \\
        --poses clinical --n 20 --out out/amb_lumbar.json
    .venv/bin/python benchmarks/competitor_margin.py --poses clinical --prepared out/prep10 --out out/amb_p10.json
    .venv/bin/python benchmarks/competitor_margin.py --table out/amb_lumbar.json out/amb_p10.json
    .venv/bin/python benchmarks/competitor_margin.py --ct .cache/extra_ct/lung1_image.nrrd --n 10 \
        --rule-levels 1 2 0 --out out/amb_rule_lung1.json
    .venv/bin/python benchmarks/competitor_margin.py --table out/amb_rule_lung1.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.errors import RegistrationError  # noqa: E402
from RayEmbRegistrationLib.evaluate import pose_errors, simulated_cases  # noqa: E402
from RayEmbRegistrationLib.registration.verdict import competitor_margin, shifted_poses, signal_points  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_cases import add_case_args, case_setup, emit_row  # noqa: E402  (the same cases as view_pass.py)


def shifted_starts(camera_from_world: np.ndarray, shift_mm: float) -> list[np.ndarray]:
    """The final pose moved in the image plane (camera x / y): 8 directions at ``shift_mm``, 4 axes at twice it."""
    ring = [(shift_mm * math.cos(k * math.pi / 4), shift_mm * math.sin(k * math.pi / 4)) for k in range(8)]
    axes = [(2 * shift_mm, 0.0), (-2 * shift_mm, 0.0), (0.0, 2 * shift_mm), (0.0, -2 * shift_mm)]
    return shifted_poses(camera_from_world, ring + axes)


def rule_table(rows) -> int:
    """Per case the pipeline rule's margin at each level count, and the separation of successes and failures."""
    levels = sorted({c["levels"] for r in rows for c in r["rule"]}, key=lambda L: L or 99)
    name = {L: f"{L} level{'s' if L != 1 else ''}" if L else "every level" for L in levels}
    print("| source | case | mTRE mm | verdict | footprint sim | " + " | ".join(f"margin, {name[L]}" for L in levels)
          + " |\n|---|---|---|---|---|" + "---|" * len(levels))
    for r in rows:
        m = {c["levels"]: c["margin"] for c in r["rule"]}
        print(f"| {r['source']} | {r['case']} | {r['mtre_mm']:.1f} | {r['verdict']} | {r['footprint_similarity']:.3f} | "
              + " | ".join(f"{m.get(L, math.nan):+.4f}" for L in levels) + " |")
    for L in levels:
        ok = sorted(c["margin"] for r in rows for c in r["rule"] if c["levels"] == L and r["mtre_mm"] <= 10)
        bad = sorted(c["margin"] for r in rows for c in r["rule"] if c["levels"] == L and not r["mtre_mm"] <= 10)
        secs = [c["s"] for r in rows for c in r["rule"] if c["levels"] == L]
        print(f"\n{name[L]}: median {np.median(secs):.1f} s per check\n  successes' margins: "
              f"{[round(x, 4) for x in ok]}\n  failures' margins:  {[round(x, 4) for x in bad]}")
    return 0


def table(paths, distinct_mm: float) -> int:
    rows = [r for p in paths for r in json.loads(Path(p).read_text()) if "mtre_mm" in r]
    if rows and "rule" in rows[0]:
        return rule_table(rows)
    print("| source | case | mTRE mm | verdict | footprint sim | margin | best competitor: mTRE to truth, "
          "distance from final |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        comp = [c for c in r["competitors"] if c["from_final_mm"] > distinct_mm]
        best = max(comp, key=lambda c: c["similarity"]) if comp else None
        margin = r["final_similarity"] - best["similarity"] if best else math.inf
        r["_margin"] = margin
        print(f"| {r['source']} | {r['case']} | {r['mtre_mm']:.1f} | {r['verdict']} | {r['footprint_similarity']:.3f} "
              f"| {margin:+.4f} | " + (f"{best['true_mtre_mm']:.1f}, {best['from_final_mm']:.0f}" if best else "—")
              + " |")
    ok = sorted(r["_margin"] for r in rows if r["mtre_mm"] <= 10)
    bad = sorted(r["_margin"] for r in rows if not r["mtre_mm"] <= 10)
    print(f"\nsuccesses' margins: {[round(x, 4) for x in ok]}\nfailures' margins:  {[round(x, 4) for x in bad]}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", nargs="+", default=None, metavar="JSON")
    add_case_args(p, poses="clinical")
    p.add_argument("--shift-mm", type=float, default=30.0)
    p.add_argument("--levels", type=int, default=None, help="refinement levels of the search (default: all; 1: the coarsest)")
    p.add_argument("--distinct-mm", type=float, default=10.0)
    p.add_argument("--rule-levels", type=int, nargs="+", default=None, metavar="L",
                   help="measure the pipeline's 4-start check over the first L levels (0: every level) instead")
    p.add_argument("--out")
    a = p.parse_args()
    if a.table:
        return table(a.table, a.distinct_mm)
    if not a.out:
        p.error("--out is required (or --table JSON ...)")
    # The registration's own competitor check off: this script runs the wider search itself, and its verdict
    # column is the rule without that check (the "before" of docs/verdict.md).
    ct, intr, registrar, refiner, sim, eval_pts = case_setup(a, refine={"competitor_check": False})
    source = f"{Path(a.ct).name.split('.')[0]}:{a.prepared or a.model or 'bundled'}"
    rows = []
    pts = signal_points(ct) if a.rule_levels else None  # the check's bone points, drawn once per CT (as the pipeline)
    for case, T, xray, _ in simulated_cases(ct, intr, a.n, a.seed, a.poses, sim, refiner):
        t = time.perf_counter()
        row = {"source": source, "case": case}
        try:
            res = registrar.register(xray, None, None)
        except RegistrationError as exc:
            row.update(error=str(exc)[:160], s=time.perf_counter() - t)
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        t_reg = time.perf_counter() - t
        F = res.final.camera_from_world
        sig = res.verdict.signals
        row.update(mtre_mm=pose_errors(F, T, eval_pts, intr)["mtre_mm"], s=t_reg, verdict=res.verdict.status,
                   footprint_similarity=sig.get("footprint_similarity"), final_agreement=sig.get("final_agreement"),
                   inliers=res.inliers, similarity_after=res.similarity_after)
        if a.rule_levels:
            row["rule"] = []
            for L in a.rule_levels:
                t = time.perf_counter()
                margin, dist = competitor_margin(refiner, xray, res.final, pts, registrar.options.refine.competitor_shift_mm,
                                                 max_levels=L or None)
                row["rule"].append({"levels": L, "margin": margin, "distance_mm": dist, "s": time.perf_counter() - t})
            emit_row(rows, row, a.out)
            continue
        t = time.perf_counter()
        starts = [F] + shifted_starts(F, a.shift_mm)
        results = refiner.refine_batch(xray.pixels, intr, starts, max_levels=a.levels)
        comps = []
        for r in results[1:]:
            Tc = r.camera_from_world
            comps.append({"similarity": round(float(r.similarity_after), 5),
                          "from_final_mm": round(pose_errors(Tc, F, eval_pts, intr)["mtre_mm"], 1),
                          "true_mtre_mm": round(pose_errors(Tc, T, eval_pts, intr)["mtre_mm"], 1)})
        row.update(final_similarity=float(results[0].similarity_after), competitors=comps,
                   search_s=time.perf_counter() - t)
        emit_row(rows, row, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
