"""``rayemb evaluate``: the simulated registration benchmark.

Owns: the ``evaluate`` command (its arguments; the benchmark itself is ``evaluate.run_benchmark``).
"""

from __future__ import annotations

from pathlib import Path

from .common import CLIError, add_common, options_from_args, set_threads

__all__ = ["add_parser", "run"]


def add_parser(sub, formatter) -> None:
    from ..rendering.appearance import FAMILIES
    from ..resources import SAMPLE_CT

    p = sub.add_parser("evaluate", help="simulated benchmark on random poses", formatter_class=formatter,
                       description="For each CT, N X-rays simulated at random RAYEMB_SAMPLER poses (DeepFluoro-like "
                                   "geometry), registered with RayEmb (initial, refined) and with the intensity-only "
                                   "baseline (refinement from a perturbed true pose). Writes cases.csv, summary.csv, "
                                   "summary.md and mtre.png.")
    p.add_argument("--ct", nargs="+", default=[str(SAMPLE_CT)], help="CTs (default: the bundled sample CT)")
    p.add_argument("--n", type=int, default=20, help="random poses per CT")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--size", type=int, default=256, help="simulated X-ray size (pixels, square)")
    p.add_argument("--poses", choices=("rayemb", "clinical"), default="rayemb",
                   help="rayemb: RAYEMB_SAMPLER around the CT centre (the RayEmb/DiffPose benchmark); clinical: LAO/RAO ±45°, cranial/caudal ±30°, roll ±20°, source-to-isocentre "
                        "450–900 mm about random bone voxels (real C-arm use)")
    p.add_argument("--appearance", choices=FAMILIES, default="project",
                   help="how the X-rays look (the same poses in every family): project = this project's DRR "
                        "simulation; diffdrr = DiffDRR's renderer and HU->density mapping; physics = a physics-based "
                        "simulator (spectrum, scatter, collimation, metal, display processing); mixed = one of the "
                        "three per X-ray (docs/results.md, 'X-ray appearance')")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluate import run_benchmark
    from ..outputs.report import check_output_dir

    check_output_dir(args.out)  # before any work
    if args.prepared and args.model:
        raise CLIError("give --model or --prepared, not both (a prepared folder brings its own weights).")
    set_threads()
    md = run_benchmark(args.ct, args.n, args.out, options_from_args(args), size=args.size, seed=args.seed,
                       quiet=args.quiet, poses=args.poses, prepared=args.prepared, appearance=args.appearance)
    out = Path(args.out)
    print("\n".join(md))
    print(f"wrote {out / 'cases.csv'}, {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'mtre.png'}")
    return 0
