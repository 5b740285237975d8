"""Write the Sample Data X-ray of the bundled sample CT: ``Resources/SampleData/pelvis_xray_diffdrr.nrrd`` (float32
line integrals, detector pixel spacing in the header), its geometry sidecar ``.nrrd.json`` (what the Slicer module
and ``rayemb register`` read) and ``pelvis_xray_diffdrr.truth.json`` (the pose it was rendered at and the
appearance parameters; never given to the registration, used by the module's self-test to score it).

It is rendered by DiffDRR's renderer (appearance family ``diffdrr``), not the project's own, at a clinical pose
drawn by ``simulate.sample_visible_pose``, in the DeepFluoro-like geometry the demo uses.

    .venv/bin/python scripts/make_sample_xray.py [--seed 11]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RayEmbRegistration"))

from RayEmbRegistrationLib.geometry.camera import Intrinsics  # noqa: E402
from RayEmbRegistrationLib.inputs.volume import load_ct  # noqa: E402
from RayEmbRegistrationLib.inputs.xray import save_xray  # noqa: E402
from RayEmbRegistrationLib.rendering.appearance import case_in_family  # noqa: E402
from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose  # noqa: E402
from RayEmbRegistrationLib.resources import SAMPLE_CT, SAMPLE_XRAY, SAMPLE_XRAY_TRUTH  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    ct = load_ct(SAMPLE_CT)
    rng = np.random.default_rng(args.seed)
    intr = Intrinsics.deepfluoro(args.size)
    T = sample_visible_pose(ct, intr, rng)
    pixels, params = case_in_family(ct, intr, T, "diffdrr", (None, None), (args.seed, 7))
    save_xray(pixels.astype(np.float32), intr, SAMPLE_XRAY)
    SAMPLE_XRAY_TRUTH.write_text(json.dumps({
        "camera_from_world": np.asarray(T).tolist(), "appearance": params, "seed": args.seed,
        "made_by": "scripts/make_sample_xray.py",
        "note": "the pose this X-ray was rendered at; never given to the registration (the self-test scores it)"},
        indent=1, default=float))
    print(f"wrote {SAMPLE_XRAY} (+ .json sidecar) and {SAMPLE_XRAY_TRUTH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
