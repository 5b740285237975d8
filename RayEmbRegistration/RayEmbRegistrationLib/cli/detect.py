"""``rayemb detect``: detect where given CT points project in an X-ray.

Owns: the ``detect`` command.

The ``detect`` command (its arguments and its run: read inputs → ``pipeline.Registrar.detect`` →
``report.write_detections``)."""

from __future__ import annotations

from .common import Progress, add_common, options_from_args, set_threads

__all__ = ["add_parser", "run"]


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("detect", help="detect the 2D projections of 3D points in an X-ray", formatter_class=formatter,
                       description="Detect where the given CT points project in the X-ray. Writes OUT/detections.json "
                                   "(label, detected pixel, confidence) and, with --heatmaps, OUT/heatmaps.npz + PNGs.")
    p.add_argument("--ct", required=True, help="CT: NIfTI, NRRD or DICOM series folder")
    p.add_argument("--xray", required=True, help="X-ray image (see 'register')")
    p.add_argument("--geometry", default=None, metavar="JSON", help="X-ray geometry (see 'register')")
    p.add_argument("--points", required=True, metavar="FILE", help="3D points: markups .mrk.json, .fcsv or CSV label,r,a,s")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--heatmaps", action="store_true", help="also write the score maps (heatmaps.npz and PNGs, first 50 points)")
    p.add_argument("--no-pose-check", action="store_true",
                   help="skip the check of the detections by a registration (faster; then nothing says whether a "
                        "pixel is right, and points outside the X-ray are not flagged)")
    add_common(p, registration=False)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..inputs.fiducials import load_fiducials
    from .prepare import apply_prepared
    from ..registration.pipeline import Registrar
    from ..outputs.report import check_output_dir, write_detections
    from ..inputs.volume import load_ct
    from ..inputs.xray import load_xray

    check_output_dir(args.out)  # before any work
    set_threads()
    ct = load_ct(args.ct)
    xray = load_xray(args.xray, geometry=args.geometry)
    pts = load_fiducials(args.points)
    with Progress("detect", not args.quiet) as bar:
        res = Registrar(ct, apply_prepared(args, ct, options_from_args(args))).detect(xray, pts, heatmaps=args.heatmaps,
                                                                                      progress=bar,
                                                                                      pose_check=not args.no_pose_check)
    path = write_detections(args.out, res, xray)
    for lab, uv, c, st in zip(res.labels, res.uv, res.confidence, res.status):
        where = f"u {uv[0]:8.2f}  v {uv[1]:8.2f}" if st == "detected" else f"not detected ({st.replace('_', ' ')})"
        print(f"{lab:>12s}: {where}  confidence {c:.3f}")
    if res.pose_check is not None:
        print(res.pose_check.message)
    print(f"wrote {path}")
    return 0
