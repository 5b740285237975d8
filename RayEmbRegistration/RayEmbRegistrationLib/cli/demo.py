"""``rayemb demo``: simulate an X-ray of the bundled sample CT at a random pose and register it.

Owns: the ``demo`` command.

The ``demo`` command (the scenario: simulate → register without the pose → outputs → true errors, and the
labelled intensity-only fallback when the markerless initialisation fails)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import Progress, add_common, options_from_args, set_threads

__all__ = ["add_parser", "run"]


def add_parser(sub, formatter) -> None:
    from ..rendering.appearance import FAMILIES
    from ..resources import SAMPLE_CT

    p = sub.add_parser("demo", help="simulate an X-ray of the sample CT and register it", formatter_class=formatter,
                       description="The bundled sample CT, an X-ray simulated at a random pose (RAYEMB_SAMPLER, "
                                   "DeepFluoro-like geometry, noise), a full registration that does not see the pose, "
                                   "the outputs of 'register' and the true errors. For the sample CT the network "
                                   "fine-tuned on it (Resources/Models/finetuned/) is used unless --model is given.")
    p.add_argument("--out", default="rayemb-demo", metavar="DIR", help="output folder")
    p.add_argument("--ct", default=str(SAMPLE_CT), help="the CT (default: the bundled sample)")
    p.add_argument("--size", type=int, default=256, help="simulated X-ray size (pixels, square)")
    p.add_argument("--appearance", choices=FAMILIES, default="project",
                   help="how the simulated X-ray looks (rendering/appearance.py): project, diffdrr, physics or mixed; "
                        "the pose is the same in every family")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..geometry.camera import Intrinsics
    from ..errors import ModelUnavailable, RegistrationError
    from ..evaluate import EVAL_POINTS, EVAL_POINTS_SEED, pose_errors
    from ..registration.pipeline import Registrar
    from ..outputs.report import check_output_dir, write_json_atomic, write_registration
    from ..resources import RESOURCES, bundled_model_for
    from ..rendering.appearance import case_in_family
    from ..rendering.simulate import BASELINE_ROT_STD_RAD, BASELINE_TRANS_STD_MM, perturbed_start, sample_visible_pose, simulate_xray
    from ..inputs.volume import load_ct
    from ..inputs.xray import XRayImage, save_xray

    out = check_output_dir(args.out)  # before any work
    set_threads()
    ct_path = Path(args.ct)
    ct = load_ct(ct_path)
    rng = np.random.default_rng(args.seed)
    intr = Intrinsics.deepfluoro(args.size)
    T_true = sample_visible_pose(ct, intr, rng)
    pixels, appearance = case_in_family(ct, intr, T_true, args.appearance,
                                        (simulate_xray(ct, intr, T_true, rng), {"family": "project"}), (args.seed, 7))
    save_xray(pixels, intr, out / "xray.tif")
    write_json_atomic({"camera_from_world": T_true, "appearance": appearance,
                       "note": "ground truth of the simulated X-ray (not given to the pipeline)"}, out / "truth.json")
    eval_pts = ct.sample_bone_points(EVAL_POINTS, np.random.default_rng(EVAL_POINTS_SEED))
    xray = XRayImage(pixels, intr, "simulated X-ray")
    print(f"CT {ct_path.name}: {ct.shape} voxels; X-ray simulated at a random RAYEMB_SAMPLER pose, "
          f"{intr.width}×{intr.height} px DeepFluoro-like geometry, appearance '{args.appearance}' "
          f"(saved to {out / 'xray.tif'}).")
    options = options_from_args(args)
    own = None if args.model else bundled_model_for(ct_path)
    if own is not None:
        options = options.replace(model_path=str(own))
        print(f"network: {own.relative_to(RESOURCES.parent)} — the bundled model fine-tuned on this CT "
              "('rayemb finetune', the pre-operative step; it never saw this X-ray or its pose). "
              "Use --model Resources/Models/rayemb_unet.safetensors for the general model.")
    registrar = Registrar(ct, options)
    missing, result = [], None
    try:
        with Progress("demo", not args.quiet) as bar:
            result = registrar.register(xray, progress=bar)
    except ModelUnavailable as exc:
        missing.append(f"RayEmb landmark detection + PnP initialisation: NOT AVAILABLE ({exc})")
    except RegistrationError as exc:
        missing.append(f"RayEmb landmark detection + PnP initialisation FAILED on this X-ray ({exc})")
    if result is None:
        print("\n*** " + missing[0])
        print("*** Falling back to intensity-only registration from a perturbed start pose (true pose + rotations "
              f"N(0, {BASELINE_ROT_STD_RAD} rad), translations N(0, {BASELINE_TRANS_STD_MM} mm)); this is NOT a "
              "markerless initialisation, it only demonstrates the refinement, the outputs and the scene.\n")
        refiner = registrar.refiner()
        start = perturbed_start(ct, intr, T_true, refiner.centre_ras, refiner.radius_mm, rng)
        with Progress("demo (intensity only)", not args.quiet) as bar:
            result = registrar.register(xray, initial_camera_from_world=start, progress=bar)
    lines, errs = result.summary_lines(), {}
    for stage in ("initial", "refined", "final"):
        cam = getattr(result, stage)
        if cam is not None:
            e = errs[stage] = pose_errors(cam.camera_from_world, T_true, eval_pts, cam.intrinsics)
            lines.append(f"  TRUE error ({stage}): mTRE {e['mtre_mm']:.2f} mm, mean projection distance "
                         f"{e['mpd_mm']:.2f} mm, rotation {e['rot_deg']:.2f}°, source position {e['trans_mm']:.1f} mm")
    print("\n".join(lines))
    extra = {"demo": {"true_camera_from_world": T_true.tolist(), "not_available": missing, "true_errors": errs}}
    paths = write_registration(out, result, ct, xray, None, scene=not args.no_scene, extra=extra)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if missing:
        print("not available in this run: " + "; ".join(missing))
    return 0
