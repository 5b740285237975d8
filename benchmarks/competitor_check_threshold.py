"""The pipeline with the competitor check run for results above a footprint similarity too
(``RefineOptions.competitor_check_below``), per X-ray of ``rayemb evaluate``'s cases (``benchmark_cases``): true error,
verdict, competitor margin and distance, footprint similarity, seconds; the data behind ``competitor_check_below`` = 1.0 (docs/verdict.md):

    .venv/bin/python benchmarks/competitor_check_threshold.py --prepared DIR --n 20 --below 1.0
    .venv/bin/python benchmarks/competitor_check_threshold.py --prepared DIR --n 20 --below 0.975
"""
import statistics
import time
import argparse
from benchmark_cases import add_case_args, case_setup
from RayEmbRegistrationLib.evaluate import pose_errors, simulated_cases
p = argparse.ArgumentParser(); add_case_args(p, poses="clinical"); p.add_argument("--below", type=float, default=1.0)
a = p.parse_args()
ct, intr, registrar, refiner, sim, eval_pts = case_setup(a, refine={"competitor_check_below": a.below})
rows = []
for case, T, xray, _ in simulated_cases(ct, intr, a.n, a.seed, a.poses, sim, refiner):
    t = time.perf_counter()
    try:
        res = registrar.register(xray, None, None)
    except Exception as exc:
        print(case, "error", exc); continue
    e = pose_errors(res.final.camera_from_world, T, eval_pts, intr)["mtre_mm"]
    sig = res.verdict.signals
    rows.append((case, e, res.verdict.status, time.perf_counter() - t))
    print(f"{case} mtre {e:.2f} {res.verdict.status} margin {sig.get('competitor_margin', float('nan')):.4f} "
          f"dist {sig.get('competitor_distance_mm', float('nan')):.1f} fp {sig.get('footprint_similarity'):.4f} "
          f"t {time.perf_counter() - t:.1f} comp {res.timings_s.get('competitors', 0):.1f}", flush=True)
ok = sum(e <= 10 for _, e, _, _ in rows)
acc_bad = sum(e > 10 and s == "accepted" for _, e, s, _ in rows)
acc_good = sum(e <= 10 and s == "accepted" for _, e, s, _ in rows)
print(f"success {ok}/{len(rows)}, accepted successes {acc_good}, accepted failures {acc_bad}, median s {statistics.median(r[3] for r in rows):.2f}")
