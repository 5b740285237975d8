"""Which image similarity can the X-ray's appearance not fool? Candidate similarities at the true pose and at poses
near it, per appearance family, on the same X-rays.

For ``--n`` clinical X-rays of a CT (``rayemb evaluate``'s poses, seed ``--seed``), each made in every ``--appearance``
family (``rendering/appearance.py``), the refinement's DRR (Joseph's projector, 3-mm CT, the finest 96² grid) is
compared with the X-ray at the true pose and at ``--offsets`` poses perturbed about the bone centre (rotations
N(0, σ_r), translations N(0, σ_t) in the camera frame: the size of the refinement's last steps and of a near miss).
Printed per family and similarity:

* ``at truth``: the median value at the true pose (what an absolute verdict threshold reads: the verdict accepts a
  footprint similarity ≥ 0.93 and rejects < 0.80);
* ``truth best``: the share of X-rays where the true pose scores above every perturbed pose (a similarity whose
  optimum is not the truth cannot give an accurate registration);
* ``margin``: the median of (truth − the best perturbed pose).

Similarities: ``mncc`` (the refinement's multiscale NCC), ``footprint`` (the verdict's, inside the CT's footprint),
``grad`` (multiscale NCC of the images' Sobel gradients, Penney et al. 1998), ``mix`` (multiscale multiple
correlation of the X-ray with the bone and the soft-tissue line integrals rendered as two channels: the best linear
mix per tile, invariant to how bone and soft tissue are weighted); ``masked``: the same reading only the pixels
``registration/xray_mask.informative_mask`` keeps (collimator shutters and saturated regions dropped).

    .venv/bin/python benchmarks/appearance_similarity.py --n 20 --appearance project diffdrr physics
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RayEmbRegistration"))

from RayEmbRegistrationLib import load_ct  # noqa: E402
from RayEmbRegistrationLib.geometry.camera import Intrinsics  # noqa: E402
from RayEmbRegistrationLib.options import RefineOptions  # noqa: E402
from RayEmbRegistrationLib.registration.refine import Refiner, downsample_image, level_intrinsics, perturbation_numpy  # noqa: E402
from RayEmbRegistrationLib.registration.similarity import gradient_ncc, multiscale_ncc  # noqa: E402
from RayEmbRegistrationLib.registration.verdict import footprint_similarity  # noqa: E402
from RayEmbRegistrationLib.registration.xray_mask import informative_mask, level_mask  # noqa: E402
from RayEmbRegistrationLib.rendering.appearance import FAMILIES, case_in_family  # noqa: E402
from RayEmbRegistrationLib.rendering.render import DRRRenderer, hu_to_attenuation  # noqa: E402
from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose, simulate_xray  # noqa: E402
from RayEmbRegistrationLib.resources import SAMPLE_CT  # noqa: E402


SIMS = ("mncc", "footprint", "grad", "mix", "mncc masked", "footprint masked", "grad masked")


def _multiple_r(y: torch.Tensor, X: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Multiple correlation of y (N, P) with the columns of X (N, P, C), per row: sqrt of the R² of the least-squares
    fit y ≈ a + X b."""
    y = y - y.mean(1, keepdim=True)
    X = X - X.mean(1, keepdim=True)
    G = X.transpose(1, 2) @ X + eps * torch.eye(X.shape[2], dtype=X.dtype)
    beta = torch.linalg.solve(G, X.transpose(1, 2) @ y[..., None])
    fit = (X @ beta)[..., 0]
    return torch.sqrt(torch.clamp((fit * fit).sum(1) / ((y * y).sum(1) + eps), 0, 1))


def mix_ncc(target: torch.Tensor, channels: torch.Tensor, patch: int) -> torch.Tensor:
    """Multiscale multiple correlation: 0.5 · R(global) + 0.5 · mean R over ``patch`` tiles; ``channels`` (B, C, H,
    W), ``target`` (B, H, W)."""
    B, C, H, W = channels.shape
    glob = _multiple_r(target.reshape(B, -1), channels.reshape(B, C, -1).transpose(1, 2))
    p = int(patch)
    h, w = (H // p) * p, (W // p) * p
    t = target[:, :h, :w].reshape(B, h // p, p, w // p, p).permute(0, 1, 3, 2, 4).reshape(-1, p * p)
    c = channels[:, :, :h, :w].reshape(B, C, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(-1, p * p, C)
    local = _multiple_r(t, c).reshape(B, -1).mean(1)
    return 0.5 * glob + 0.5 * local


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", default=str(SAMPLE_CT))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--appearance", nargs="+", default=["project", "diffdrr", "physics"], choices=FAMILIES[:3])
    ap.add_argument("--offsets", type=int, default=12, help="perturbed poses per X-ray")
    ap.add_argument("--rot-mm", type=float, default=3.0, help="rotation σ (mm of arc at the bone radius)")
    ap.add_argument("--trans-mm", type=float, nargs=3, default=(3.0, 3.0, 10.0), help="translation σ (u, v, depth)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=JSON",
                    help="fix parameters of every drawn X-ray, e.g. collimator='\"none\"' metal=[] unsharp_amount=0 "
                         "(which part of a family's look breaks a similarity)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ct = load_ct(a.ct)
    intr = Intrinsics.deepfluoro(256)
    refiner = Refiner(ct, RefineOptions())
    size = refiner.options.levels[-1]
    li = level_intrinsics(intr, size)
    ct3 = ct.resampled(refiner.options.voxel_mm) if refiner.options.voxel_mm else ct
    # the project's one HU -> attenuation mapping split into its soft-tissue part (bone multiplier 0) and its bone excess
    soft = DRRRenderer(ct3, li, backend="joseph", attenuation=lambda hu, bm: hu_to_attenuation(hu, 0.0))
    bone = DRRRenderer(ct3, li, backend="joseph",
                       attenuation=lambda hu, bm: hu_to_attenuation(hu, 1.0) - hu_to_attenuation(hu, 0.0))
    patch = max(5, int(round(refiner.options.patch_fraction * li.width)))
    fixed = {}
    for s in a.set:
        key, _, value = s.partition("=")
        try:
            fixed[key] = json.loads(value)
        except json.JSONDecodeError:
            ap.error(f"--set {s}: give KEY=JSON, e.g. spr=0 or collimator='\"none\"' (strings in double quotes)")
    rng = np.random.default_rng(a.seed)
    results = {f: {s: {"truth": [], "margin": [], "best": []} for s in SIMS}
               for f in a.appearance}
    for k in range(a.n):
        T = sample_visible_pose(ct, intr, rng, poses="clinical")
        project = simulate_xray(ct, intr, T, rng)
        prng = np.random.default_rng([a.seed, 11, k])
        poses = [T] + [perturbation_numpy(np.r_[prng.normal(0, a.rot_mm, 3), prng.normal(0, a.trans_mm)], T,
                                          refiner.centre_ras, refiner.radius_mm) for _ in range(a.offsets)]
        P = torch.as_tensor(np.stack(poses), dtype=torch.float32)
        with torch.no_grad():
            drr = refiner._render(li)(P)
            ch = torch.stack([soft(P), bone(P)], dim=1)
        for f in a.appearance:
            pixels, _ = case_in_family(ct, intr, T, f, (project, {}), (a.seed, 7, k), overrides=fixed)
            tgt = torch.as_tensor(downsample_image(pixels, li.width, li.height))[None].expand_as(drr)
            keep = informative_mask(pixels)
            km = torch.as_tensor(level_mask(keep, li.width, li.height))
            vals = {"mncc": multiscale_ncc(drr, tgt, patch).numpy(),
                    "footprint": np.array([footprint_similarity(pixels, d) for d in drr.numpy()]),
                    "grad": gradient_ncc(drr, tgt.contiguous(), patch).numpy(),
                    "mix": mix_ncc(tgt.contiguous(), ch, patch).numpy(),
                    "mncc masked": multiscale_ncc(drr, tgt, patch, mask=km).numpy(),
                    "footprint masked": np.array([footprint_similarity(pixels, d, keep=keep) for d in drr.numpy()]),
                    "grad masked": gradient_ncc(drr, tgt.contiguous(), patch, mask=km).numpy()}
            for s, v in vals.items():
                r = results[f][s]
                r["truth"].append(v[0])
                r["margin"].append(v[0] - v[1:].max())
                r["best"].append(bool(v[0] > v[1:].max()))
        print(f"case {k}: " + "; ".join(f"{f} " + " ".join(f"{s} {results[f][s]['truth'][-1]:.3f}" for s in results[f])
                                        for f in a.appearance), flush=True)
    print(f"\n{a.n} clinical X-rays of {Path(a.ct).name}, seed {a.seed}, fixed: {' '.join(a.set) or 'nothing'}; "
          f"{a.offsets} poses perturbed by rotations "
          f"N(0, {a.rot_mm} mm of arc) and translations N(0, {tuple(a.trans_mm)}) mm per X-ray; finest grid {size}²\n")
    print("| similarity | " + " | ".join(f"{f}: at truth / truth best / margin" for f in a.appearance) + " |")
    print("|---|" + "---|" * len(a.appearance))
    for s in SIMS:
        cells = []
        for f in a.appearance:
            r = results[f][s]
            cells.append(f"{np.median(r['truth']):.3f} / {100 * np.mean(r['best']):.0f} % / {np.median(r['margin']):+.4f}")
        print(f"| {s} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
