"""The DeepFluoro reader (``datasets/deepfluoro.py``) on a fixture written in exactly DeepFluoro's HDF5 layout from
the bundled sample CT (``deepfluoro_fixture.py``): layout checks, the CT and landmarks in RAS, the conversion of
the file's projection geometry (the ground-truth camera reproduces the file's 2D landmarks, which the fixture
computed with DeepFluoro's own formula), the preprocessing (mirror, 180° flag, border, log), and registration of
its frames."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

h5py = pytest.importorskip("h5py")

import deepfluoro_fixture  # noqa: E402

from RayEmbRegistrationLib.datasets.deepfluoro import DeepFluoroError, DeepFluoroFile, LANDMARKS  # noqa: E402


@pytest.fixture(scope="module")
def fixture(sample_ct, tmp_path_factory):
    path = tmp_path_factory.mktemp("df") / "deepfluoro_fixture.h5"
    truth = deepfluoro_fixture.write_fixture(path, sample_ct, n_frames=4, size=300)
    return path, truth


def test_ct_and_landmarks_come_back_in_ras(fixture, sample_ct):
    path, truth = fixture
    with DeepFluoroFile(path) as f:
        assert f.specimens == ["17-1882"]
        sp = f.specimen(1)
        assert sp.number == 1 and sp.frame_ids() == ["000", "001", "002", "003"]
        ct = sp.ct()
        np.testing.assert_array_equal(ct.hu, sample_ct.hu)
        np.testing.assert_allclose(ct.ijk_to_ras, sample_ct.ijk_to_ras, atol=1e-9)
        np.testing.assert_allclose(sp.centre_ras(), ct.center_ras, atol=1e-9)
        lm = sp.landmarks()
        assert list(lm.labels) == list(LANDMARKS)
        np.testing.assert_allclose(lm.ras, truth["landmarks_ras"], atol=1e-9)


def test_ground_truth_camera_reproduces_the_files_2d_landmarks(fixture):
    """The file's 2D landmarks (DeepFluoro's formula K·E·G⁻¹·X on the raw image) mapped by the reader's pixel map
    are where its ground-truth camera projects the 3D landmarks: < 0.1 px, frames with and without the 180° flag."""
    path, truth = fixture
    with DeepFluoroFile(path) as f:
        sp = f.specimen("17-1882")
        lm = sp.landmarks()
        for i, fid in enumerate(sp.frame_ids()):
            fr = sp.frame(fid)
            assert fr.mirrored and fr.rotated == (i % 2 == 1)
            uv_file = np.array([fr.landmarks_2d[n] for n in lm.labels])
            err = np.linalg.norm(fr.truth.project(lm.ras) - uv_file, axis=1)
            assert err.max() < 0.1, (fid, err.max())
            # the camera is the one the frame was rendered with
            np.testing.assert_allclose(fr.truth.camera_from_world, truth["cameras"][i].camera_from_world, atol=1e-6)
            assert fr.truth.intrinsics == truth["cameras"][i].intrinsics or np.allclose(
                fr.truth.intrinsics.K, truth["cameras"][i].intrinsics.K, atol=1e-6)


def test_preprocessing_recovers_the_rendered_line_integrals(fixture, sample_ct):
    """Mirror, rotation and border undone: the preprocessed frame is the rendered image up to log(I0) (a constant)."""
    from RayEmbRegistrationLib.rendering.appearance import draw_params, simulate

    path, truth = fixture
    with DeepFluoroFile(path) as f:
        for i in (0, 1):
            fr = f.specimen(1).frame(i)
            cam = truth["cameras"][i]
            img, _ = simulate(sample_ct, cam.intrinsics, cam.camera_from_world, "diffdrr",
                              params=draw_params("diffdrr", np.random.default_rng([0, i])))
            diff = fr.xray.pixels - img
            assert fr.xray.pixels.shape == img.shape
            assert np.ptp(diff) < 1e-3, np.ptp(diff)
            assert any("mirrored" in n for n in fr.xray.metadata["notes"])


def test_a_frame_registers_to_its_ground_truth(fixture):
    """A fixture frame through the pipeline with the bundled network: the usual accuracy against its truth."""
    from RayEmbRegistrationLib.registration.pipeline import Registrar
    from RayEmbRegistrationLib.evaluate import pose_errors
    from RayEmbRegistrationLib.options import RegistrationOptions

    path, truth = fixture
    with DeepFluoroFile(path) as f:
        sp = f.specimen(1)
        ct, lm = sp.ct(), sp.landmarks()
        reg = Registrar(ct, RegistrationOptions())
        errs = []
        for fid in ("000", "001"):
            fr = sp.frame(fid)
            res = reg.register(fr.xray)
            errs.append(pose_errors(res.final.camera_from_world, fr.truth.camera_from_world, lm.ras,
                                    fr.truth.intrinsics)["mtre_mm"])
    assert min(errs) < 5.0, errs


def test_layout_errors_name_what_is_missing(tmp_path, fixture):
    with pytest.raises(DeepFluoroError, match="not found"):
        DeepFluoroFile(tmp_path / "absent.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DeepFluoroError, match="not a readable HDF5"):
        DeepFluoroFile(tmp_path / "text.h5")
    with h5py.File(tmp_path / "pre.h5", "w") as h5:
        h5.create_group("land-names")["num-lands"] = 14
        h5.create_group("01")["projs"] = np.zeros((1, 4, 4))
    with pytest.raises(DeepFluoroError, match="preprocessed 2D files.*no CT"):
        DeepFluoroFile(tmp_path / "pre.h5")
    with h5py.File(tmp_path / "pp.h5", "w") as h5:
        h5.create_group("proj-params")["intrinsic"] = np.eye(3)
        h5.create_group("17-1882")
    with pytest.raises(DeepFluoroError, match="proj-params lacks extrinsic"):
        DeepFluoroFile(tmp_path / "pp.h5")
    path, _ = fixture
    with DeepFluoroFile(path) as f:
        with pytest.raises(DeepFluoroError, match="no specimen '18-1109'"):
            f.specimen(2)
        with pytest.raises(DeepFluoroError, match="1–6"):
            f.specimen(7)
        with pytest.raises(DeepFluoroError, match="no frame '042'"):
            f.specimen(1).frame(42)


def test_evaluate_deepfluoro_command_scores_resumes_and_prints_published_rows(fixture, tmp_path):
    """``rayemb evaluate --deepfluoro``: both methods on two frames, scored over the 14 landmarks; a rerun adds
    nothing; the tables have per-specimen and pooled rows; a transcribed published CSV is printed beside."""
    import csv

    from RayEmbRegistrationLib.cli import main

    path, _ = fixture
    out = tmp_path / "df_eval"
    pub = tmp_path / "published.csv"
    pub.write_text("source,specimen,method,mTRE_p50_mm\nexample transcription,1,RayEmb,1.0\n")
    args = ["evaluate", "--deepfluoro", str(path), "--specimen", "1", "--frames", "0-1", "--out", str(out),
            "--quiet", "--published", str(pub), "--methods", "rayemb", "intensity"]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "cases.csv")))
    assert sorted((r["frame"], r["method"]) for r in rows) == [("000", "intensity"), ("000", "rayemb"),
                                                                ("001", "intensity"), ("001", "rayemb")]
    assert all(r["mirrored"] == "1" for r in rows)
    assert {r["protocol"] for r in rows} == {"general network", "standard AP start"}
    assert min(float(r["mtre_mm"]) for r in rows if r["method"] == "rayemb") < 5.0
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert {(r["specimen"], r["method"]) for r in summary} == {("17-1882", "rayemb"), ("pooled", "rayemb"),
                                                                ("17-1882", "intensity"), ("pooled", "intensity")}
    md = (out / "summary.md").read_text()
    assert "example transcription" in md and (out / "mtre.png").stat().st_size > 1000
    assert main(args) == 0  # resumed: nothing left to run, nothing duplicated
    assert len(list(csv.DictReader(open(out / "cases.csv")))) == 4


def test_fixed_landmark_baseline_trains_detects_and_solves(fixture, tmp_path):
    """The fixed-landmark network on the fixture's CT (a short budget): it trains, is written with its landmark
    names and sha256, detects the 14 landmarks on a frame, and PnP on the confident ones runs or refuses clearly."""
    from RayEmbRegistrationLib.detection.fixed_landmarks import (detect_fixed, fixed_landmark_pose,
                                                                 load_fixed_landmarks, train_fixed_landmarks)
    from RayEmbRegistrationLib.registration.pose import PoseError

    path, truth = fixture
    with DeepFluoroFile(path) as f:
        sp = f.specimen(1)
        ct, lm = sp.ct(), sp.landmarks()
        w = train_fixed_landmarks(ct, lm, tmp_path / "fixed.safetensors", minutes=0.3, size=64, log=lambda m: None)
        assert (tmp_path / "fixed.safetensors.sha256").is_file()
        model, names = load_fixed_landmarks(w)
        assert names == list(LANDMARKS) and model.config.dim == 14
        fr = sp.frame(0)
        uv, conf = detect_fixed(model, fr.xray)
        assert uv.shape == (14, 2) and ((conf > 0) & (conf <= 1)).all()
        W, H = fr.xray.intrinsics.size
        assert (uv >= -0.5).all() and (uv[:, 0] <= W - 0.5).all() and (uv[:, 1] <= H - 0.5).all()
        try:
            res = fixed_landmark_pose(model, names, fr.xray, lm)
            assert res.camera_from_world.shape == (4, 4)
        except PoseError as exc:
            assert "PnP" in str(exc) or "inlier" in str(exc).lower() or "pose" in str(exc).lower()
    with pytest.raises(ValueError, match="not a fixed-landmark network"):
        from RayEmbRegistrationLib.resources import BUNDLED_MODEL

        load_fixed_landmarks(BUNDLED_MODEL)


def test_train_landmarks_and_register_from_fixed_landmarks_on_the_command_line(fixture, tmp_path):
    """``rayemb train-landmarks`` then ``rayemb register --landmark-model``: a network for a CT's named landmarks,
    and a registration that starts from PnP on its detections (or exits 2 naming why PnP could not run)."""
    from RayEmbRegistrationLib.cli import main
    from RayEmbRegistrationLib.inputs.fiducials import save_markups_json
    from RayEmbRegistrationLib.inputs.volume import save_ct
    from RayEmbRegistrationLib.inputs.xray import save_xray

    path, _ = fixture
    with DeepFluoroFile(path) as f:
        sp = f.specimen(1)
        ct, lm, fr = sp.ct(), sp.landmarks(), sp.frame(0)
    save_ct(ct, tmp_path / "ct.nii.gz")
    save_markups_json(lm, tmp_path / "lm.mrk.json")
    save_xray(fr.xray.pixels, fr.xray.intrinsics, tmp_path / "xray.tif")
    w = tmp_path / "fixed.safetensors"
    assert main(["train-landmarks", "--ct", str(tmp_path / "ct.nii.gz"), "--fiducials", str(tmp_path / "lm.mrk.json"),
                 "--out", str(w), "--minutes", "0.2", "--size", "64", "--quiet"]) == 0
    assert w.is_file() and (tmp_path / "fixed.json").is_file()
    base = ["register", "--ct", str(tmp_path / "ct.nii.gz"), "--xray", str(tmp_path / "xray.tif"), "--no-scene",
            "--quiet", "--landmark-model", str(w)]
    assert main(base + ["--out", str(tmp_path / "r0")]) == 2  # without the landmarks it was trained for
    rc = main(base + ["--fiducials", str(tmp_path / "lm.mrk.json"), "--out", str(tmp_path / "r1")])
    assert rc in (0, 2, 4)
    if rc != 2:
        import json

        r = json.loads((tmp_path / "r1" / "registration.json").read_text())
        assert r["initial_method"] == "given"


def test_variants_of_the_layout_read_the_same(fixture, tmp_path):
    """A copy with a 3×4 extrinsic and pose, a (1, H, W) frame and frames named without zero padding reads the same
    camera and image as the original."""
    import shutil

    path, _ = fixture
    var = tmp_path / "variant.h5"
    shutil.copy(path, var)
    with h5py.File(var, "r+") as h5:
        e = h5["proj-params/extrinsic"][()]
        del h5["proj-params/extrinsic"]
        h5["proj-params/extrinsic"] = e[:3]
        g = h5["17-1882/projections"]
        g.move("001", "1")
        img = g["1/image/pixels"][()]
        del g["1/image/pixels"]
        g["1/image/pixels"] = img[None]
        G = g["1/gt-poses/cam-to-pelvis-vol"][()]
        del g["1/gt-poses/cam-to-pelvis-vol"]
        g["1/gt-poses/cam-to-pelvis-vol"] = G[:3]
    with DeepFluoroFile(path) as a, DeepFluoroFile(var) as b:
        fa, fb = a.specimen(1).frame(1), b.specimen(1).frame(1)
    np.testing.assert_allclose(fb.truth.camera_from_world, fa.truth.camera_from_world, atol=1e-9)
    np.testing.assert_array_equal(fb.xray.pixels, fa.xray.pixels)


def test_a_bad_frame_list_is_a_clear_error(fixture, tmp_path, capsys):
    from RayEmbRegistrationLib.cli import main

    path, _ = fixture
    assert main(["evaluate", "--deepfluoro", str(path), "--frames", "one-two", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "--frames 'one-two': give frame numbers and ranges" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written for a bad command
