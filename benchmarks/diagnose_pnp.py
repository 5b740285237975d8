"""Why a registration fails: per X-ray of ``rayemb evaluate``'s benchmark, how many detections are right, and which
PnP poses they support.

For the same simulated X-rays as ``rayemb evaluate --poses clinical|rayemb`` (seed ``--seed``: same cases), with a
prepared-CT folder's network (or ``--model``): the pipeline's bone candidates (``Registrar.bone_candidates``) are
detected, and each detection is compared with the point's true projection — *correct* = within the RANSAC inlier
threshold (``options.pnp.threshold_px``, 10 px of the 256 px grid). Printed per case:

  * ``in view``: share of the candidates that project into the X-ray (close-ups show a small part of the bone);
  * ``correct``: correct detections among all candidates, and among the ``n_bone_keep`` (600) most confident that PnP
    gets;
  * ``hypotheses``: the plausible poses of sequential RANSAC on those (``pose.solve_pnp_hypotheses``, as the
    pipeline) as (inliers, of which correct) — a pose whose inliers are mostly wrong detections agreeing with each
    other is a wrong pose, however large its consensus.

``--ransac-variants``: also, per case, the correct detections among the 50 / 100 / 200 most confident, and the
largest consensus (inliers, of which correct) that other robust estimators find on the same 600 (OpenCV's
``solvePnPRansac``: MAGSAC with 10,000 and 200,000 iterations, PROSAC — samples the most confident first —,
USAC_ACCURATE, classic EPnP-RANSAC with 100,000): whether a failure is PnP's or the detections'.

``--oracle``: also, per case, the error of the pose PnP gives (mTRE, rotation, depth error of the bone's centroid)
from the pipeline's RANSAC on the 600 kept, and from only the kept detections within 10 / 5 / 3 px of their true
projection (told by the truth): how precise detections must be for PnP to fix depth and out-of-plane rotation.

Usage:
    .venv/bin/python benchmarks/diagnose_pnp.py --prepared out/prep7 --n 20 --poses clinical
    .venv/bin/python benchmarks/diagnose_pnp.py --prepared out/prep_pelvis_c --cases 6 7 11 17 --ransac-variants
    .venv/bin/python benchmarks/diagnose_pnp.py --prepared out/prep_pelvis_c --cases 0 1 2 5 --oracle
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics  # noqa: E402
from RayEmbRegistrationLib.evaluate import EVAL_POINTS, EVAL_POINTS_SEED  # noqa: E402
from RayEmbRegistrationLib.options import RegistrationOptions  # noqa: E402
from RayEmbRegistrationLib.registration.pipeline import Registrar  # noqa: E402
from RayEmbRegistrationLib.registration.plausibility import is_in_view  # noqa: E402
from RayEmbRegistrationLib.registration.pose import PoseError, solve_pnp_hypotheses  # noqa: E402
from RayEmbRegistrationLib.training.prepare import use_prepared  # noqa: E402
from RayEmbRegistrationLib.rendering.render import DRRRenderer  # noqa: E402
from RayEmbRegistrationLib.resources import SAMPLE_CT  # noqa: E402
from RayEmbRegistrationLib.rendering.simulate import perturbed_start, sample_visible_pose, simulate_xray  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402


def ransac_variants(points, uv, intr, thr: float, correct: np.ndarray) -> str:
    """The largest consensus of other robust PnP estimators on ``points``/``uv`` (sorted most confident first, as
    PROSAC needs): "name (inliers, of which ``correct``)" per estimator."""
    import cv2

    X = np.ascontiguousarray(points - points.mean(0), dtype=np.float64)
    x = np.ascontiguousarray(uv, dtype=np.float64)
    out = []
    for name, flags, iterations in (("MAGSAC 10k", cv2.USAC_MAGSAC, 10_000), ("MAGSAC 200k", cv2.USAC_MAGSAC, 200_000),
                                    ("PROSAC", cv2.USAC_PROSAC, 10_000), ("USAC_ACCURATE", cv2.USAC_ACCURATE, 100_000),
                                    ("EPnP-RANSAC 100k", cv2.SOLVEPNP_EPNP, 100_000)):
        cv2.setRNGSeed(0)
        ok, _, _, inl = cv2.solvePnPRansac(X, x, intr.K, np.zeros(5), iterationsCount=iterations,
                                           reprojectionError=thr, confidence=0.9999, flags=flags)
        out.append(f"{name} ({len(inl)}, {int(correct[inl.ravel()].sum())})" if ok and inl is not None else f"{name} none")
    return ", ".join(out)


def oracle_pnp(points, uv, err, intr, thr: float, T_true, seed: int, eval_points) -> str:
    """PnP (``pose.solve_pnp``, the pipeline's RANSAC threshold ``thr``) on all of ``points``/``uv`` and on those whose
    detection error ``err`` is within 10 / 5 / 3 px: "which: mTRE mm (over ``eval_points``, as ``rayemb evaluate``),
    rotation °, depth error of the points' centroid mm (+: too far from the source)" each."""
    from scipy.spatial.transform import Rotation

    from RayEmbRegistrationLib.evaluate import pose_errors
    from RayEmbRegistrationLib.registration.pose import solve_pnp

    c = points.mean(0)

    def describe(M) -> str:
        rot = np.degrees(np.linalg.norm(Rotation.from_matrix(M[:3, :3] @ T_true[:3, :3].T).as_rotvec()))
        dz = (M[:3, :3] @ c + M[:3, 3])[2] - (T_true[:3, :3] @ c + T_true[:3, 3])[2]
        return f"{pose_errors(M, T_true, eval_points, intr)['mtre_mm']:.0f} mm, {rot:.1f}°, depth {dz:+.0f} mm"

    out = []
    for name, m in (("RANSAC", np.ones(len(err), bool)), ("≤ 10 px", err <= 10), ("≤ 5 px", err <= 5), ("≤ 3 px", err <= 3)):
        try:
            out.append(f"{name}: {describe(solve_pnp(points[m], uv[m], intr, threshold_px=thr, seed=seed).camera_from_world)}")
        except PoseError:
            out.append(f"{name}: none")
    return "; ".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", default=str(SAMPLE_CT))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prepared", help="a prepared-CT folder (rayemb prepare)")
    src.add_argument("--model", help="network weights (.safetensors)")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--poses", choices=("clinical", "rayemb"), default="clinical")
    p.add_argument("--seed", type=int, default=0, help="rayemb evaluate's --seed (the same cases)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ransac-variants", action="store_true", help="compare other robust PnP estimators (slower)")
    p.add_argument("--cases", type=int, nargs="+", default=None, help="only these cases (default: all n)")
    p.add_argument("--oracle", action="store_true", help="PnP errors from the truly correct detections only")
    p.add_argument("--hypotheses", type=int, default=None,
                   help="sequential-RANSAC poses to list (default: the pipeline's pnp.hypotheses)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ct = load_ct(a.ct)
    intr = Intrinsics.deepfluoro(256)
    opts = RegistrationOptions(seed=a.seed)
    opts = use_prepared(opts, ct, a.prepared) if a.prepared else opts.replace(model_path=a.model)
    reg = Registrar(ct, opts)
    refiner, det = reg.refiner(), reg.detector()
    bone = reg.bone_candidates()
    thr = opts.pnp.threshold_px(intr)
    keep = opts.detection.n_bone_keep
    rng = np.random.default_rng(a.seed)  # the draws of evaluate.run_benchmark, in its order
    sim = DRRRenderer(ct, intr)
    eval_pts = ct.sample_bone_points(EVAL_POINTS, np.random.default_rng(EVAL_POINTS_SEED))
    print(f"{ct.name}: {len(bone)} bone candidates, {keep} kept, correct = within {thr:.1f} px of the true projection\n")
    print("| case | in view | correct / candidates | correct / kept | PnP hypotheses (inliers, correct) |")
    print("|---|---|---|---|---|")
    for case in range(a.n):
        T = sample_visible_pose(ct, intr, rng, poses=a.poses)
        pixels = simulate_xray(ct, intr, T, rng, renderer=sim)
        perturbed_start(ct, intr, T, refiner.centre_ras, refiner.radius_mm, rng)
        if a.cases is not None and case not in a.cases:
            continue
        d = det.detect(pixels, intr, bone, fast=opts.detection.fast)
        truth = Camera(intr, T).project(bone)
        correct = np.linalg.norm(d.uv - truth, axis=1) <= thr
        kept = np.argsort(-d.confidence, kind="stable")[:keep]
        try:
            hyps = solve_pnp_hypotheses(bone[kept], d.uv[kept], intr, threshold_px=thr, seed=opts.seed,
                                        iterations=opts.pnp.ransac_iterations, confidence=opts.pnp.ransac_confidence,
                                        max_hypotheses=max(1, a.hypotheses or opts.pnp.hypotheses),
                                        is_plausible=lambda M: is_in_view(ct, Camera(intr, M)))
            text = ", ".join(f"({h.n_inliers}, {int(correct[kept][h.inliers].sum())})" for h in hyps)
        except PoseError:
            text = "none plausible"
        inview = intr.contains_pixels(truth)
        print(f"| {case} | {100 * inview.mean():.0f} % | {correct.sum()} / {len(bone)} | {correct[kept].sum()} / "
              f"{len(kept)} | {text} |", flush=True)
        if a.ransac_variants:
            ck = correct[kept]
            print(f"|   | most confident 50 / 100 / 200: {ck[:50].sum()} / {ck[:100].sum()} / {ck[:200].sum()} correct | | "
                  f"| {ransac_variants(bone[kept], d.uv[kept], intr, thr, ck)} |", flush=True)
        if a.oracle:
            err = np.linalg.norm(d.uv[kept] - truth[kept], axis=1)
            print(f"|   | PnP pose errors, kept detections within 10 / 5 / 3 px: {(err <= 10).sum()} / {(err <= 5).sum()} / "
                  f"{(err <= 3).sum()} (median of those within {thr:.0f}: {np.median(err[err <= thr]):.1f} px) | | | "
                  f"{oracle_pnp(bone[kept], d.uv[kept], err, intr, thr, T, opts.seed, eval_pts)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
