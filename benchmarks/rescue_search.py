"""Can a wider pose search rescue the registrations the pipeline does not accept?

For each of ``rayemb evaluate``'s cases (``benchmark_cases``: same CT, poses, network, seed) the X-ray is registered as
the pipeline does; for every result that is not ``accepted`` (or that raised), it records whether the similarity
objective itself prefers the true pose (similarity at the truth vs at the final pose, finest level) and then tries a
rescue: starts rotated about the bone in view by a grid of angles about the camera's x and y axes, scored by one
batch of coarse DRRs, the best few refined with the full schedule (``Refiner.refine_batch``), the most similar of
them and the final pose kept, and judged again by the verdict (with a stale DRR and landmarks: indicative only; the
pipeline's own ``Registrar._rescue`` finalises the pose first). Prints one JSON line per case and writes them all to
``--out``.

    .venv/bin/python benchmarks/rescue_search.py --ct .cache/extra_ct/lung2_image.nrrd --prepared out/prep_lung2 \
        --n 10 --out out/rescue_lung2.json
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmark_cases import add_case_args, case_setup, emit_row

from RayEmbRegistrationLib.registration import rescue# noqa: E402
from RayEmbRegistrationLib.geometry.camera import Camera  # noqa: E402
from RayEmbRegistrationLib.errors import RegistrationError  # noqa: E402
from RayEmbRegistrationLib.evaluate import pose_errors, simulated_cases  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_case_args(p, poses="clinical")
    p.add_argument("--angles", type=float, nargs="+", default=[-30.0, -15.0, 0.0, 15.0, 30.0])
    p.add_argument("--top", type=int, default=4, help="best-scored starts refined with the full schedule")
    p.add_argument("--score-size", type=int, default=32)
    p.add_argument("--all", action="store_true", help="also try the rescue on accepted results")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    # The pipeline's own rescue off: this script runs the search itself, every start refined with the full schedule
    # (the pipeline compares its starts over the coarsest level only, ``rescue_compare_levels``).
    ct, intr, registrar, refiner, sim, eval_pts = case_setup(a, refine={"rescue": False})
    pool = ct.sample_bone_points(4000, np.random.default_rng(3))
    rows = []
    from RayEmbRegistrationLib.registration.verdict import judge, signals

    for case, T, xray, _ in simulated_cases(ct, intr, a.n, a.seed, a.poses, sim, refiner):
        row = {"case": case}
        t = time.perf_counter()
        try:
            res = registrar.register(xray, None, None)
        except RegistrationError as exc:
            row.update(error=str(exc)[:140], s=round(time.perf_counter() - t, 1))
            emit_row(rows, row, a.out)
            continue
        F = res.final.camera_from_world
        s_true, s_final = refiner.similarity(xray.pixels, intr, np.stack([T, F]))
        row.update(mtre_mm=round(pose_errors(F, T, eval_pts, intr)["mtre_mm"], 2), verdict=res.verdict.status,
                   s=round(time.perf_counter() - t, 1), sim_final=round(float(s_final), 4),
                   sim_truth=round(float(s_true), 4), reasons=res.verdict.reasons)
        if res.verdict.status != "accepted" or a.all:
            t = time.perf_counter()
            starts = rescue.rotation_starts([F, res.initial.camera_from_world], intr, pool, a.angles)
            scores = refiner.similarity(xray.pixels, intr, starts, a.score_size)
            order = np.argsort(-scores)[: a.top]
            results = refiner.refine_batch(xray.pixels, intr, [starts[k] for k in order])
            k = int(np.argmax([r.similarity_after for r in results]))
            best = results[k]
            row.update(rescue_s=round(time.perf_counter() - t, 1),
                       rescue_sim=round(best.similarity_after, 4),
                       rescue_mtre_mm=round(pose_errors(best.camera_from_world, T, eval_pts, intr)["mtre_mm"], 2),
                       rescue_each=[(round(r.similarity_after, 4),
                                     round(pose_errors(r.camera_from_world, T, eval_pts, intr)["mtre_mm"], 1))
                                    for r in results])
            if best.similarity_after > s_final:
                from dataclasses import replace

                cand = replace(res, final=Camera(intr, best.camera_from_world), refined=Camera(intr, best.camera_from_world),
                               similarity_after=best.similarity_after)
                row["rescue_verdict"] = judge(signals(cand, ct, xray, refiner)).status
        emit_row(rows, row, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
