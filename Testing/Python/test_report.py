"""Registration outputs (``report.py``): registration.json's contract, overlay.png, scene.mrb, all or nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.geometry.camera import Intrinsics
from RayEmbRegistrationLib.geometry.carm import carm_camera_from_world
from RayEmbRegistrationLib.options import RefineOptions, RegistrationOptions
from RayEmbRegistrationLib.registration.pipeline import register
from RayEmbRegistrationLib.outputs.report import write_registration
from RayEmbRegistrationLib.rendering.simulate import simulate_xray
from RayEmbRegistrationLib.inputs.xray import XRayImage


@pytest.fixture(scope="module")
def result(sample_ct):
    torch.set_num_threads(1)
    intr = Intrinsics.deepfluoro(64)
    T = carm_camera_from_world(0, 0, 750, sample_ct.center_ras)
    xray = XRayImage(simulate_xray(sample_ct, intr, T, 1), intr, "sim")
    opts = RegistrationOptions(refine=RefineOptions().with_levels((32, 64), (5, 3)), device="cpu")
    return xray, register(sample_ct, xray, None, opts, initial_camera_from_world=T)


def test_write_registration_outputs(sample_ct, result, tmp_path):
    xray, res = result
    paths = write_registration(tmp_path, res, sample_ct, xray, scene=True)
    d = json.loads((tmp_path / "registration.json").read_text())
    K, T, P = (np.array(d[k]) for k in ("intrinsics", "camera_from_world", "projection_matrix"))
    assert K.shape == (3, 3) and T.shape == (4, 4) and P.shape == (3, 4)
    np.testing.assert_allclose(P, K @ T[:3], rtol=1e-9)
    np.testing.assert_allclose(T, res.final.camera_from_world)
    for stage in ("initial", "refined"):
        assert np.array(d[stage]["projection_matrix"]).shape == (3, 4)
    assert "landmarks" in d and "timings_s" in d and d["final_stage"] in ("initial", "refined")
    assert (tmp_path / "overlay.png").stat().st_size > 0
    assert (tmp_path / "scene.mrb").stat().st_size > 0
    assert not list(tmp_path.glob(".rayemb-tmp-*"))
    assert set(paths) == {"registration", "overlay", "scene"}


def test_write_registration_all_or_nothing(sample_ct, result, tmp_path):
    xray, res = result
    import dataclasses

    broken = dataclasses.replace(res, drr=np.full((4, 4), np.nan, np.float32))  # the scene writer rejects it
    with pytest.raises(ValueError):
        write_registration(tmp_path, broken, sample_ct, xray, scene=True)
    assert not (tmp_path / "registration.json").exists()
    assert not list(tmp_path.glob(".rayemb-tmp-*"))


def test_rerun_replaces_the_whole_result_set(sample_ct, result, tmp_path):
    """A --no-scene re-run must not leave the previous X-ray's scene.mrb beside the new result."""
    xray, res = result
    write_registration(tmp_path, res, sample_ct, xray, scene=True)
    assert (tmp_path / "scene.mrb").is_file()
    (tmp_path / "notes.txt").write_text("mine")  # not ours: never touched
    paths = write_registration(tmp_path, res, sample_ct, xray, scene=False)
    assert set(paths) == {"registration", "overlay"} and not (tmp_path / "scene.mrb").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine" and not list(tmp_path.glob(".rayemb-tmp-*"))


def test_output_folder_errors_name_the_folder(tmp_path):
    from RayEmbRegistrationLib.outputs.report import ReportError, check_output_dir

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ReportError, match="is a file"):
        check_output_dir(f)
    with pytest.raises(ReportError, match="cannot write results into"):
        check_output_dir(f / "sub")
    assert check_output_dir(tmp_path / "new" / "dir").is_dir()
