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
                                   "geometry), registered by each of --methods (initial, refined): by default RayEmb "
                                   "and the intensity-only baseline (refinement from a perturbed true pose). Writes cases.csv, summary.csv, "
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
    df = p.add_argument_group("DeepFluoro (real fluoroscopy, read from your own copy; docs/deepfluoro.md)")
    df.add_argument("--deepfluoro", default=None, metavar="FILE",
                    help="run DeepFluoro's real frames instead of simulated X-rays: ipcai_2020_full_res_data.h5 "
                         "(CC BY-NC 4.0; never bundled or downloaded)")
    df.add_argument("--specimen", nargs="+", default=None, metavar="N",
                    help="specimens 1-6 (or group names like 17-1882); default: all in the file")
    df.add_argument("--frames", default=None, metavar="LIST", help="frame numbers, e.g. 0-9,12 (default: all)")
    p.add_argument("--methods", nargs="+", default=None, choices=["rayemb", "regression", "both", "fixed", "intensity"],
                   help="the methods run on the same X-rays, side by side. rayemb: detected points + PnP (the "
                        "pipeline); regression: the prepared folder's pose-regression network as the start (needs "
                        "--prepared); both: register --initial both; intensity: refinement alone (simulated: from the "
                        "true pose perturbed; DeepFluoro: from the uninformed standard start, the paper's DiffDRR "
                        "column); fixed (DeepFluoro only): a heatmap network for the 14 landmarks trained on DRRs of the "
                        "specimen's CT + PnP (the paper's Fixed Landmark column). Default: rayemb intensity (simulated), "
                        "rayemb fixed intensity (DeepFluoro)")
    df.add_argument("--fixed-minutes", type=float, default=5.0, metavar="M",
                    help="training budget of each specimen's fixed-landmark network (trained once per output folder)")
    df.add_argument("--published", default=None, metavar="CSV",
                    help="a CSV of published rows you transcribed (columns source, specimen, method, ...), "
                         "printed beside this run's table")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluate import run_benchmark
    from ..outputs.report import check_output_dir

    if args.prepared and args.model:
        raise CLIError("give --model or --prepared, not both (a prepared folder brings its own weights).")
    if args.deepfluoro:
        args.methods = args.methods or ["rayemb", "fixed", "intensity"]
        if {"regression", "both"} & set(args.methods):
            raise CLIError("--methods regression/both run on simulated X-rays (a prepared folder per CT); on DeepFluoro "
                           "choose from rayemb fixed intensity.")
        return _run_deepfluoro(args)
    methods = args.methods or ["rayemb", "intensity"]
    if "fixed" in methods:
        raise CLIError("--methods fixed needs DeepFluoro's named landmarks: give --deepfluoro FILE.")
    if {"regression", "both"} & set(methods) and not args.prepared:
        raise CLIError("--methods regression/both need each CT's pose-regression network: give --prepared DIR (or "
                       "auto), made by 'rayemb prepare --ct CT'.")
    check_output_dir(args.out)  # before any work
    set_threads()
    md = run_benchmark(args.ct, args.n, args.out, options_from_args(args), size=args.size, seed=args.seed,
                       quiet=args.quiet, poses=args.poses, prepared=args.prepared, appearance=args.appearance,
                       methods=methods)
    out = Path(args.out)
    print("\n".join(md))
    print(f"wrote {out / 'cases.csv'}, {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'mtre.png'}")
    return 0


def _run_deepfluoro(args) -> int:
    """``--deepfluoro FILE``: resumable; the output folder may hold an earlier run's ``cases.csv``."""
    from ..datasets.deepfluoro_eval import run_deepfluoro, write_tables
    from .common import Progress

    if args.published and not Path(args.published).is_file():
        raise CLIError(f"--published {args.published}: file not found")
    set_threads()
    with Progress("deepfluoro", not args.quiet) as bar:
        run_deepfluoro(args.deepfluoro, args.out, options_from_args(args), specimens=args.specimen,
                       frames=args.frames, methods=args.methods, prepared=args.prepared,
                       fixed_minutes=args.fixed_minutes, progress=bar,
                       log=(lambda m: None) if args.quiet else print)
    md = write_tables(args.out, published=args.published)
    out = Path(args.out)
    print("\n".join(md))
    print(f"wrote {out / 'cases.csv'}, {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'mtre.png'}")
    return 0
