"""Is the registered pose a local optimum of the image similarity? The data behind the verdict's local check
(``verdict.neighbour_gain``, ``VerdictRule.max_neighbour_gain``; docs/verdict.md).

For each of ``rayemb evaluate``'s X-rays (``benchmark_cases``: same CT, poses, seed) the pipeline registers with its
local check off, then the final pose is scored against the 8 poses turned ±2/±4° about the image's x and y axes
through the bone in view; prints the true error, the verdict without the check, the largest gain of a neighbour
and the seconds it took, then the gains of successes (mTRE ≤ 10 mm) and failures (docs/verdict.md):

    .venv/bin/python benchmarks/neighbour_gain.py --prepared out/prep_pelvis_gen96 --n 20 --out out/lo_pelvis.json
    .venv/bin/python benchmarks/neighbour_gain.py --ct .cache/extra_ct/lung1_image.nrrd --prepared out/prep_lung1 --n 20 --out out/lo_lung1.json
    .venv/bin/python benchmarks/neighbour_gain.py --ct ../shared/data/ct/lumbar_spine_tptbox.nii.gz --n 10 --out out/lo_lumbar.json
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmark_cases import add_case_args, case_setup, emit_row

from RayEmbRegistrationLib.errors import RegistrationError  # noqa: E402
from RayEmbRegistrationLib.evaluate import pose_errors, simulated_cases  # noqa: E402
from RayEmbRegistrationLib.registration.verdict import neighbour_gain  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_case_args(p, poses="clinical")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    ct, intr, registrar, refiner, sim, eval_pts = case_setup(a, refine={"local_check": False})
    pool = registrar.view_pool()
    rows: list[dict] = []
    for case, T, xray, _ in simulated_cases(ct, intr, a.n, a.seed, a.poses, sim, refiner):
        try:
            res = registrar.register(xray, None, None)
        except RegistrationError as exc:
            print(f"case {case}: {str(exc)[:100]}", flush=True)
            continue
        t = time.perf_counter()
        gain, ax, ay = neighbour_gain(refiner, xray, res.final, pool)
        emit_row(rows, {"case": case, "mtre_mm": pose_errors(res.final.camera_from_world, T, eval_pts, intr)["mtre_mm"],
                        "verdict_without": res.verdict.status, "gain": gain, "ax_deg": ax, "ay_deg": ay,
                        "s": time.perf_counter() - t}, a.out)
    ok = sorted(round(r["gain"], 4) for r in rows if r["mtre_mm"] <= 10)
    bad = sorted(round(r["gain"], 4) for r in rows if not r["mtre_mm"] <= 10)
    print(f"successes' largest neighbour gain: {ok}\nfailures':                        {bad}")
    print("accepted failures without the check:", [(r["case"], round(r["gain"], 4)) for r in rows
                                                   if not r["mtre_mm"] <= 10 and r["verdict_without"] == "accepted"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
