"""Landmark detection: exact recovery where the answer is known, sub-pixel refinement, full-res mapping, cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics
from RayEmbRegistrationLib.detection.detect import LandmarkDetector, refine_peak, score_maps_argmax, subspace_scores
from RayEmbRegistrationLib.progress import Cancelled
from RayEmbRegistrationLib.detection.templates import ct_isocenter, sample_embeddings

torch.set_num_threads(1)

S = 64  # the tiny_model fixture's network size (conftest.py)


def test_quadratic_refinement_recovers_subpixel_peak():
    h, w = 20, 30
    true = np.array([[12.3, 7.8], [3.55, 15.1], [20.0, 10.0]])
    vv, uu = np.mgrid[0:h, 0:w]
    maps = np.stack([1.0 - 0.01 * ((uu - u) ** 2 + (vv - v) ** 2) for u, v in true])  # exact paraboloids
    sc = torch.from_numpy(maps.reshape(3, -1))
    uv = refine_peak(sc, sc.argmax(-1), w, h).numpy()
    np.testing.assert_allclose(uv, true, atol=1e-9)
    uv2, conf = score_maps_argmax(sc, w, h)
    np.testing.assert_allclose(uv2.numpy(), true, atol=1e-9)
    assert ((conf > 0) & (conf <= 1 + 1e-9)).all()


def test_coarse_to_fine_matches_full_scoring_on_a_smooth_field():
    from RayEmbRegistrationLib.detection.detect import coarse_to_fine_peaks, subspace_basis

    g = torch.Generator().manual_seed(0)
    D, h, w = 8, 40, 48
    vv, uu = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    freqs = torch.rand(D, 2, generator=g, dtype=torch.float64) * 0.25
    phase = torch.rand(D, generator=g, dtype=torch.float64) * 6.28
    emb = torch.cos(freqs[:, :1, None] * uu + freqs[:, 1:, None] * vv + phase[:, None, None])  # smooth field
    targets = torch.tensor([[10.3, 7.6], [30.0, 22.2], [44.5, 35.1], [2.2, 3.0]], dtype=torch.float64)
    E, _ = sample_embeddings(emb[None], targets[None])  # the field's value at the targets
    U, _ = subspace_basis(E[0][:, :, None])  # rank-1 subspaces
    sc = subspace_scores(U, emb.reshape(D, -1).T)
    full, _ = score_maps_argmax(sc, w, h)
    fast, conf = coarse_to_fine_peaks(emb, U)
    np.testing.assert_allclose(fast.numpy(), full.numpy(), atol=1e-9)
    from RayEmbRegistrationLib.detection.detect import peak_contrast

    _, _, c_fast = coarse_to_fine_peaks(emb, U, contrast=True)  # from the pooled map: close to the full map's
    np.testing.assert_allclose(c_fast.numpy(), peak_contrast(sc, sc.max(-1).values).numpy(), atol=0.1)
    assert (np.abs(full.numpy() - targets.numpy()) < 0.6).all()
    assert ((conf > 0) & (conf <= 1 + 1e-9)).all()


def test_peak_contrast_ranks_a_lone_peak_above_a_high_plateau():
    """The order of detections for PnP: (peak − q90) / (1 − q90). A lone peak over a low map beats a higher peak
    that barely rises above a map high almost everywhere (a subspace that captures most of the X-ray), and the 90th
    percentile estimated on 512 spread pixels is the map's own within a small margin."""
    from RayEmbRegistrationLib.detection.detect import CONTRAST_QUANTILE, peak_contrast

    P = 96 * 96
    g = torch.Generator().manual_seed(0)
    lone = 0.3 + 0.1 * torch.rand(P, generator=g, dtype=torch.float64)
    lone[4000] = 0.9
    plateau = 0.9 + 0.08 * torch.rand(P, generator=g, dtype=torch.float64)
    plateau[100] = 0.982
    sc = torch.stack([lone, plateau])
    c = peak_contrast(sc, sc.max(-1).values)
    assert c.dtype == torch.float64 and ((c >= 0) & (c <= 1)).all()
    assert c[0] > 0.75 and c[1] < 0.5  # though the plateau's peak score is the higher
    q = torch.quantile(sc, CONTRAST_QUANTILE, dim=1)
    np.testing.assert_allclose(c.numpy(), ((sc.max(-1).values - q) / (1 - q)).numpy(), atol=0.05)


def _points_on_template_pixels(templates, ct, pixels):
    """3D points inside the CT whose projection in template 0 is exactly the given integer pixels."""
    cam = Camera(templates.intrinsics, templates.poses[0])
    d = cam.ray_directions_ras(pixels)
    iso = ct_isocenter(ct)
    depth = (iso - cam.source_ras) @ cam.principal_axis_ras
    t = depth / (d @ cam.principal_axis_ras)
    return cam.source_ras + d * (t[:, None] + np.array([-20.0, 0.0, 15.0, 30.0, -5.0])[: len(d), None])


def test_detector_is_exact_when_the_query_is_a_template_view(tiny_model, sample_ct):
    """Query = template view 0 (real CT, real renderer): its embedding map equals template 0's, so a point whose
    projection lies on a pixel centre has score exactly 1 there; the detection must land on that pixel, also
    when the X-ray comes at twice the network resolution (full-res mapping via Intrinsics.scale_pixels)."""
    det = LandmarkDetector(tiny_model, sample_ct, n_templates=4)
    tpl = det.templates
    assert tpl.images.shape == (4, S, S) and tpl.embeddings.shape == (4, 16, S, S)
    pixels = np.array([[20.0, 30.0], [33.0, 41.0], [45.0, 22.0], [28.0, 12.0], [40.0, 50.0]])
    pts = _points_on_template_pixels(tpl, sample_ct, pixels)
    np.testing.assert_allclose(Camera(tpl.intrinsics, tpl.poses[0]).project(pts), pixels, atol=1e-6)
    # net-size query
    d = det.detect(tpl.images[0], tpl.intrinsics, pts, heatmaps=True)
    hm = d.heatmaps.reshape(len(pts), -1)
    np.testing.assert_array_equal(np.stack([hm.argmax(1) % S, hm.argmax(1) // S], 1), pixels)
    np.testing.assert_allclose(hm.max(1), 1.0, atol=1e-4)
    assert np.abs(d.uv_net - pixels).max() <= 0.5
    from RayEmbRegistrationLib.detection.detect import peak_contrast

    np.testing.assert_allclose(d.contrast, peak_contrast(torch.from_numpy(hm), torch.from_numpy(hm.max(1))).numpy(),
                               atol=1e-5)  # the contrast of each point's own map
    np.testing.assert_allclose(d.uv, d.uv_net)  # same grid
    # full-res X-ray: 2× nearest-upsampled image of the same detector
    big = np.kron(tpl.images[0], np.ones((2, 2), np.float32))
    K_big = Intrinsics.deepfluoro(2 * S)
    d2 = det.detect(big, K_big, pts, fast=True)  # fast path (coarse-to-fine, no heatmaps); float32 GEMM order differs
    np.testing.assert_allclose(d2.uv_net, d.uv_net, atol=2e-3)
    np.testing.assert_allclose(d2.uv, (d2.uv_net + 0.5) * 2 - 0.5, atol=1e-9)
    assert d2.heatmaps is None and d2.confidence.shape == (len(pts),)
    d3 = det.detect(big, K_big, pts)  # default: every pixel scored, no heatmaps kept
    np.testing.assert_allclose(d3.uv, (d.uv_net + 0.5) * 2 - 0.5, atol=1e-5)
    np.testing.assert_allclose(d3.uv, d2.uv, atol=4e-3)


def test_unseen_points_progress_cancel_and_errors(tiny_model, sample_ct):
    det = LandmarkDetector(tiny_model, sample_ct, n_templates=4)
    far = np.array([[5000.0, 5000.0, 5000.0], *ct_isocenter(sample_ct)[None]])
    calls = []
    d = det.detect(det.templates.images[1], det.templates.intrinsics, far, progress=lambda f, m: calls.append(f))
    assert d.confidence[0] == 0.0 and calls and calls[-1] == 1.0
    with pytest.raises(Cancelled):
        det.detect(det.templates.images[1], det.templates.intrinsics, far, cancel=lambda: True)
    with pytest.raises(ValueError, match="intrinsics"):
        det.detect(det.templates.images[1], Intrinsics.deepfluoro(2 * S), far)
