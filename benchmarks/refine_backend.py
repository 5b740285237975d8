"""The intensity-only refinement (``rayemb evaluate``'s baseline: near-true starts) with each DRR backend of
the refinement (``RefineOptions.backend``), on the same X-rays (``benchmark_cases``); the
data behind ``RefineOptions.backend = "joseph"`` on near-AP poses (docs/pipeline.md, "Refinement"):

    .venv/bin/python benchmarks/refine_backend.py --n 20 --model Resources/Models/finetuned/pelvis_abdomen_totalseg_3mm.safetensors
"""
import statistics
import time
import argparse
from benchmark_cases import add_case_args, case_setup
from RayEmbRegistrationLib.evaluate import pose_errors, simulated_cases
p = argparse.ArgumentParser(); add_case_args(p, poses="rayemb"); p.add_argument("--backends", nargs="+", default=["nanodrr", "joseph"])
a = p.parse_args()
res = {}
for be in a.backends:
    ct, intr, registrar, refiner, sim, eval_pts = case_setup(a, refine={"backend": be})
    errs, ts = [], []
    for case, T, xray, start in simulated_cases(ct, intr, a.n, a.seed, a.poses, sim, refiner):
        t = time.perf_counter()
        r = registrar.register(xray, None, start)
        ts.append(time.perf_counter() - t)
        errs.append(pose_errors(r.final.camera_from_world, T, eval_pts, intr)["mtre_mm"])
    res[be] = errs
    print(be, "success", sum(e <= 10 for e in errs), "/", len(errs), "median %.2f" % statistics.median(errs), "s %.2f" % statistics.median(ts), flush=True)
print("per case:", [(round(x, 1), round(y, 1)) for x, y in zip(*res.values())])
