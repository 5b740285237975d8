"""The module's steps (``mrml.workflow``) clicked through on a real slicer-core scene as a tester would in Slicer
(``clickthrough.py``, the same body as the module's self-test): sample CT + sample X-ray loaded from their files,
three fiducials, Register (accepted, close to the pose the X-ray was rendered at, outputs written once), a second
Register during the first refused, Prepare with a one-minute budget stopped during training (folder complete, no
process left). Plus the decisions the module's fields make."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

pytest.importorskip("slicer", reason="slicer-core wheel not installed")

import clickthrough  # noqa: E402
from slicer_app import SlicerApp  # noqa: E402

from RayEmbRegistrationLib.mrml.workflow import ModuleInputs, Workflow  # noqa: E402
from RayEmbRegistrationLib.resources import SAMPLE_CT, SAMPLE_CT_MODEL, SAMPLE_XRAY  # noqa: E402


def test_click_through_register_and_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYEMB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with SlicerApp() as app:
        figures = clickthrough.click_through(app, str(tmp_path), sys.executable, str(HERE.parents[1] / "RayEmbRegistration"),
                                             log=lambda m: None)
    assert figures["verdict"] == "accepted" and figures["mtre_mm"] < 5.0
    assert Path(figures["prepared"]).parent == tmp_path / "cache" / "prepared"


def test_fields_geometry_and_network_choice(tmp_path):
    with SlicerApp() as app:
        flow = Workflow(app.scene)
        ct_node, xr = app.load_volume(str(SAMPLE_CT)), app.load_volume(str(SAMPLE_XRAY))
        inp = ModuleInputs(ct_node=ct_node, xray_node=xr)
        assert flow.known_geometry(inp)["source_to_detector_mm"] == 1020.0
        inp.source_to_detector_mm = 900.0  # a typed value wins over the sidecar
        assert flow.xray(inp).intrinsics.source_to_detector_mm == 900.0
        ct = flow.ct(inp)
        inp.model_source = "file"
        with pytest.raises(ValueError, match="Model file not found: ''"):
            flow.options(inp, ct)
        inp.model_source = "prepared"
        with pytest.raises(ValueError, match="Prepare this CT"):
            flow.options(inp, ct)
        inp.model_source = "bundled"
        assert flow.options(inp, ct).model_path == str(SAMPLE_CT_MODEL)
        other = type(ct)(ct.hu + 1.0, ct.ijk_to_ras, "other")  # another CT: the general network
        assert flow.options(inp, other).model_path is None and "general" in flow.network_note
        # the pose-regression start needs a prepared folder (which holds the network)
        for source in ("bundled", "file"):
            inp.model_source, inp.model_file, inp.initial_pose = source, str(SAMPLE_CT_MODEL), "both"
            with pytest.raises(ValueError, match="pose-regression network"):
                flow.options(inp, ct)
        inp.initial_pose = "rayemb"
        assert flow.options(inp, ct).initial == "rayemb"


def test_what_the_module_imports_before_installing_needs_nothing_slicer_lacks():
    """The Logic is created when the module opens, before the first install: the workflow, the install plan and the
    job import with every package a fresh Slicer lacks (torch, OpenCV, nibabel, pynrrd, ...) made unimportable."""
    import subprocess

    blocked = ["torch", "cv2", "nibabel", "nrrd", "tifffile", "safetensors", "tqdm", "matplotlib", "nanodrr",
               "diffdrr", "torchio", "einops"]
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + f"sys.path.insert(0, {str(HERE.parents[1] / 'RayEmbRegistration')!r})\n"
            "import RayEmbRegistrationLib.mrml.workflow, RayEmbRegistrationLib.install, "
            "RayEmbRegistrationLib.training.prepare_job, RayEmbRegistrationLib.progress, RayEmbRegistrationLib.resources\n"
            "print('imported')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-2000:]


def test_a_deepfluoro_frame_loads_into_the_scene_and_registration_reports_its_truth_error(sample_ct, tmp_path):
    """The module's DeepFluoro section on a fixture in DeepFluoro's layout: CT, landmarks, the frame with its
    geometry, the ground-truth transform and frustum; Register reports the error against the ground truth."""
    import deepfluoro_fixture

    path = tmp_path / "df.h5"
    deepfluoro_fixture.write_fixture(path, sample_ct, n_frames=1, size=300)
    with SlicerApp() as app:
        flow = Workflow(app.scene)
        with pytest.raises(ValueError, match="DeepFluoro file not found"):
            flow.load_deepfluoro(str(tmp_path / "absent.h5"), 1, 0)
        nodes = flow.load_deepfluoro(str(path), 1, 0)
        assert {"ct", "landmarks", "xray", "truth_transform", "truth_frustum"} <= set(nodes)
        assert nodes["landmarks"].GetNumberOfControlPoints() == 14
        inp = ModuleInputs(ct_node=nodes["ct"], xray_node=nodes["xray"])
        assert flow.missing_geometry(inp) == []
        result = flow.register(inp)
        text = flow.summary(result, inp)
        assert "ground truth: mTRE" in text, text
        err = flow.truth_error(inp, result)
        assert err["mtre_mm"] < 5.0, err
