"""The ``rayemb`` command (cli.py) and the output writer (report.py) on the real sample CT."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.camera import Intrinsics, carm_camera_from_world
from RayEmbRegistrationLib.cli import build_parser, main
from RayEmbRegistrationLib.pipeline import RegistrationOptions, register, simulate_xray
from RayEmbRegistrationLib.render import DRRRenderer
from RayEmbRegistrationLib.report import write_registration
from RayEmbRegistrationLib.xray import XRayImage, load_xray

SUBCOMMANDS = ["register", "detect", "render", "demo", "evaluate", "generate", "train", "finetune"]


def test_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "RayEmbRegistrationLib.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for name in SUBCOMMANDS:
        assert name in r.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: rayemb " + name in text
    if name in ("generate", "train", "finetune"):  # options owned by training/ (checked there)
        return
    # every option is explained
    sub = build_parser()._subparsers._group_actions[0].choices[name]
    for act in sub._actions:
        if act.option_strings and act.dest != "help":
            assert act.help, f"{name} {act.option_strings} has no help text"


@pytest.fixture(scope="module")
def geometry_json(tmp_path_factory):
    p = tmp_path_factory.mktemp("geom") / "geometry.json"
    d = Intrinsics.deepfluoro(64).to_dict()
    p.write_text(json.dumps(d))
    return p


def test_render_writes_sidecar_readable_by_load_xray(sample_ct_path, sample_ct, geometry_json, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "drr.tif"
    rc = main(["render", "--ct", str(sample_ct_path), "--carm-angles", "20", "-10", "700", "--geometry", str(geometry_json), "--out", str(out)])
    assert rc == 0
    x = load_xray(out)
    intr = Intrinsics.deepfluoro(64)
    np.testing.assert_allclose(x.intrinsics.K, intr.K)
    assert x.carm is not None and x.carm.primary_deg == 20
    T = carm_camera_from_world(20, -10, 700, sample_ct.center_ras)
    ref = DRRRenderer(sample_ct, intr).render_numpy(T)
    np.testing.assert_allclose(x.pixels, ref, rtol=1e-5, atol=1e-5)
    # --pose with the pose written in the sidecar gives the same image
    out2 = tmp_path / "drr2.npy"
    assert main(["render", "--ct", str(sample_ct_path), "--pose", str(out) + ".json", "--geometry", str(geometry_json), "--out", str(out2)]) == 0
    np.testing.assert_allclose(load_xray(out2).pixels, ref, rtol=1e-5, atol=1e-5)


def _bad_register(args, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["register", *args, "--out", str(out), "--quiet", "--no-scene"])
    err = capsys.readouterr().err
    assert rc != 0
    assert not (out / "registration.json").exists()
    assert "error" in err
    return err


def test_register_bad_inputs(sample_ct_path, geometry_json, tmp_path, capsys):
    img = tmp_path / "xray.npy"
    np.save(img, np.random.default_rng(0).random((64, 64)).astype(np.float32))
    # missing CT file
    assert "not found" in _bad_register(["--ct", str(tmp_path / "nope.nii.gz"), "--xray", str(img), "--geometry", str(geometry_json)], tmp_path, capsys)
    # X-ray without any geometry
    assert "geometry" in _bad_register(["--ct", str(sample_ct_path), "--xray", str(img)], tmp_path, capsys)
    # unreadable fiducials
    bad = tmp_path / "f.csv"
    bad.write_text("this is not, a fiducial\n")
    _bad_register(["--ct", str(sample_ct_path), "--xray", str(img), "--geometry", str(geometry_json), "--fiducials", str(bad)], tmp_path, capsys)
    # valid inputs but no trained network (or a broken weights path) → non-zero, nothing written
    _bad_register(["--ct", str(sample_ct_path), "--xray", str(img), "--geometry", str(geometry_json), "--model", str(tmp_path / "none.safetensors")], tmp_path, capsys)


def test_render_bad_pose(sample_ct_path, geometry_json, tmp_path, capsys):
    p = tmp_path / "pose.json"
    p.write_text("[[1, 0], [0, 1]]")
    assert main(["render", "--ct", str(sample_ct_path), "--pose", str(p), "--geometry", str(geometry_json), "--out", str(tmp_path / "x.tif")]) != 0
    assert "4×4" in capsys.readouterr().err


@pytest.fixture(scope="module")
def result(sample_ct):
    torch.set_num_threads(1)
    intr = Intrinsics.deepfluoro(64)
    T = carm_camera_from_world(0, 0, 750, sample_ct.center_ras)
    xray = XRayImage(simulate_xray(sample_ct, intr, T, 1), intr, "sim")
    opts = RegistrationOptions(initial_camera_from_world=T, refine_levels=(32, 64), refine_iterations=(5, 3), device="cpu")
    return xray, register(sample_ct, xray, None, opts)


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
