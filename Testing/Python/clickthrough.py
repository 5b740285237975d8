"""The click-through a tester does in Slicer, as one function shared by the module's self-test (in a real Slicer,
on ``slicer.mrmlScene``) and the headless suite (``test_workflow.py``, on a slicer-core scene).

Load the sample CT and the sample X-ray as *Sample Data* does (the X-ray's geometry comes from the sidecar beside
its file), place three fiducials, Register — the verdict, the error against the pose the X-ray was rendered at and
the output nodes are checked — then Prepare this CT with a one-minute budget, Stop it during the training, and check
that no process of it is left and its folder is complete. Only NumPy asserts, so it runs where pytest does not.

``app`` needs ``scene``, ``load_volume(path) -> node`` and ``nodes(class_name)`` (``slicer_app.SlicerApp`` or the
module test's adapter); ``python`` runs ``RayEmbRegistrationLib`` from ``module_dir`` (``PythonSlicer`` in Slicer);
``log(message)`` reports each step."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def processes_mentioning(text: str) -> list[str]:
    """Process ids whose command line contains ``text`` (Linux /proc; elsewhere the job's own state is checked)."""
    from pathlib import Path

    if not sys.platform.startswith("linux"):
        return []
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and text in (d / "cmdline").read_bytes().decode(errors="ignore"):
                found.append(d.name)
        except OSError:
            pass
    return found


def click_through(app, temp_dir: str, python: str, module_dir: str, log=print, prepare: bool = True) -> dict:
    """Run the click-through; returns the figures it checked (``mtre_mm``, ``verdict``, ``seconds``...)."""
    from RayEmbRegistrationLib import mrml
    from RayEmbRegistrationLib.evaluate import EVAL_POINTS, EVAL_POINTS_SEED, pose_errors
    from RayEmbRegistrationLib.mrml.workflow import Busy, ModuleInputs, Workflow
    from RayEmbRegistrationLib.resources import SAMPLE_CT, SAMPLE_XRAY, SAMPLE_XRAY_TRUTH

    figures: dict = {}
    log("load the sample CT and the sample X-ray")
    ct_node = app.load_volume(str(SAMPLE_CT))
    xray_node = app.load_volume(str(SAMPLE_XRAY))
    flow = Workflow(app.scene)
    inp = ModuleInputs(ct_node=ct_node, xray_node=xray_node)
    assert flow.missing_geometry(inp) == [], flow.missing_geometry(inp)
    ct = flow.ct(inp)

    log("place three fiducials on bone")
    pts = ct.sample_bone_points(3, np.random.default_rng(1))
    inp.fiducials_node = mrml.fiducials_to_markups_node(app.scene, ["F-1", "F-2", "F-3"], pts, "F")
    before = len(app.nodes("vtkMRMLNode"))

    log("Register")
    nested: list = []

    def progress(fraction, message=""):
        if not nested:  # a second click while it runs is refused, not nested
            try:
                flow.register(inp)
                nested.append("ran")
            except Busy as exc:
                nested.append(str(exc))

    t0 = time.time()
    result = flow.register(inp, progress=progress)
    figures["seconds"] = time.time() - t0
    assert nested and nested[0] != "ran" and "still running" in nested[0], nested
    truth = np.asarray(json.loads(SAMPLE_XRAY_TRUTH.read_text())["camera_from_world"])
    eval_pts = ct.sample_bone_points(EVAL_POINTS, np.random.default_rng(EVAL_POINTS_SEED))
    err = pose_errors(result.final.camera_from_world, truth, eval_pts, result.final.intrinsics)
    figures.update(verdict=result.verdict.status, mtre_mm=float(err["mtre_mm"]), network=flow.network_note)
    assert "fine-tuned on this sample CT" in flow.network_note, flow.network_note
    assert result.verdict.status == "accepted" and err["mtre_mm"] < 5.0, (result.verdict.status, err)
    for key in ("transform", "frustum.initial", "frustum.final", "drr", "points.reprojected", "table"):
        node = flow.outputs.get(key)
        assert node is not None and app.scene.GetNodeByID(node.GetID()) is node, key
    assert flow.summary(result).startswith("ACCEPTED")
    added = len(app.nodes("vtkMRMLNode")) - before
    flow.register(inp)  # a re-run updates the outputs instead of adding new ones
    assert len(app.nodes("vtkMRMLNode")) - before == added
    if not prepare:
        return figures

    log("Prepare this CT (1 minute), then Stop during the training")
    inp.prepare_minutes = 1.0
    job = flow.prepare_job(inp, temp_dir, python, module_dir).start()
    try:
        stopped_at, t0 = None, time.time()
        while time.time() - t0 < 300:
            update = job.poll()
            if update.progress and update.progress[1].startswith("fine-tuning") and stopped_at is None:
                job.stop()
                stopped_at = update.progress[0]
            if update.finished:
                break
            time.sleep(0.25)
        assert stopped_at is not None, "the preparation never reached its training"
        assert job.wait(300), "the preparation did not end after Stop"
        status, text = job.outcome()
        assert status == "prepared", text
        readiness = flow.use_prepared(inp, text)
        assert inp.model_source == "prepared" and "prepared-CT folder" in readiness, readiness
        assert not processes_mentioning(str(job.out_dir)), "a process of the preparation is left"
        figures.update(prepared=str(job.out_dir), stopped_at=stopped_at)
    finally:
        job.close()
    assert os.path.isfile(os.path.join(figures["prepared"], "readiness.json"))
    assert not any(p.exists() for p in job.owned_paths), "the CT written for the job is left behind"
    return figures
