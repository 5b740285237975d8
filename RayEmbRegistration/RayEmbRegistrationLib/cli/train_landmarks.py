"""``rayemb train-landmarks``: the fixed-landmark baseline's heatmap network for one CT and one named landmark set.

Owns: the ``train-landmarks`` command (its arguments; the work is ``detection.fixed_landmarks``).
"""

from __future__ import annotations

from .common import Progress, set_threads

__all__ = ["add_parser", "run"]


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("train-landmarks", formatter_class=formatter,
                       help="train the fixed-landmark baseline's heatmap network for a CT's named landmarks",
                       description="Train a heatmap network that detects exactly the named 3D landmarks of --fiducials "
                                   "(at least 6) in X-rays of --ct, on DRRs of that CT rendered on the fly — the "
                                   "'fixed landmark' baseline RayEmb is compared with (Grupp et al. 2020). "
                                   "'rayemb register --landmark-model OUT --fiducials F' then starts from PnP on "
                                   "its detections.")
    p.add_argument("--ct", required=True, help="the CT (NIfTI, NRRD or DICOM series folder)")
    p.add_argument("--fiducials", required=True, help="the named 3D landmarks (.mrk.json, .fcsv or .csv)")
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="the network (+ .json, .sha256)")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget")
    p.add_argument("--size", type=int, default=128, help="network input size (pixels, square)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..detection.fixed_landmarks import train_fixed_landmarks
    from ..inputs.fiducials import load_fiducials
    from ..inputs.volume import load_ct

    set_threads()
    ct, fids = load_ct(args.ct), load_fiducials(args.fiducials)
    with Progress("train-landmarks", not args.quiet) as bar:
        path = train_fixed_landmarks(ct, fids, args.out, minutes=args.minutes, size=args.size, seed=args.seed,
                                     progress=bar, log=(lambda m: None) if args.quiet else print)
    print(f"wrote {path}")
    return 0
