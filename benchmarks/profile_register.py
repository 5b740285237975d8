"""Where a registration's time goes, per device: ``rayemb evaluate``'s simulated X-rays registered on the CPU and
on ``--device`` (CUDA) by the same registrar settings, stage times side by side, then one registration under
``torch.profiler`` with the operators that took the most time: why a registration is slower on an H200 than on a
2-core CPU (docs/pipeline.md, "Device").

Per case and device: verdict, mTRE, total seconds and the stages of ``RegistrationResult.timings_s``. The first
registration on each device is a warm-up (templates, kernels) and not counted. ``--no-tf32`` turns cuDNN's TF32
convolutions off (PyTorch's default is on), one suspect for the GPU's different outcomes.

Usage:
    python benchmarks/profile_register.py --prepared out/prep_pelvis_gpu2 --cases 0 1 2 3 --device cuda
    python benchmarks/profile_register.py --prepared DIR --cases 1 --devices cpu --profile 25   # CPU only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_cases import add_case_args, case_setup  # noqa: E402

from RayEmbRegistrationLib.evaluate import pose_errors, simulated_cases  # noqa: E402

STAGES = ("detection", "pnp", "hypotheses", "view_pass", "refine", "competitors", "local_check", "rescue", "total")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_args(p, poses="clinical")
    p.add_argument("--cases", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="devices compared (the same X-rays)")
    p.add_argument("--device", default=None, help="shorthand: compare the CPU with this device")
    p.add_argument("--no-tf32", action="store_true", help="torch.backends.cudnn.allow_tf32 = False")
    p.add_argument("--profile", type=int, default=20, help="operators listed from the profiled registration (0: none)")
    a = p.parse_args(argv)
    devices = ["cpu", a.device] if a.device else a.devices
    if a.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
    ct, intr, _, refiner, sim, _ = _setup(a, "cpu")  # the X-rays are simulated on the CPU, the same for every device
    cases = [(c, T, x) for c, T, x, _ in simulated_cases(ct, intr, max(a.cases) + 1, a.seed, a.poses, sim, refiner)
             if c in a.cases]
    print("| device | case | verdict | mTRE mm | " + " | ".join(f"{s} s" for s in STAGES) + " |")
    print("|---|---|---|---|" + "---|" * len(STAGES))
    for device in devices:
        ct, intr, reg, refiner, sim, pts = _setup(a, device)
        reg.register(cases[0][2])  # warm-up
        for c, T, xray in cases:
            res = reg.register(xray)
            err = pose_errors(res.final.camera_from_world, T, pts, intr)["mtre_mm"]
            t = res.timings_s
            print(f"| {device} | {c} | {res.verdict.status} | {err:.2f} | "
                  + " | ".join(f"{t[s]:.2f}" if s in t else "–" for s in STAGES) + " |", flush=True)
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
            t0 = time.perf_counter()
            with profile(activities=acts) as prof:
                reg.register(cases[0][2])
            key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
            print(f"\n{device}: one registration of case {cases[0][0]} under the profiler, {time.perf_counter() - t0:.1f} s")
            print(prof.key_averages().table(sort_by=key, row_limit=a.profile))
    return 0


_SETUPS: dict = {}


def _setup(a, device: str):
    """``benchmark_cases.case_setup`` on ``device`` (cached)."""
    if device not in _SETUPS:
        _SETUPS[device] = case_setup(a, device=device)
    return _SETUPS[device]


if __name__ == "__main__":
    raise SystemExit(main())
