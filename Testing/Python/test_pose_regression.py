"""The pose-regression network (``registration/pose_regression.py``) and its strategy (``initial_pose.PoseRegression``,
``RayEmbPnP(regression=True)``) on the real sample CT: the pose parameterisation, the X-ray resampled into the
network's camera, training on a tiny budget, the weight file, and the strategies' contract inside ``Registrar``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.detection.model import ModelFileError
from RayEmbRegistrationLib.errors import ModelUnavailable
from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics
from RayEmbRegistrationLib.inputs.fiducials import Fiducials
from RayEmbRegistrationLib.inputs.xray import XRayImage
from RayEmbRegistrationLib.options import RegistrationOptions
from RayEmbRegistrationLib.registration import pose_regression as pr
from RayEmbRegistrationLib.registration.pipeline import Registrar
from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose, simulate_xray
from RayEmbRegistrationLib.resources import BUNDLED_MODEL


@pytest.fixture(scope="module")
def regressor(sample_ct, tmp_path_factory):
    """A pose-regression network trained for 3 s (small pool and batch) on the sample CT."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("reg") / "pose_regression.safetensors"
    pr.train_pose_regression(sample_ct, path, minutes=0.05, batch=4, pool=8, renew=1, curve_at_minutes=[0.05],
                             heldout_n=1, log=lambda m: None)
    return path


@pytest.fixture(scope="module")
def xray(sample_ct):
    intr = Intrinsics.deepfluoro(128)
    rng = np.random.default_rng(5)
    T = sample_visible_pose(sample_ct, intr, rng, poses="clinical")
    return XRayImage(simulate_xray(sample_ct, intr, T, rng), intr, "clinical view"), T


def _outputs_of(T: np.ndarray, centroid: np.ndarray) -> torch.Tensor:
    """The network outputs (1, 9) that stand for ``T``: the parameterisation inverted by hand."""
    R = T[:3, :3] @ pr._ap_rotation().T
    six = np.r_[R[:, 0] - [1, 0, 0], R[:, 1] - [0, 1, 0]]
    p = (T[:3, :3] @ centroid + T[:3, 3] - [0.0, 0.0, pr._DEPTH0_MM]) / pr._UNIT_MM
    return torch.tensor(np.r_[six, p])[None]


def test_outputs_decode_to_the_pose_they_stand_for_and_its_loss_is_zero(sample_ct, xray):
    from RayEmbRegistrationLib.detection.templates import ct_isocenter

    _, T = xray
    c = ct_isocenter(sample_ct)
    out = _outputs_of(T, c)
    assert np.allclose(pr.decode(out, c)[0].numpy(), T, atol=1e-9)
    loss, parts = pr.pose_loss(out, torch.as_tensor(T)[None], c)
    assert float(loss) < 1e-6 and parts["rot_deg"] < 1e-3 and parts["centroid_mm"] < 1e-6
    # zero outputs = an AP view 700 mm from the centroid, centred on it
    T0 = pr.decode(torch.zeros(1, 9), c)[0].numpy()
    cam = Camera(Intrinsics.deepfluoro(128), T0)
    assert np.allclose(cam.to_camera(c[None])[0], [0, 0, 700.0], atol=1e-6)
    assert np.allclose(cam.project(c[None])[0], np.array(cam.intrinsics.principal_point_px), atol=1e-6)
    # a pose turned 10° and moved 50 mm costs the 10° (in rad) and the centroid's move
    from RayEmbRegistrationLib.geometry.camera import rigid, rotation_matrix

    off = rigid(rotation_matrix(np.radians([10.0, 0, 0])), np.array([50.0, 0, 0])) @ T
    loss, parts = pr.pose_loss(out, torch.as_tensor(off)[None], c)
    assert parts["rot_deg"] == pytest.approx(10.0, abs=0.01)
    assert float(loss) > np.radians(10.0) + 0.05 and parts["centroid_mm"] > 40.0


def test_an_xray_of_another_detector_lands_in_the_networks_camera_where_the_camera_projects_a_point(sample_ct):
    """A bright spot at the projection of a 3D point on a detector with another SDD, pixel size, shape and principal
    point appears where the network's camera (same source and orientation) projects that point."""
    from RayEmbRegistrationLib.detection.templates import ct_isocenter

    c = ct_isocenter(sample_ct)
    T = pr.decode(torch.zeros(1, 9), c)[0].numpy()
    other = Intrinsics(900.0, (0.6, 0.5), 300, 240, (170.0, 110.0))
    point = c + np.array([25.0, -15.0, 10.0])
    u, v = Camera(other, T).project(point[None])[0]
    vv, uu = np.mgrid[0:240, 0:300]
    img = np.exp(-((uu - u) ** 2 + (vv - v) ** 2) / (2 * 3.0 ** 2)).astype(np.float32)
    net = pr.network_view(img, other, 128)[0, 0].numpy()
    w = np.where(net >= 0.5, net, 0.0)  # the spot's centroid (its top is clipped flat by the input normalisation)
    gv, gu = np.mgrid[0:128, 0:128]
    peak = np.array([(w * gu).sum(), (w * gv).sum()]) / w.sum()
    want = Camera(Intrinsics.deepfluoro(128), T).project(point[None])[0]
    assert np.linalg.norm(peak - want) <= 0.25


def test_training_on_a_tiny_budget_writes_a_checked_network_with_its_learning_curve(regressor, sample_ct, xray):
    meta = json.loads(regressor.with_suffix(".json").read_text())
    assert meta["config"]["backbone"] == "pose_regressor" and meta["config"]["extra"]["kind"] == pr.KIND
    assert meta["metadata"]["steps"] >= 1
    curve = meta["metadata"]["learning_curve"]
    assert curve and set(curve[-1]) >= {"project", "diffdrr", "physics", "minutes", "steps"}
    assert all(np.isfinite(curve[-1][f]["mtre_p50_mm"]) for f in ("project", "diffdrr", "physics"))
    model = pr.load_pose_regressor(regressor)
    assert model.sha256 and (regressor.parent / (regressor.name + ".sha256")).is_file()
    T = pr.predict_pose(model, xray[0])
    assert T.shape == (4, 4) and np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
    assert np.linalg.det(T[:3, :3]) == pytest.approx(1.0)


def test_another_network_or_a_changed_file_is_refused(regressor, tmp_path):
    with pytest.raises(ModelFileError, match="not a pose-regression network"):
        pr.load_pose_regressor(BUNDLED_MODEL)
    bad = tmp_path / regressor.name
    for f in regressor.parent.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    data = bytearray(bad.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256 mismatch"):
        pr.load_pose_regressor(bad)


def test_the_regression_strategy_starts_from_the_networks_pose_and_reprojects_the_fiducials(regressor, sample_ct, xray):
    x, _ = xray
    fids = Fiducials(["A", "B"], sample_ct.sample_bone_points(2, np.random.default_rng(1)))
    o = RegistrationOptions(initial="regression", regression_path=str(regressor)).replace(refine={"enabled": False})
    res = Registrar(sample_ct, o).register(x, fids)
    assert res.initial_method == "regression" and res.final_stage == "initial"
    assert np.allclose(res.initial.camera_from_world, pr.predict_pose(pr.load_pose_regressor(regressor), x))
    assert [lm.label for lm in res.landmarks] == ["A", "B"]
    assert all(np.isfinite(lm.reprojected_px).all() and not np.isfinite(lm.detected_px).any() for lm in res.landmarks)
    assert "regression" in res.timings_s


def test_regression_and_both_without_a_network_are_a_clear_error(sample_ct, xray):
    for initial in ("regression", "both"):
        with pytest.raises(ModelUnavailable, match="rayemb prepare"):
            Registrar(sample_ct, RegistrationOptions(initial=initial)).register(xray[0])


def test_both_puts_the_regressed_pose_into_the_competition_of_the_pnp_poses(regressor, sample_ct, xray):
    from RayEmbRegistrationLib.registration.initial_pose import RayEmbPnP

    x, _ = xray
    o = RegistrationOptions(initial="both", regression_path=str(regressor)).replace(refine={"rescue": False})
    registrar = Registrar(sample_ct, o)
    start = RayEmbPnP(regression=True).initial_pose(registrar, x)
    hyps = start.hypotheses
    assert hyps[-1].detection == "pose regression" and sum(h.chosen for h in hyps) == 1
    best = max(range(len(hyps)), key=lambda k: hyps[k].coarse_similarity)
    assert hyps[best].chosen  # the most similar start is the one refined
    assert start.method == ("regression" if best == len(hyps) - 1 else "rayemb")
    # the other strategy's start is kept: a result the verdict does not accept is refined from it too
    (other,) = start.alternatives
    assert {start.method, other.method} == {"rayemb", "regression"} and not other.alternatives
    res = registrar.register(x)
    assert res.initial_method in ("rayemb", "regression")
    assert res.verdict.accepted or "other_start" in res.timings_s  # not accepted: the other start was tried


def test_both_falls_back_to_the_regressed_pose_when_pnp_finds_none(regressor, sample_ct, xray):
    x, _ = xray
    # 3 bone points and no fiducials: too few correspondences for PnP
    o = RegistrationOptions(initial="both", regression_path=str(regressor)).replace(
        detection={"n_bone_keep": 3}, refine={"enabled": False})
    res = Registrar(sample_ct, o).register(x)
    assert res.initial_method == "regression"
    assert "RayEmb found no pose" in res.pnp_hypotheses[0].detection
    with pytest.raises(Exception, match="correspondences|PnP|pose"):
        Registrar(sample_ct, o.replace(initial="rayemb")).register(x)


def test_auto_starts_from_both_when_the_cts_network_is_there_else_from_rayemb(regressor):
    from RayEmbRegistrationLib.registration.initial_pose import GivenPose, PoseRegression, RayEmbPnP, strategy_for

    assert RegistrationOptions().initial == "auto"
    assert strategy_for(RegistrationOptions()) == RayEmbPnP(regression=False)
    assert strategy_for(RegistrationOptions(regression_path=str(regressor))) == RayEmbPnP(regression=True)
    assert strategy_for(RegistrationOptions(initial="rayemb", regression_path=str(regressor))) == RayEmbPnP()
    assert strategy_for(RegistrationOptions(initial="regression", regression_path=str(regressor))) == PoseRegression()
    assert isinstance(strategy_for(RegistrationOptions(initial="both"), np.eye(4)), GivenPose)  # a caller's start wins
