"""The rescue search (rescue.py) and its place in the pipeline, on DRRs of the real sample CT at known poses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.registration import rescue
from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics
from RayEmbRegistrationLib.geometry.carm import RAYEMB_SAMPLER
from RayEmbRegistrationLib.cli import build_parser
from RayEmbRegistrationLib.cli.common import options_from_args
from RayEmbRegistrationLib.options import OptionsError, RefineOptions, RegistrationOptions
from RayEmbRegistrationLib.registration.pipeline import Registrar
from RayEmbRegistrationLib.registration.refine import Refiner
from RayEmbRegistrationLib.rendering.render import DRRRenderer
from RayEmbRegistrationLib.rendering.simulate import simulate_xray
from RayEmbRegistrationLib.registration.verdict import judge
from RayEmbRegistrationLib.inputs.xray import XRayImage


@pytest.fixture(scope="module")
def setup(sample_ct):
    torch.set_num_threads(1)
    intr = Intrinsics.deepfluoro(128)
    T = RAYEMB_SAMPLER.poses(np.array([[0.05, -0.03, 0.1]]), np.array([[5.0, -10.0, 260.0]]), sample_ct.center_ras)[0]
    img = DRRRenderer(sample_ct, intr, bone_multiplier=2.0).render_numpy(T)
    img = (img + np.random.default_rng(5).normal(0, 0.02 * img.max(), img.shape)).astype(np.float32)
    pts = sample_ct.sample_bone_points(300, np.random.default_rng(4))
    return intr, T, img, pts


def _mtre(intr, A, B, pts):
    return float(np.linalg.norm(Camera(intr, A).to_camera(pts) - Camera(intr, B).to_camera(pts), axis=1).mean())


def test_rotated_about_keeps_its_centre_and_rotates_by_the_angles():
    T = np.eye(4)
    T[:3, 3] = [10.0, -20.0, 700.0]
    c = np.array([5.0, 3.0, 650.0])
    assert np.allclose(rescue.rotated_about(T, c, 0.0, 0.0), T)
    D = rescue.rotated_about(T, c, 30.0, -15.0) @ np.linalg.inv(T)
    assert np.allclose(D[:3, :3] @ c + D[:3, 3], c)  # the centre stays where it is
    assert np.allclose(D[:3, :3] @ D[:3, :3].T, np.eye(3))
    angle = math.degrees(math.acos((np.trace(D[:3, :3]) - 1) / 2))
    assert 30.0 < angle < 45.0  # 30° about x then 15° about y: ~33.5°
    ax_only = rescue.rotated_about(T, c, 20.0, 0.0) @ np.linalg.inv(T)
    assert np.allclose(ax_only[:3, :3] @ [1.0, 0.0, 0.0], [1.0, 0.0, 0.0])  # about the camera's x axis


def test_rotation_starts_keep_the_bone_in_view_at_its_pixel(sample_ct, setup):
    intr, T, _, pts = setup
    angles = (-30.0, 0.0, 30.0)
    starts = rescue.rotation_starts([T, T], intr, pts, angles)
    assert starts.shape == (2 * len(angles) ** 2, 4, 4)
    assert any(np.allclose(S, T) for S in starts)  # the pair (0, 0) is the base itself
    c_cam = rescue.view_centre(Camera(intr, T), pts)
    assert c_cam[2] > 0
    for S in starts:
        # the view centre (a camera-frame point) is fixed by every start: same depth, same pixel
        D = S @ np.linalg.inv(T)
        assert np.allclose(D[:3, :3] @ c_cam + D[:3, 3], c_cam, atol=1e-6)


@pytest.mark.parametrize("screen", [0, 8])
def test_search_recovers_a_start_rotated_beyond_the_capture_range(sample_ct, setup, screen):
    """A start 30° off about the image's x axis (through the bone in view): the refinement alone does not get back,
    the rescue search does — the failure mode of clinical close-ups it is for (docs/pipeline.md, "Rescue search") —
    whether its starts are ranked as they are (``screen`` 0) or after a short refinement each."""
    intr, T, img, pts = setup
    refiner = Refiner(sample_ct, RefineOptions.schedule(128, 40))
    start = rescue.rotated_about(T, rescue.view_centre(Camera(intr, T), pts), 30.0, 0.0)
    assert _mtre(intr, start, T, pts) > 30.0
    plain = refiner.refine(img, intr, start)
    best, n, seconds = rescue.search(refiner, img, intr, [start], pts, (-30.0, -15.0, 0.0, 15.0, 30.0), top=3,
                                     grid_px=32, compare_levels=1, screen_iterations=screen)
    assert n == 25 and seconds > 0
    assert _mtre(intr, best.camera_from_world, T, pts) < 3.0
    assert best.similarity_after >= plain.similarity_after
    assert _mtre(intr, plain.camera_from_world, T, pts) > _mtre(intr, best.camera_from_world, T, pts)


def test_rescue_options_and_flag():
    assert RefineOptions().rescue and RefineOptions().rescue_compare_levels == 1
    # registration.json's rescue.grid_px: the grid the starts were ranked on (the coarsest level when screened)
    two = dict(levels=(48, 96), iterations=(40, 20), rescue_grid_px=64)
    assert RefineOptions(**two, rescue_screen_iterations=10).rescue_ranking_px == 48
    assert RefineOptions(**two, rescue_screen_iterations=0).rescue_ranking_px == 64
    for bad in ({"rescue_top": 0}, {"rescue_angles_deg": (10.0, 200.0)}, {"rescue_angles_deg": [0.0]},
                {"rescue_grid_px": 4}, {"rescue_compare_levels": -1}, {"rescue_screen_iterations": -1},
                {"rescue_screen_iterations": 2.5}):
        with pytest.raises(OptionsError, match="refine.rescue_"):
            RefineOptions(**bad)
    base = ["register", "--ct", "ct.nii.gz", "--xray", "x.dcm", "--out", "o"]
    assert options_from_args(build_parser().parse_args(base)).refine.rescue
    assert not options_from_args(build_parser().parse_args(base + ["--no-rescue"])).refine.rescue
    assert options_from_args(build_parser().parse_args(base)).pnp.reseat_implausible
    assert not options_from_args(build_parser().parse_args(base + ["--no-reseat"])).pnp.reseat_implausible
    wide = options_from_args(build_parser().parse_args(base + ["--rescue-angles", "-60", "0", "60"]))
    assert wide.refine.rescue_angles_deg == (-60.0, 0.0, 60.0)
    from RayEmbRegistrationLib.cli.common import CLIError

    with pytest.raises(CLIError, match="--rescue-angles"):
        options_from_args(build_parser().parse_args(base + ["--rescue-angles", "200"]))
    assert options_from_args(build_parser().parse_args(base + ["--rescue-screen", "0"])).refine.rescue_screen_iterations == 0
    with pytest.raises(CLIError, match="--rescue-screen"):
        options_from_args(build_parser().parse_args(base + ["--rescue-screen", "-3"]))


def test_pipeline_rescue_adopts_a_more_similar_pose_and_judges_it_again(sample_ct, setup):
    """``Registrar._rescue`` on a real registration that ended in the wrong basin (a start 30° off, refined as given):
    the rescued pose is more similar and right, it is finalised and judged again — uncertain here, since no
    detection supports it (a pose from the wide search needs ``min_rescued_agreement`` of them) — and
    registration.json says what the search did. ``_rescue_applies``: only a RayEmb result the verdict did not
    accept, and not with ``rescue=False``; a caller's start pose is never rescued by ``register``."""
    import dataclasses

    from RayEmbRegistrationLib.registration.initial_pose import GivenPose

    intr, T, _, pts = setup
    xray = XRayImage(simulate_xray(sample_ct, intr, T, 3), intr, "sim")
    opts = RegistrationOptions(device="cpu", refine=RefineOptions.schedule(128, 40))
    reg = Registrar(sample_ct, opts)
    start = rescue.rotated_about(T, rescue.view_centre(Camera(intr, T), pts), 30.0, 0.0)
    res = reg.register(xray, None, start)
    assert res.rescue is None and res.to_json_fields()["rescue"] == {}
    assert _mtre(intr, res.final.camera_from_world, T, pts) > 10.0 and not res.verdict.accepted
    assert not reg._rescue_applies(res)
    as_rayemb = dataclasses.replace(res, initial_method="rayemb")
    assert reg._rescue_applies(as_rayemb)
    reg.options = opts.replace(refine={"rescue": False})
    assert not reg._rescue_applies(as_rayemb)
    reg.options = opts

    init = GivenPose(start).initial_pose(reg, xray, None, None, None)
    # extra bases (the valley retry's) that repeat the final or the start pose add no starts: 2 bases × 25 rotations
    out = reg._rescue(xray, init, res, [], None, extra_bases=[res.final.camera_from_world.copy(), start.copy()])
    r = out.rescue
    assert r.adopted and r.starts == 50 and r.status_before == res.verdict.status
    assert r.similarity_before == pytest.approx(res.similarity_after) and out.similarity_after == pytest.approx(r.similarity)
    assert out.similarity_after > res.similarity_after
    assert _mtre(intr, out.final.camera_from_world, T, pts) < 3.0
    # Judged again with the rescued pose's own signals; a given start has no detections to agree with it, so the
    # rescued pose is never accepted (this 128² simulation's footprint similarity, ~0.79 even at the true pose, also
    # keeps it from "accepted"): with a clean footprint the rescue rule alone would still say why.
    assert out.verdict.signals["rescued"] is True and out.verdict.status in ("uncertain", "rejected")
    assert out.verdict.signals["footprint_similarity"] > res.verdict.signals["footprint_similarity"]
    clean = judge({**out.verdict.signals, "footprint_similarity": 0.99})
    assert clean.status == "uncertain" and any("rescue search" in reason for reason in clean.reasons)
    assert out.to_json_fields()["rescue"]["adopted"] is True and out.timings_s["rescue"] > 0
    assert out.to_json_fields()["rescue"]["screen_iterations"] == opts.refine.rescue_screen_iterations
    assert any("rescue search" in line and "adopted" in line for line in out.summary_lines())
