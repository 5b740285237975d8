"""Benchmark the DRR backends (nanodrr, DiffDRR, Joseph) on real CTs: time per DRR, per gradient step, peak memory.

For each CT × backend × size: the median of ``--repeats`` timed runs (after one warm-up) in this one process of
(a) a forward render without gradients and (b) a gradient step (render + NCC-free scalar loss ``mean`` +
backward to a 4×4 pose tensor), for a batch of ``--batch`` poses (the refinement renders 1–6 at once). Peak
memory = the highest resident set size (RSS, read from /proc/self/statm by a sampling thread every 2 ms) during
the timed calls minus the RSS just before them (CPU), or ``torch.cuda.max_memory_allocated`` minus the allocation
before them (CUDA). The renderer is built before the
measurement (its volume is not counted). Prints a markdown table; ratio = first backend's time / second's.

    .venv/bin/python benchmarks/bench_render.py                       # all real CTs, 128² and 256², CPU
    .venv/bin/python benchmarks/bench_render.py --ct Resources/SampleData/pelvis_abdomen_totalseg_3mm.nii.gz --sizes 128
    # what the refinement does (5 starts, 1 ray sample per voxel as refine.Refiner):
    .venv/bin/python benchmarks/bench_render.py --backends nanodrr joseph --sizes 32 64 96 --batch 5 --samples-per-voxel 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.geometry.camera import Intrinsics  # noqa: E402

from RayEmbRegistrationLib.geometry.carm import carm_camera_from_world  # noqa: E402
from RayEmbRegistrationLib.rendering.render import BACKENDS, DRRRenderer  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    def __init__(self, period: float = 0.002) -> None:
        self.period, self.peak, self._stop = period, 0, threading.Event()

    def __enter__(self):
        self.base = rss()
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def default_cts() -> list[Path]:
    cts = [REPO / "Resources" / "SampleData" / "pelvis_abdomen_totalseg_3mm.nii.gz"]
    shared = REPO.parent / "shared" / "data" / "ct"
    if shared.is_dir():
        cts += sorted(p for p in shared.glob("*.nii.gz") if not p.name.endswith("_seg.nii.gz") and p.name != cts[0].name)
        if (shared / "dicom_series_totalseg").is_dir():
            cts.append(shared / "dicom_series_totalseg")
    return cts


def bench(r: DRRRenderer, T: torch.Tensor, repeats: int, device: torch.device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            r(T)
        sync()

    def grad():
        Tg = T.clone().requires_grad_(True)
        r(Tg).mean().backward()
        sync()

    out = {}
    for name, fn in (("render", fwd), ("grad", grad)):
        fn()  # warm-up
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            mem = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            with PeakRSS() as pk:
                for _ in range(repeats):
                    t = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t)
            mem = pk.delta_mb
        out[name] = (1000 * statistics.median(times), mem)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", nargs="+", default=None, help="CTs (default: the sample CT + the real CTs in ../shared/data/ct)")
    ap.add_argument("--backends", nargs="+", default=["nanodrr", "diffdrr"], choices=BACKENDS)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="poses rendered at once")
    ap.add_argument("--samples-per-voxel", type=float, default=2.0,
                    help="ray samples per voxel along the CT's longest axis (nanodrr, DiffDRR; Joseph: one per slice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cts = [Path(c) for c in args.ct] if args.ct else default_cts()
    rows = []
    for path in cts:
        ct = load_ct(path)
        T = torch.as_tensor(np.stack([carm_camera_from_world(10 + 3 * b, 5 - 2 * b, 700, ct.center_ras)
                                      for b in range(args.batch)]), dtype=torch.float32, device=device)
        n_samples = max(32, int(args.samples_per_voxel * max(ct.shape)))
        for size in args.sizes:
            intr = Intrinsics.deepfluoro(size)
            res = {}
            for backend in args.backends:
                r = DRRRenderer(ct, intr, backend=backend, device=device, n_samples=n_samples)
                res[backend] = bench(r, T, args.repeats, device)
                del r
            row = {"ct": path.name, "shape": "×".join(map(str, ct.shape)), "size": size, **res}
            rows.append(row)
            print(f"{path.name} {size}: " + ", ".join(f"{b} render {v['render'][0]:.0f} ms grad {v['grad'][0]:.0f} ms" for b, v in res.items()),
                  file=sys.stderr, flush=True)
    b0, b1 = (args.backends + [None])[:2]
    mem_what = "peak RSS delta (MB)" if device.type == "cpu" else "peak CUDA allocation delta (MB)"
    hdr = ["CT", "voxels", "DRR px"]
    for b in args.backends:
        hdr += [f"{b} render ms", f"{b} grad ms", f"{b} render {mem_what}", f"{b} grad {mem_what}"]
    if b1:
        hdr += [f"ratio render {b0}/{b1}", f"ratio grad {b0}/{b1}"]
    print(f"\nDevice {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, median of {args.repeats} runs "
          f"after a warm-up; {args.batch} pose(s) per call; {args.samples_per_voxel:g} ray samples per voxel along the "
          "longest axis (Joseph: one per slice).\n")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        cells = [r["ct"], r["shape"], f"{r['size']}²"]
        for b in args.backends:
            cells += [f"{r[b]['render'][0]:.0f}", f"{r[b]['grad'][0]:.0f}", f"{r[b]['render'][1]:.0f}", f"{r[b]['grad'][1]:.0f}"]
        if b1:
            cells += [f"{r[b0]['render'][0] / r[b1]['render'][0]:.2f}", f"{r[b0]['grad'][0] / r[b1]['grad'][0]:.2f}"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
