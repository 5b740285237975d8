"""Registration outputs: ``registration.json``, ``overlay.png``, ``detections.json`` and the Slicer scene ``scene.mrb``.

Owns: the result files of ``register`` and ``detect`` — their JSON layout and writing them all or nothing.

``registration.json`` holds the cameras of every stage, landmarks, inliers, similarities, timings; the overlay
picture is drawn by ``overlay.py``; ``scene.mrb`` through ``mrml``. Every file is first written under a temporary
name in the output directory, and only when all of them succeeded are they renamed into place,
``registration.json`` last. A failure leaves no partial ``registration.json``.

Frames: cameras as ``camera.Camera.to_dict`` (world = CT RAS mm, OpenCV camera, pixels (u, v) = (column, row),
integer at pixel centres).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry.camera import Camera
from .overlay import heatmap_image, overlay_image

__all__ = ["ReportError", "registration_dict", "write_registration", "write_detections", "check_output_dir",
           "write_json_atomic", "save_scene", "CONVENTIONS"]

CONVENTIONS = (
    "world = the CT's RAS frame in mm (as Slicer shows it); camera = OpenCV pinhole (x along +u, y along +v, z from "
    "the X-ray source toward the detector); pixels (u, v) = (column, row) of the X-ray as stored, integer at pixel "
    "centres; intrinsics K = [[SDD/du, 0, cu], [0, SDD/dv, cv], [0, 0, 1]]; X_cam = camera_from_world · X_ras; "
    "projection_matrix = K [R | t] maps homogeneous RAS to homogeneous pixels."
)


class ReportError(ValueError):
    """Outputs could not be written (message names the file)."""


def _clean(x: Any) -> Any:
    """JSON-safe: arrays → lists, NaN/inf → None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def registration_dict(result, ct=None, xray=None, extra: dict | None = None) -> dict[str, Any]:
    """The content of ``registration.json`` for a ``pipeline.RegistrationResult``."""
    from .. import __version__

    final: Camera = result.final
    cams = {"initial": result.initial, "refined": result.refined, "final": final}
    d: dict[str, Any] = {
        "format": "rayemb-registration/1",
        "software_version": __version__,
        "conventions": CONVENTIONS,
        "final_stage": result.final_stage,
        "initial_method": result.initial_method,
        "initial_reseated": bool(getattr(result, "initial_reseated", False)),
        # The final pose at the top level (the contract of `rayemb register`).
        "intrinsics": final.intrinsics.K,
        "camera_from_world": final.camera_from_world,
        "projection_matrix": final.projection_matrix,
        "image_size": [final.intrinsics.width, final.intrinsics.height],
        "geometry": final.intrinsics.to_dict(),
        "stages": {k: (None if c is None else c.to_dict()) for k, c in cams.items()},
        "n_correspondences": result.n_correspondences,
        "inliers": result.inliers,
        "pnp_rmse_px": result.pnp_rmse_px,
        **result.to_json_fields(),
        "similarity_before": result.similarity_before,
        "similarity_after": result.similarity_after,
        "similarity": "multiscale NCC (0.5 global + 0.5 local patches) on the refinement's finest grid",
        "landmarks": [lm.to_dict() for lm in result.landmarks],
        "n_fiducials": sum(1 for lm in result.landmarks if lm.kind == "fiducial"),
        "n_bone_points": sum(1 for lm in result.landmarks if lm.kind == "bone"),
        "timings_s": result.timings_s,
        "warnings": list(result.warnings),
    }
    for k, c in cams.items():
        d[k] = None if c is None else c.to_dict()
    if result.options is not None:
        d["options"] = result.options.to_dict()
    if ct is not None:
        d["ct"] = {"name": ct.name, "shape": list(ct.shape), "spacing_mm": ct.spacing, "ijk_to_ras": ct.ijk_to_ras}
    if xray is not None:
        d["xray"] = {"name": getattr(xray, "name", ""), "size": [xray.intrinsics.width, xray.intrinsics.height],
                     "source": (getattr(xray, "metadata", {}) or {}).get("source")}
    if extra:
        d.update(extra)
    return _clean(d)






def write_json_atomic(data: dict, path: str | Path) -> Path:
    """Write JSON to ``path`` via a temporary file in the same directory + ``os.replace`` (atomic)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(data), f, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_scene(path: str | Path, result, ct, xray, fiducials=None) -> Path:
    """Write a Slicer scene bundle: CT, X-ray (on the final camera's detector plane), fiducials, camera transform,
    frustum models per stage, DRR, detected/reprojected points and the landmark table (through ``mrml``)."""
    from .. import mrml

    app = mrml.headless_scene()
    scene = app.scene
    try:
        ct_node = mrml.ct_to_volume_node(scene, ct, ct.name or "CT")
        xnode = mrml.xray_to_volume_node(scene, xray.pixels, xray.intrinsics, getattr(xray, "name", "X-ray") or "X-ray")
        if fiducials is not None and len(fiducials):
            mrml.fiducials_to_markups_node(scene, fiducials.labels, fiducials.ras, "Fiducials")
        mrml.write_registration_outputs(scene, xnode, result)
        mrml.show_in_slice_views(scene, background=ct_node)
        mrml.save_scene_mrb(scene, str(path))
    finally:
        app.close()
    return Path(path)


def check_output_dir(out_dir: str | Path) -> Path:
    """Make sure results can be written to ``out_dir`` before any work starts: it is (or can be made) a folder
    and a file can be created in it. Raises ``ReportError`` naming the folder and what to do."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder; give a folder for the results.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rayemb-probe-", dir=str(out))
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ReportError(f"cannot write results into {out} ({exc.strerror or exc}); choose a folder you can write "
                          "to with --out.") from None
    return out


def _commit(tmp_dir: Path, out: Path, names: list[str], result_set: tuple[str, ...]) -> dict[str, Path]:
    """Move the files ``names`` (written in ``tmp_dir``) into ``out`` in that order, and remove the files of
    ``result_set`` (globs) that this run did not write, so that a re-run replaces the whole result set. Runs with
    Ctrl-C / SIGTERM held back, so an interruption never leaves half a result set."""
    from ..progress import signals_deferred

    with signals_deferred():
        new = {out / n for n in names}
        stale = {p for pattern in result_set for p in out.glob(pattern)} - new
        moved = {}
        for n in names[:-1]:
            os.replace(tmp_dir / n, out / n)
            moved[n] = out / n
        for p in stale:
            p.unlink(missing_ok=True)
        os.replace(tmp_dir / names[-1], out / names[-1])  # the file that says "done" comes last
        moved[names[-1]] = out / names[-1]
    return moved


REGISTRATION_SET = ("registration.json", "overlay.png", "scene.mrb")
DETECTION_SET = ("detections.json", "heatmaps.npz", "heatmap_*.png")


def _keep_mask(result, xray) -> np.ndarray | None:
    """The keep-mask the registration read (``registration/xray_mask.used_mask``), for the overlay; None when the
    options turned it off."""
    from ..registration.xray_mask import used_mask

    opts = getattr(result, "options", None)
    return used_mask(xray.pixels) if opts is None or opts.refine.xray_mask else None


def write_registration(out_dir: str | Path, result, ct, xray, fiducials=None, scene: bool = True,
                       extra: dict | None = None) -> dict[str, Path]:
    """Write ``registration.json``, ``overlay.png`` and (``scene=True``) ``scene.mrb`` into ``out_dir``.

    All-or-nothing: files are written under a temporary folder and moved into place only after all succeeded,
    ``registration.json`` last; a previous run's files that this run does not write (``scene.mrb`` with
    ``scene=False``) are removed; no temporary folder survives, also not Ctrl-C or SIGTERM.
    Returns ``{"registration", "overlay", "scene"}`` → paths.
    """
    import cv2

    from ..progress import signals_deferred

    out = check_output_dir(out_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".rayemb-tmp-", dir=str(out)))
    try:
        img = overlay_image(xray.pixels, result.drr, result.landmarks, title=result.headline(),
                            verdict=getattr(result.verdict, "status", None), keep=_keep_mask(result, xray))
        if not cv2.imwrite(str(tmp_dir / "overlay.png"), img):
            raise ReportError(f"could not write {out / 'overlay.png'}")
        names = ["overlay.png"]
        if scene:
            with signals_deferred():  # an interrupt inside VTK's writer could crash the process
                save_scene(tmp_dir / "scene.mrb", result, ct, xray, fiducials)
            names.append("scene.mrb")
        (tmp_dir / "registration.json").write_text(json.dumps(registration_dict(result, ct, xray, extra), indent=2))
        names.append("registration.json")
        moved = _commit(tmp_dir, out, names, REGISTRATION_SET)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    keys = {"overlay.png": "overlay", "scene.mrb": "scene", "registration.json": "registration"}
    return {keys[n]: p for n, p in moved.items()}


def write_detections(out_dir: str | Path, result, xray, max_heatmap_pngs: int = 50) -> Path:
    """Write ``detections.json`` (label, RAS, detected pixel, confidence per point, the X-ray's geometry) and, if
    the ``results.DetectionResult`` has heatmaps, ``heatmaps.npz`` + one PNG per point (the first
    ``max_heatmap_pngs``) into ``out_dir``; all or nothing, ``detections.json`` last, stale files of an earlier
    run removed (as ``write_registration``). Returns the path of ``detections.json``."""
    import cv2

    out = check_output_dir(out_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".rayemb-tmp-", dir=str(out)))
    try:
        names = []
        if result.heatmaps is not None:
            np.savez_compressed(tmp_dir / "heatmaps.npz", heatmaps=result.heatmaps, labels=np.array(result.labels),
                                geometry=json.dumps(result.heatmap_intrinsics.to_dict()))
            names.append("heatmaps.npz")
            for i, lab in enumerate(result.labels[:max_heatmap_pngs]):
                safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in lab) or f"P{i + 1}"
                name = f"heatmap_{i:03d}_{safe}.png"
                peak = (xray.intrinsics.scale_pixels(result.uv[i], result.heatmap_intrinsics)
                        if result.status[i] == "detected" else None)  # the detection on the map's grid
                picture = heatmap_image(result.heatmaps[i], peak, f"{lab} ({result.status[i]})")
                if not cv2.imwrite(str(tmp_dir / name), picture):
                    raise ReportError(f"could not write {out / name}")
                names.append(name)
        d = result.to_dict()
        d["xray"] = {"size": [xray.intrinsics.width, xray.intrinsics.height], "geometry": xray.intrinsics.to_dict()}
        d["conventions"] = "pixels (u, v) = (column, row) of the X-ray as stored, integer at pixel centres; RAS mm"
        (tmp_dir / "detections.json").write_text(json.dumps(_clean(d), indent=2))
        names.append("detections.json")
        moved = _commit(tmp_dir, out, names, DETECTION_SET)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return moved["detections.json"]
