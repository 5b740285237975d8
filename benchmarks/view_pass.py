"""Per X-ray of ``rayemb evaluate``'s benchmark: the first detection pass's PnP consensus, the view pass's poses,
which pose won, the share of the bone in view at the true pose and the true error — the data behind
``detection.view_pass_if_inliers_below`` (docs/pipeline.md, "View pass").

The X-rays are exactly ``evaluate.run_benchmark``'s (``evaluate.simulated_cases``: same seed, poses and noise),
registered with the view pass forced on (``view_pass_if_inliers_below`` 1), so that one run shows for every case how
strong the first consensus was and what the view pass did with it. Prints one JSON line per case
and writes them all to ``--out``.

Usage:
    .venv/bin/python benchmarks/view_pass.py --poses rayemb \\
        --model Resources/Models/finetuned/pelvis_abdomen_totalseg_3mm.safetensors --out out/vp_ft.json
    .venv/bin/python benchmarks/view_pass.py --poses clinical --prepared out/prep7 --out out/vp_p7.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.geometry.camera import Camera  # noqa: E402
from RayEmbRegistrationLib.errors import RegistrationError  # noqa: E402
from RayEmbRegistrationLib.evaluate import pose_errors, simulated_cases  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_cases import add_case_args, case_setup  # noqa: E402  (the same cases as competitor_margin.py)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_case_args(p, poses="rayemb")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    ct, intr, registrar, refiner, sim, eval_pts = case_setup(a, detection={"view_pass_if_inliers_below": 1.0})
    rows = []
    for case, T, xray, _ in simulated_cases(ct, intr, a.n, a.seed, a.poses, sim, refiner):
        t = time.perf_counter()
        row = {"case": case, "bone_share_in_view_true": registrar.bone_in_view(Camera(intr, T))[1]}
        try:
            res = registrar.register(xray, None, None)
        except RegistrationError as exc:
            row.update(error=str(exc)[:160], s=time.perf_counter() - t)
        else:
            first = [h.inliers for h in res.pnp_hypotheses if h.detection == "all bone"] or [res.inliers]
            row.update(mtre_mm=pose_errors(res.final.camera_from_world, T, eval_pts, intr)["mtre_mm"],
                       s=time.perf_counter() - t, n_correspondences=res.n_correspondences,
                       first_consensus=max(first), verdict=res.verdict.status,
                       hypotheses=[{"inliers": h.inliers, "coarse_similarity": round(h.coarse_similarity, 4),
                                    "chosen": h.chosen, "detection": h.detection} for h in res.pnp_hypotheses])
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
