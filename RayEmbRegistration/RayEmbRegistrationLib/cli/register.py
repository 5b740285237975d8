"""``rayemb register``: register one X-ray to a CT and write registration.json, overlay.png, scene.mrb.

Owns: the ``register`` command (its arguments and its run: read inputs → ``pipeline.Registrar`` → ``report``).
"""

from __future__ import annotations

import time

import sys

from ..registration.verdict import REJECTED, UNCERTAIN
from .common import EXIT_REJECTED, Progress, add_common, options_from_args, set_threads

__all__ = ["add_parser", "run"]


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("register", help="register an X-ray to a CT", formatter_class=formatter,
                       description="Register an X-ray to a CT: landmark detection, PnP + RANSAC, intensity refinement. "
                                   "Writes OUT/registration.json, OUT/overlay.png and OUT/scene.mrb (all or nothing).")
    p.add_argument("--ct", required=True, help="CT: NIfTI (.nii/.nii.gz), NRRD or a DICOM series folder")
    p.add_argument("--xray", required=True, help="X-ray: DICOM, PNG/TIFF/NRRD/NIfTI/NPY (+ geometry)")
    p.add_argument("--geometry", default=None, metavar="JSON",
                   help='X-ray geometry {"source_to_detector_mm", "pixel_spacing_mm": [du, dv], "principal_point_px"}, '
                        "or any JSON holding it under \"geometry\" (a registration.json, a 'rayemb render' sidecar) "
                        "(default: DICOM tags or <xray>.json next to the image)")
    p.add_argument("--fiducials", default=None, metavar="FILE",
                   help="3D points to detect and use: Slicer markups .mrk.json, .fcsv or CSV label,r,a,s (RAS mm)")
    p.add_argument("--landmark-model", default=None, metavar="FILE",
                   help="start from the fixed-landmark baseline instead of RayEmb: PnP on the detections of this "
                        "network ('rayemb train-landmarks') of the --fiducials it was trained for, then the refinement")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..inputs.fiducials import load_fiducials
    from .prepare import apply_prepared
    from ..registration.pipeline import Registrar
    from ..outputs.report import check_output_dir, write_registration
    from ..inputs.volume import load_ct
    from ..inputs.xray import load_xray

    check_output_dir(args.out)  # before any work
    set_threads()
    t = time.perf_counter()
    ct = load_ct(args.ct)
    xray = load_xray(args.xray, geometry=args.geometry)
    fids = load_fiducials(args.fiducials) if args.fiducials else None
    start = None
    if args.landmark_model:
        from ..detection.fixed_landmarks import fixed_landmark_pose, load_fixed_landmarks
        from .common import CLIError

        if fids is None:
            raise CLIError("--landmark-model needs --fiducials: the named 3D landmarks the network was trained for")
        model, names = load_fixed_landmarks(args.landmark_model)
        start = fixed_landmark_pose(model, names, xray, fids, seed=args.seed).camera_from_world
        fids = None  # the start is the fixed landmarks' pose; the refinement takes it from there
    t_load = time.perf_counter() - t
    with Progress("register", not args.quiet) as bar:
        result = Registrar(ct, apply_prepared(args, ct, options_from_args(args))).register(
            xray, fids, initial_camera_from_world=start, progress=bar)
    result.timings_s = {"load": t_load, **result.timings_s}
    paths = write_registration(args.out, result, ct, xray, fids, scene=not args.no_scene)
    print("\n".join(result.summary_lines()))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if result.verdict.status == REJECTED:
        print(f"rayemb register: REJECTED: {'; '.join(result.verdict.reasons)}. The outputs are written and marked "
              "rejected: do not use this pose.", file=sys.stderr)
        return EXIT_REJECTED
    if result.verdict.status == UNCERTAIN:
        print(f"rayemb register: UNCERTAIN: {'; '.join(result.verdict.reasons)}. Check the overlay before using "
              "this pose.", file=sys.stderr)
    return 0
