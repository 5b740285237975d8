"""``rayemb prepare``: the pre-operative step for one CT, into a prepared-CT folder.

Owns: the ``prepare`` command (its arguments, a progress bar with elapsed and remaining time; the work is
``prepare.prepare``).
"""

from __future__ import annotations

import time

from .common import Progress, set_threads

__all__ = ["add_parser", "run", "apply_prepared"]


def add_parser(sub, formatter) -> None:
    from ..training.prepare import REGRESSION_SHARE

    p = sub.add_parser("prepare", help="prepare a CT before surgery (fine-tune, templates, readiness)",
                       formatter_class=formatter,
                       description="Fine-tune the network on DRRs of this CT rendered on the fly at clinical C-arm poses, "
                                   "cache its templates and self-check it on simulated X-rays, within --minutes. "
                                   "Also trains the CT's pose-regression network (register --initial regression|both). "
                                   "Writes a prepared-CT folder (model.safetensors, templates/, "
                                   "pose_regression.safetensors, readiness.json, readiness.png), complete or not at all; register/detect/evaluate take it with "
                                   "--prepared DIR (or --prepared auto: found by the CT's content hash).")
    p.add_argument("--ct", required=True, help="the patient's CT (NIfTI, NRRD or DICOM series folder)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="the prepared-CT folder (default: the cache, $RAYEMB_CACHE or ~/.cache/rayemb/prepared/<hash>)")
    p.add_argument("--minutes", type=float, default=10.0, help="time budget for the whole step")
    p.add_argument("--model", default=None, metavar="PATH", help="weights to start from (default: the bundled model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the fine-tuning runs (auto: CUDA if available, else the CPU); the self-check registers "
                        "where 'rayemb register' does by default (the CPU)")
    p.add_argument("--self-check", type=int, default=10, metavar="N", help="simulated X-rays of the self-check")
    p.add_argument("--regression-share", type=float, default=REGRESSION_SHARE, metavar="F",
                   help="share of the training time given to the CT's pose-regression network (register --initial "
                        "regression|both; 0: none, all of it fine-tunes the ray-embedding network)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--stop-file", default=None, metavar="PATH",
                   help="stop the training early when this file appears (the folder is still completed); how a GUI "
                        "stops a preparation it started, through any launcher process")
    p.add_argument("--watch-pid", type=int, default=None, metavar="PID",
                   help="stop as if --stop-file appeared when process PID (the GUI that started this) is gone (POSIX)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..device import resolve_device
    from ..training.prepare import prepare
    from ..inputs.volume import load_ct
    from ..training.prepare_job import stop_requested

    set_threads()
    ct = load_ct(args.ct)
    t0, budget = time.time(), 60.0 * args.minutes
    with Progress("prepare", not args.quiet) as bar:
        def progress(f, m=""):
            el = time.time() - t0
            bar(f, f"{m} | {el / 60:.1f} of {budget / 60:g} min, ~{max(0.0, budget - el) / 60:.1f} left")

        def asked_to_stop():
            return stop_requested(args.stop_file, args.watch_pid)

        cancel = asked_to_stop if (args.stop_file or args.watch_pid) else None
        prep = prepare(ct, args.out, minutes=args.minutes, model_path=args.model, device=resolve_device(args.device),
                       n_selfcheck=args.self_check, seed=args.seed, regression_share=args.regression_share,
                       progress=progress, cancel=cancel,
                       log=(lambda m: None) if args.quiet else (lambda m: print(m, flush=True)))
    print("\n".join(prep.summary_lines()))
    print(f"use it with: rayemb register --prepared {prep.path} ...")
    return 0


def apply_prepared(args, ct, options):
    """``--prepared DIR|auto`` → ``prepare.use_prepared`` (and never together with ``--model``)."""
    from ..training.prepare import use_prepared
    from .common import CLIError

    if not getattr(args, "prepared", None):
        return options
    if args.model:
        raise CLIError("give --model or --prepared, not both (a prepared folder brings its own weights).")
    return use_prepared(options, ct, args.prepared)
