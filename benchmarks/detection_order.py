"""Which detections should go to PnP? Right detections among the ``n_bone_keep`` kept, by ranking.

For each of ``rayemb evaluate``'s cases (``benchmark_cases``: same CT, poses, network or prepared folder, seed) the
registrar's bone candidates are detected with full score maps (``LandmarkDetector.detect(heatmaps=True)``), and the
detections are ranked by: the peak score (RayEmb's confidence), the pipeline's peak contrast
(``Detections.contrast``: (peak − q90) / (1 − q90), q90 on 512 spread pixels), and the same statistics on the whole
map — peak − q90, (peak − q90)/(1 − q90), (peak − median)/(1 − median), peak − mean. A detection is right within
``--right-px`` of the true projection (X-ray pixels). Prints, per case, the right ones of all candidates and among the
``n_bone_keep`` best of each ranking, then the sums; writes the rows to ``--out``.

    .venv/bin/python benchmarks/detection_order.py --prepared out/prep_tiles_d --n 20 \
        --out out/order_tiles_d.json
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmark_cases import add_case_args, case_setup, emit_row

from RayEmbRegistrationLib.geometry.camera import Camera  # noqa: E402
from RayEmbRegistrationLib.evaluate import simulated_cases  # noqa: E402


def rankings(d) -> dict[str, np.ndarray]:
    """The candidate orders (higher first) of one ``Detections`` with heatmaps."""
    H = d.heatmaps.reshape(len(d.confidence), -1).astype(np.float64)
    peak = H.max(1)
    q90, med, mean = np.percentile(H, 90, axis=1), np.median(H, axis=1), H.mean(1)
    return {"peak score": d.confidence, "contrast (shipped)": d.contrast, "peak - q90": peak - q90,
            "(peak - q90)/(1 - q90)": (peak - q90) / (1 - q90 + 1e-9),
            "(peak - median)/(1 - median)": (peak - med) / (1 - med + 1e-9), "peak - mean": peak - mean}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_case_args(p, poses="clinical")
    p.add_argument("--right-px", type=float, default=8.0, help="a detection within this many X-ray pixels is right")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    ct, intr, registrar, refiner, sim, _ = case_setup(a)
    det = registrar.detector()
    keep = registrar.options.detection.n_bone_keep
    pts = registrar.bone_candidates()
    rows: list = []
    totals: dict[str, int] = {}
    for case, T, xray, _ in simulated_cases(ct, intr, a.n, a.seed, a.poses, sim, refiner):
        truth = Camera(intr, T).project(pts)
        d = det.detect(xray.pixels, xray.intrinsics, pts, heatmaps=True)
        err = np.linalg.norm(d.uv - truth, axis=1)
        right = np.where(np.isfinite(err), err, np.inf) <= a.right_px
        row = {"case": case, "right_of_all": int(right.sum()), "candidates": len(pts), "kept": keep}
        for name, score in rankings(d).items():
            order = np.argsort(-np.where(d.confidence > 0, score, -np.inf), kind="stable")[:keep]
            row[name] = int(right[order].sum())
            totals[name] = totals.get(name, 0) + row[name]
        emit_row(rows, row, a.out)
    print("right among the kept, summed over the cases:", totals, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
