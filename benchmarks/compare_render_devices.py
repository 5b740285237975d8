"""The renderers on two devices: the same DRRs rendered on the CPU and on ``--device`` (CUDA), their agreement and
time per DRR — the first check to run on a machine with a GPU.

For the sample CT (or ``--ct``), 6 views (0°/0°, 30°/10°, −40°/−20°, 90°/0°, 10°/25°, −15°/5° about the CT's
isocentre, ``templates.template_poses``) at each ``--sizes``, with nanodrr and Joseph's projector
(``render.DRRRenderer``): the lowest correlation of a CPU image with its ``--device`` twin, the largest absolute
difference as a share of the image's maximum, and ms per DRR (the 6 rendered as one batch, mean of 5 after one
warm-up, synchronised).

Usage (on an H200: correlation 1.000000, ≤ 3.6e-6 of the maximum; docs/pipeline.md, "Device"):
    python benchmarks/compare_render_devices.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.geometry.camera import Intrinsics  # noqa: E402
from RayEmbRegistrationLib.rendering.render import DRRRenderer  # noqa: E402
from RayEmbRegistrationLib.resources import SAMPLE_CT  # noqa: E402
from RayEmbRegistrationLib.detection.templates import ct_isocenter, template_poses  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402

VIEWS_DEG = [[0, 0], [30, 10], [-40, -20], [90, 0], [10, 25], [-15, 5]]


def timed(renderer: DRRRenderer, poses: torch.Tensor, device: str, repeats: int = 5) -> tuple[np.ndarray, float]:
    """The images of ``poses`` (N, S, S) and seconds per DRR."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        img = renderer(poses, max_batch=len(poses))
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            img = renderer(poses, max_batch=len(poses))
        sync()
    return img.float().cpu().numpy(), (time.perf_counter() - t0) / repeats / len(poses)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", default=str(SAMPLE_CT))
    p.add_argument("--device", default="cuda", help="the device compared with the CPU")
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    a = p.parse_args(argv)
    ct = load_ct(a.ct)
    poses = torch.as_tensor(template_poses(np.array(VIEWS_DEG, float), ct_isocenter(ct)))
    print(f"| renderer | size | lowest correlation | max abs difference / max | ms per DRR, CPU | ms per DRR, {a.device} |")
    print("|---|---|---|---|---|---|")
    for size in a.sizes:
        K = Intrinsics.deepfluoro(size)
        for backend in ("nanodrr", "joseph"):
            ref, t_cpu = timed(DRRRenderer(ct, K, device="cpu", backend=backend), poses, "cpu")
            img, t_dev = timed(DRRRenderer(ct, K, device=a.device, backend=backend), poses, a.device)
            corr = min(float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(ref, img))
            diff = float(np.abs(ref - img).max() / np.abs(ref).max())
            print(f"| {backend} | {size}² | {corr:.6f} | {diff:.1e} | {1e3 * t_cpu:.1f} | {1e3 * t_dev:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
