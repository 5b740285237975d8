"""``rayemb render``: a DRR of a CT at a pose, with the geometry sidecar ``load_xray`` reads.

Owns: the ``render`` command (pose from a JSON matrix or from C-arm angles; ``render.DRRRenderer``; ``save_xray``).
"""

from __future__ import annotations

from pathlib import Path

from .common import CLIError, read_geometry, read_pose, set_threads

__all__ = ["add_parser", "run"]


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("render", help="render a DRR of a CT at a pose", formatter_class=formatter,
                       description="Render a DRR (line integrals, bone bright) and its geometry sidecar IMAGE.json "
                                   "(readable by load_xray / 'rayemb register').")
    p.add_argument("--ct", required=True, help="CT: NIfTI, NRRD or DICOM series folder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--pose", metavar="JSON_4x4",
                   help="camera_from_world 4×4 (RAS mm → OpenCV camera): a JSON list of rows, {\"camera_from_world\": ...} "
                        "or a registration.json")
    g.add_argument("--carm-angles", nargs=3, type=float, metavar=("PRIMARY", "SECONDARY", "SID"),
                   help="C-arm angles in degrees (DICOM: primary + = LAO, secondary + = cranial) and the "
                        "source-to-isocentre distance in mm; the isocentre is the CT centre")
    p.add_argument("--geometry", required=True, metavar="JSON",
                   help='detector {"source_to_detector_mm", "pixel_spacing_mm": [du, dv], "width", "height", '
                        '"principal_point_px" (optional)}, or a JSON holding it under "geometry"')
    p.add_argument("--size", type=int, nargs="+", default=None, metavar="PX",
                   help="image width [height] if the geometry JSON has none")
    p.add_argument("--out", required=True, metavar="IMAGE", help="output image (.tif, .npy, .nrrd or 16-bit .png)")
    p.add_argument("--backend", default="nanodrr", choices=["nanodrr", "diffdrr", "joseph"], help="DRR renderer")
    p.add_argument("--bone-multiplier", type=float, default=1.0, help="bone attenuation multiplier (1 = physical)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device")
    p.add_argument("--appearance", default=None, choices=["project", "diffdrr", "physics", "mixed"],
                   help="instead of a plain DRR, an X-ray simulated in this appearance family (docs/appearance.md; "
                        "its drawn parameters go to the sidecar): project = this project's simulated X-ray, diffdrr = "
                        "DiffDRR's renderer, physics = the physics-based simulator, mixed = one of the three")
    p.add_argument("--seed", type=int, default=0, help="seed of the appearance family's random parameters")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..geometry.carm import CarmAngles, carm_camera_from_world
    from ..device import resolve_device
    from ..rendering.render import DRRRenderer
    from ..inputs.volume import load_ct
    from ..inputs.xray import save_xray

    from ..outputs.report import check_output_dir

    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; give the image file to write (.tif, .npy, .nrrd or .png).")
    check_output_dir(out.parent)  # before any work
    set_threads()
    ct = load_ct(args.ct)
    intr = read_geometry(args.geometry, args.size)
    carm = None
    if args.pose:
        T = read_pose(args.pose)
    else:
        prim, sec, sid = args.carm_angles
        if sid <= 0 or sid >= intr.source_to_detector_mm:
            raise CLIError(f"--carm-angles: source-to-isocentre distance {sid:g} mm must be in (0, SDD = "
                           f"{intr.source_to_detector_mm:g} mm).")
        T = carm_camera_from_world(prim, sec, sid, ct.center_ras)
        carm = CarmAngles(prim, sec, sid)
    from ..geometry.camera import Camera, GeometryError
    from ..registration.plausibility import check_overlap

    try:
        cam = Camera(intr, T)  # a rigid camera_from_world or a clear error
    except (GeometryError, ValueError) as exc:
        raise CLIError(f"--pose {args.pose}: {exc}") from None
    check_overlap(ct, cam, "pose given to render")  # a DRR of nothing would be all zeros
    if not args.bone_multiplier > 0:
        raise CLIError(f"--bone-multiplier {args.bone_multiplier:g}: it must be > 0 (1 = physical).")
    extra = {"camera_from_world": T.tolist()}
    if args.appearance:
        import numpy as np

        from ..rendering.appearance import simulate

        img, params = simulate(ct, intr, T, args.appearance, rng=np.random.default_rng(args.seed))
        extra["appearance"] = params
    else:
        r = DRRRenderer(ct, intr, backend=args.backend, bone_multiplier=args.bone_multiplier,
                        device=resolve_device(args.device))
        img = r.render_numpy(T)
    # The pose is recorded too (ignored by load_xray; handy for checking registrations).
    img_path, side = save_xray(img, intr, out, carm=carm, extra=extra)
    print(f"wrote {img_path} and {side}")
    return 0
