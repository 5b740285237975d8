"""Write ``docs/appearance.png``: one clinical view of the bundled sample CT in every X-ray appearance family.

    .venv/bin/python scripts/appearance_gallery.py [--seed 3] [--out docs/appearance.png]

The same pose (``simulate.sample_visible_pose(poses="clinical")``) rendered by ``rendering.appearance.simulate`` in
the project, diffdrr and physics families (two physics draws: one with a collimator and metal, one without), each
shown as ``load_xray`` would deliver it (line-integral form, bone bright), scaled to its 1st–99.5th percentile.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    from PIL import Image, ImageDraw

    from RayEmbRegistrationLib import load_ct
    from RayEmbRegistrationLib.geometry.camera import Intrinsics
    from RayEmbRegistrationLib.rendering.appearance import draw_params, simulate
    from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose
    from RayEmbRegistrationLib.resources import SAMPLE_CT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "appearance.png"))
    a = ap.parse_args()
    ct, intr = load_ct(SAMPLE_CT), Intrinsics.deepfluoro(256)
    T = sample_visible_pose(ct, intr, np.random.default_rng(a.seed), poses="clinical")
    physics_a = draw_params("physics", np.random.default_rng(1))
    physics_a.update(collimator="circle", collimator_size=0.85, metal=[
        {"kind": "screw", "radius_mm": 3.0, "length_mm": 45.0, "centre": [0.4, 0.55], "depth": 0.0,
         "direction": [0.8, 0.5, 0.3]},
        {"kind": "wire", "radius_mm": 0.7, "length_mm": 180.0, "centre": [0.6, 0.4], "depth": -0.2,
         "direction": [0.3, 1.0, 0.2]}])
    physics_b = dict(draw_params("physics", np.random.default_rng(2)), collimator="none", metal=[])
    panels = [("project", None), ("diffdrr", None), ("physics", physics_a), ("physics", physics_b)]
    tiles = []
    for i, (family, params) in enumerate(panels):
        img, _ = simulate(ct, intr, T, family, rng=a.seed + i, params=params)
        lo, hi = np.percentile(img, [1, 99.5])
        tile = Image.fromarray((np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)).convert("RGB")
        ImageDraw.Draw(tile).text((6, 4), family, fill=(255, 200, 0))
        tiles.append(tile)
    out = Image.new("RGB", (256 * len(tiles) + 4 * (len(tiles) - 1), 256), (255, 255, 255))
    for i, t in enumerate(tiles):
        out.paste(t, (i * 260, 0))
    out.save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
