"""What every ``rayemb`` command shares: exit codes, progress bars, input readers, the registration options.

Owns: the CLI's shared plumbing (exit codes, progress bars, JSON option readers, options from arguments).

The CLI's plumbing — the exit-code table, ``CLIError``, the tqdm bar behind ``progress(fraction, message)``,
reading JSON options (pose, geometry), and turning arguments into ``options.RegistrationOptions`` (whose
defaults the help text prints)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ..options import DEPTH_VALLEY_MODES, INITIAL_POSES, DetectionOptions, PnPOptions, RefineOptions, RegistrationOptions

__all__ = ["EXIT_OK", "EXIT_BAD_INPUT", "EXIT_NO_MODEL", "EXIT_REJECTED", "EXIT_CANCELLED", "EXIT_TERMINATED", "FLAGS",
           "CLIError", "Progress", "parse_progress_line", "set_threads",
           "read_json_option", "read_pose", "read_geometry", "add_common", "options_from_args"]

# The exit status of every command (README, "Command line"):
EXIT_OK = 0             # done; for register: the result is accepted or uncertain (registration.json says which)
EXIT_BAD_INPUT = 2      # bad input or an impossible registration: the message names what is wrong and what to do
EXIT_NO_MODEL = 3       # no usable network (missing, corrupt or mismatching weights)
EXIT_REJECTED = 4       # register: the result was rejected by its verdict (outputs written, marked rejected)
EXIT_CANCELLED = 130    # interrupted (Ctrl-C / SIGINT); nothing half written
EXIT_TERMINATED = 143   # terminated (SIGTERM); nothing half written

#: the CLI flag of each field of the options tree (so that an error names what the user typed)
FLAGS = {
    "detection.n_bone_candidates": "--bone-candidates", "detection.n_bone_keep": "--bone-keep",
    "pnp.ransac_threshold_px": "--ransac-threshold", "pnp.hypotheses": "--pnp-poses", "refine.levels": "--refine-levels",
    "refine.iterations": "--refine-iterations", "refine.competitor_levels": "--competitor-levels",
    "refine.depth_compare_levels": "--depth-compare-levels", "refine.rescue_angles_deg": "--rescue-angles",
    "refine.rescue_screen_iterations": "--rescue-screen",
    "device": "--device",
    "seed": "--seed",
}


class CLIError(ValueError):
    """A usage error (message says what to change)."""


class Progress:
    """Progress on stderr driven by ``progress(fraction, message)`` callbacks (``progress.ProgressFn``): a tqdm bar
    on a terminal, else (a log file, CI) one line per 10 %."""

    def __init__(self, desc: str, enable: bool = True) -> None:
        from tqdm import tqdm

        self.desc, self.enable = desc, enable
        self.tty = enable and sys.stderr.isatty()
        self.bar = tqdm(total=1000, desc=desc, disable=not self.tty, leave=False, file=sys.stderr,
                        bar_format="{desc}: {percentage:3.0f}%|{bar:30}| {postfix}")
        self.n = 0
        self.decile = -1

    def __call__(self, fraction: float, message: str = "") -> None:
        k = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        if k > self.n:
            self.bar.update(k - self.n)
            self.n = k
        if message:
            self.bar.set_postfix_str(message[:60], refresh=False)
        if self.enable and not self.tty and k // 100 > self.decile:
            self.decile = k // 100
            print(f"{self.desc}: {10 * self.decile:3d}%  {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_progress_line(line: str) -> tuple[str, float, str] | None:
    """``(desc, fraction, message)`` of a progress line that ``Progress`` writes off a terminal
    (``"prepare:  40%  message"``), or None for any other line (a parent process reads a child's progress so)."""
    import re

    m = re.match(r"^(\w+):\s+(\d{1,3})%\s*(.*)$", line.rstrip("\n"))
    if not m:
        return None
    return m.group(1), min(int(m.group(2)), 100) / 100.0, m.group(3)


def set_threads() -> None:
    """At most 8 torch CPU threads (more only add overhead for these sizes)."""
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))


def read_json_option(option: str, path: str):
    """The JSON content of the file given to ``option``; ``CLIError`` naming the option if missing or invalid."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{option} file not found: {p}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise CLIError(f"{option} {p} is not valid JSON: {exc}") from None


def read_pose(path: str) -> np.ndarray:
    """``--pose``: a 4×4 list, ``{"camera_from_world": ...}`` or a registration.json (its final pose)."""
    d = read_json_option("--pose", path)
    if isinstance(d, dict):
        final = d.get("final")
        d = d.get("camera_from_world", final.get("camera_from_world") if isinstance(final, dict) else None)
    T = np.asarray(d, dtype=np.float64) if d is not None else np.zeros(0)
    if T.shape != (4, 4):
        raise CLIError(f"--pose {path} must hold a 4×4 camera_from_world matrix (a list of 4 rows, or "
                       '{"camera_from_world": [[...], ...]}, e.g. a registration.json).')
    return T


def read_geometry(path: str | None, size: Sequence[int] | None):
    """``--geometry`` (+ ``--size``) → ``camera.Intrinsics`` through the one geometry parser."""
    from ..geometry.camera import Intrinsics

    if path is None:
        raise CLIError("--geometry JSON is required: {\"source_to_detector_mm\": 1020, \"pixel_spacing_mm\": [du, dv], "
                       "\"width\": W, \"height\": H}.")
    w, h = (int(size[0]), int(size[-1])) if size else (None, None)
    return Intrinsics.from_dict(read_json_option("--geometry", path), width=w, height=h)


def _levels(o: RefineOptions) -> str:
    return " ".join(str(x) for x in o.levels)


def add_common(p: argparse.ArgumentParser, registration: bool = True) -> None:
    """Arguments of every command that registers or detects; defaults shown are ``options``' own."""
    D, N, R = DetectionOptions(), PnPOptions(), RefineOptions()
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the network and the DRRs run (auto: the CPU, also where a GPU exists — a registration is "
                        "faster there, docs/pipeline.md \"Device\"; cuda: the GPU)")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="network weights (.safetensors written by 'rayemb train'); default: the bundled model")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (bone points, RANSAC, simulation)")
    p.add_argument("--prepared", default=None, metavar="DIR",
                   help="a prepared-CT folder ('rayemb prepare'): its weights and templates; 'auto' finds the CT's own "
                        "in the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if not registration:
        return
    p.add_argument("--initial", choices=INITIAL_POSES, default=None,
                   help="where the initial pose comes from: rayemb = detected points + PnP; regression = the CT's "
                        "pose-regression network (from its prepared folder: give --prepared); both = the regressed pose "
                        "competes with the PnP poses (the best coarse match is refined; a result the verdict does not "
                        "accept is refined from the other start too, the more similar wins); auto = both with a "
                        f"prepared folder that has the network, else rayemb. Default: {RegistrationOptions().initial}")
    p.add_argument("--no-refine", action="store_true", help="skip the intensity refinement (final pose = PnP pose)")
    p.add_argument("--no-depth-search", action="store_true",
                   help="refine from the PnP pose as it is, without first searching its depth along the viewing ray "
                        "by image similarity")
    p.add_argument("--depth-valley", choices=DEPTH_VALLEY_MODES, default=None, metavar="MODE",
                   help="when to refine also from the PnP pose's depth valley (its tilt refitted to the PnP inliers at "
                        "0.7-1.1 x its depth): retry = only for a result the verdict did not accept because its DRR "
                        "does not match the X-ray, before the rescue search; always = for every X-ray, beside the "
                        "depth search's starts (on chest close-ups it accepted one wrong result); off. Default: "
                        f"{R.depth_valley}")
    p.add_argument("--similarity", choices=("mncc", "grad"), default=None,
                   help="the image similarity of the refinement and its checks: mncc = multiscale NCC of the intensities "
                        "(calibrated); grad = the same on image gradients (blind to scatter and windowing). Default: "
                        f"{R.similarity}")
    p.add_argument("--no-xray-mask", action="store_true",
                   help="let every similarity read every pixel of the X-ray, also collimator shutters and saturated "
                        "regions (clipped borders, metal cores, labels) that no DRR can explain (default: dropped)")
    p.add_argument("--no-competitor-check", action="store_true",
                   help="accept a result without first checking that no different pose near it (a neighbouring "
                        "vertebra) explains the X-ray about as well (saves one batched refinement per accepted result)")
    p.add_argument("--no-local-check", action="store_true",
                   help="accept a result without first checking that no pose turned 2-4 degrees about the bone in view "
                        "explains the X-ray better (saves ~0.3 s per accepted result)")
    p.add_argument("--relative-signals-always", action="store_true",
                   help="calibration: measure the local-optimum and competitor signals for every refined result, not "
                        "only for one about to be accepted (the verdict is the same; 1-3 s more per unaccepted result)")
    p.add_argument("--competitor-levels", type=int, default=None, metavar="N",
                   help="refinement levels the competitor check runs, coarse first (0: every level; default "
                        f"{R.competitor_levels})")
    p.add_argument("--depth-compare-levels", type=int, default=None, metavar="N",
                   help="refinement levels over which the PnP start and the depth-searched start compete before only "
                        f"the winner is refined further (0: both run every level; default {R.depth_compare_levels})")
    p.add_argument("--no-rescue", action="store_true",
                   help="give a result the verdict does not accept as it is, without first searching rotated starts "
                        "about the bone in view (the rescue search: one batched refinement, only for such results)")
    p.add_argument("--rescue-angles", type=float, nargs="+", default=None, metavar="DEG",
                   help="rotations (degrees) of the rescue search about each image axis; every pair is a start "
                        f"(default {' '.join(f'{x:g}' for x in R.rescue_angles_deg)})")
    p.add_argument("--rescue-screen", type=int, default=None, metavar="N",
                   help="the rescue search refines every start for N iterations at the coarsest level before picking "
                        "the best few (0: pick them by their similarity as they are, cheaper, misses more; default "
                        f"{R.rescue_screen_iterations})")
    p.add_argument("--no-bone-points", action="store_true",
                   help="use only the given fiducials, no automatically sampled bone points")
    p.add_argument("--bone-candidates", type=int, default=None, metavar="N",
                   help=f"bone points (HU >= 350) to detect (default {D.n_bone_candidates}; paper: 10000)")
    p.add_argument("--bone-keep", type=int, default=None, metavar="N",
                   help=f"most confident bone points given to PnP (default {D.n_bone_keep}, as in the paper)")
    p.add_argument("--ransac-threshold", type=float, default=None, metavar="PX",
                   help="RANSAC inlier threshold in pixels of the X-ray resampled to 256 px on its longer side (the "
                        f"same on any image size of the detector; default {N.ransac_threshold_px:g})")
    p.add_argument("--pnp-poses", type=int, default=None, metavar="N",
                   help="PnP poses (disjoint RANSAC consensus sets) that compete by a coarse refinement; 1 = the "
                        f"largest consensus only (default {N.hypotheses})")
    p.add_argument("--no-reseat", action="store_true",
                   help="when every PnP pose puts the CT out of view, fail instead of sliding their orientations to "
                        "the most similar depth along the viewing ray (one batch of coarse DRRs per pose)")
    p.add_argument("--no-view-pass", action="store_true",
                   help="do not detect again, for each PnP pose, the bone points it puts inside the X-ray (the view "
                        "pass: more right detections on close-ups; about +1 s)")
    p.add_argument("--refine-levels", type=int, nargs="+", default=None, metavar="SIZE",
                   help=f"coarse-to-fine DRR grid sizes, longer side in px (default {_levels(R)}; steps "
                        f"{R.lr_mm[0]:g} → {R.lr_mm[-1]:g} mm)")
    p.add_argument("--refine-iterations", type=int, nargs="+", default=None, metavar="N",
                   help="Adam iterations per refinement level (default "
                        f"{' '.join(str(x) for x in R.per_level(R.iterations, len(R.levels)))})")
    p.add_argument("--no-scene", action="store_true", help="do not write scene.mrb")


def options_from_args(args) -> RegistrationOptions:
    """``RegistrationOptions`` from the arguments of ``add_common`` (unset arguments keep the defaults; a given
    value is never replaced: an invalid one is a ``CLIError`` naming the flag, the value and the valid range)."""
    from ..options import OptionsError

    det, pnp, ref, top = {}, {}, {}, {}
    if getattr(args, "initial", None) is not None:
        top["initial"] = args.initial
    if getattr(args, "no_bone_points", False):
        det["auto_bone_points"] = False
    if getattr(args, "bone_candidates", None) is not None:
        det["n_bone_candidates"] = args.bone_candidates
    if getattr(args, "bone_keep", None) is not None:
        det["n_bone_keep"] = args.bone_keep
    if getattr(args, "no_view_pass", False):
        det["view_pass"] = False
    if getattr(args, "ransac_threshold", None) is not None:
        pnp["ransac_threshold_px"] = args.ransac_threshold
    if getattr(args, "pnp_poses", None) is not None:
        pnp["hypotheses"] = args.pnp_poses
    if getattr(args, "no_reseat", False):
        pnp["reseat_implausible"] = False
    if getattr(args, "no_refine", False):
        ref["enabled"] = False
    if getattr(args, "no_depth_search", False):
        ref["depth_search"] = False
    if getattr(args, "depth_valley", None) is not None:
        ref["depth_valley"] = args.depth_valley
    if getattr(args, "similarity", None) is not None:
        ref["similarity"] = args.similarity
    if getattr(args, "no_xray_mask", False):
        ref["xray_mask"] = False
    if getattr(args, "no_competitor_check", False):
        ref["competitor_check"] = False
    if getattr(args, "no_local_check", False):
        ref["local_check"] = False
    if getattr(args, "relative_signals_always", False):
        ref["relative_signals_always"] = True
    if getattr(args, "competitor_levels", None) is not None:
        ref["competitor_levels"] = args.competitor_levels
    if getattr(args, "depth_compare_levels", None) is not None:
        ref["depth_compare_levels"] = args.depth_compare_levels
    if getattr(args, "no_rescue", False):
        ref["rescue"] = False
    if getattr(args, "rescue_angles", None) is not None:
        ref["rescue_angles_deg"] = tuple(args.rescue_angles)
    if getattr(args, "rescue_screen", None) is not None:
        ref["rescue_screen_iterations"] = args.rescue_screen
    try:
        o = RegistrationOptions(device=args.device, model_path=args.model, seed=args.seed, **top)
        o = o.replace(detection=det, pnp=pnp, refine=ref)
        levels, its = getattr(args, "refine_levels", None), getattr(args, "refine_iterations", None)
        return o.replace(refine=o.refine.with_levels(levels, its))
    except OptionsError as exc:
        flag = FLAGS.get(exc.field, exc.field)
        given = " ".join(str(x) for x in exc.value) if isinstance(exc.value, tuple) else exc.value
        raise CLIError(f"{flag} {given}: {exc.valid}.") from None
