"""Leave-one-patient-out 2D error of base networks, without any preparation, on ``bench_prepare.py``'s held-out DRRs.

For each network (``PATH`` or ``PATH@SIZE`` to run the same weights at another input size), the localisation error
on 8 DRRs of the CT at clinical C-arm poses (seed ``--seed`` + 7919, exactly the held-out set of
``bench_prepare.py``), each network at its own input size; errors in px of the 224² grid (mm at the detector / 1.33)
so that sizes compare, and the share within 3 px of the network's own grid.

Usage:
    .venv/bin/python benchmarks/bench_heldout.py Resources/Models/rayemb_unet.safetensors \\
        Resources/Models/rayemb_unet.safetensors@96 out/gen96/model.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RayEmbRegistration"))

from RayEmbRegistrationLib.detection.model import ModelConfig, build_model, load_model  # noqa: E402
from RayEmbRegistrationLib.resources import SAMPLE_CT  # noqa: E402
from RayEmbRegistrationLib.training.data import ShardSet  # noqa: E402
from RayEmbRegistrationLib.training.train import evaluate  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import heldout_set  # noqa: E402  (the same held-out DRRs as bench_prepare.py)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="weights (.safetensors), optionally @SIZE")
    p.add_argument("--ct", default=str(SAMPLE_CT))
    p.add_argument("--out", default=str(REPO / "out" / "bench_heldout"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ct = load_ct(a.ct)
    sets: dict[int, ShardSet] = {}

    def heldout(cfg) -> ShardSet:
        if cfg.image_size not in sets:
            sets[cfg.image_size] = heldout_set(ct, Path(a.out), cfg.image_size, cfg, a.seed)
        return sets[cfg.image_size]

    print(f"\nHeld-out 2D error on {ct.name}, no preparation (8 DRRs at clinical poses)\n")
    print("| network | input size | median px@224 | p90 px@224 | top-25 % conf. px@224 | ≤ 3 px (own grid) |")
    print("|---|---|---|---|---|---|")
    for spec in a.models:
        path, _, size = spec.partition("@")
        m = load_model(path)
        if size:  # the same (fully convolutional) weights at another input size
            cfg = ModelConfig.from_dict({**m.config.to_dict(), "image_size": int(size)})
            other = build_model(cfg)
            other.load_state_dict(m.state_dict())
            m = other.eval()
        c = m.config
        h = evaluate(m, heldout(c), max_queries=8)
        z = c.image_size / 224
        print(f"| {spec} | {c.image_size} | {h['median_px'] / z:.1f} | {h['p90_px'] / z:.1f} | "
              f"{h['top25_median_px'] / z:.1f} | {100 * h['within_3px']:.0f} % |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
