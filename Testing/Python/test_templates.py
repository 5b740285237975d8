"""Template views (``templates.py``): embeddings sampled at projections, the on-disk cache."""

from __future__ import annotations

import numpy as np
import torch

from RayEmbRegistrationLib.detection.model import load_model, save_model
from RayEmbRegistrationLib.detection.templates import get_templates, sample_embeddings

S = 64  # the tiny_model fixture's network size (conftest.py)


def test_sample_embeddings_hits_pixel_centres_and_flags_outside():
    f = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    uv = torch.tensor([[[0.0, 0.0], [4.0, 3.0], [2.0, 1.0], [2.5, 1.0], [5.2, 0.0], [np.nan, 1.0]]] * 2, dtype=torch.float64)
    emb, inside = sample_embeddings(f, uv)
    torch.testing.assert_close(emb[1, 0], f[1, :, 0, 0])
    torch.testing.assert_close(emb[0, 1], f[0, :, 3, 4])
    torch.testing.assert_close(emb[0, 2], f[0, :, 1, 2])
    torch.testing.assert_close(emb[0, 3], 0.5 * (f[0, :, 1, 2] + f[0, :, 1, 3]))  # bilinear between centres
    assert inside[0].tolist() == [True, True, True, True, False, False]
    assert torch.all(emb[0, 4:] == 0)


def test_template_cache_on_disk(tiny_model, sample_ct, tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model, path)
    model = load_model(path)
    t1 = get_templates(model, sample_ct, n_templates=1, cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache").glob("templates_*.npz"))
    assert len(files) == 1
    t2 = get_templates(model, sample_ct, n_templates=1, cache_dir=tmp_path / "cache")  # from disk
    assert len(list((tmp_path / "cache").glob("templates_*.npz"))) == 1  # read, not written again
    assert t2 is not t1
    np.testing.assert_allclose(t2.images, t1.images)
    torch.testing.assert_close(t2.embeddings, t1.embeddings, atol=2e-3, rtol=2e-3)  # stored as float16


def test_template_tiles_cover_a_long_ct_and_only_a_long_one(sample_ct, shared_data):
    """The 4 views about the bone centroid miss the ends of the pelvis–abdomen CT; tiles bring its bone to
    ``TILE_COVERAGE`` (judged as training keeps points: inside every view of one tile). A lumbar crop is one tile."""
    from RayEmbRegistrationLib.geometry.camera import Intrinsics
    from RayEmbRegistrationLib.detection.templates import (MAX_TILES, TILE_COVERAGE, _seen_by_all, ct_isocenter,
                                                 inference_template_angles, template_isocenters)
    from RayEmbRegistrationLib.inputs.volume import load_ct

    angles = inference_template_angles(4)
    iso = template_isocenters(sample_ct, angles)
    np.testing.assert_allclose(iso, template_isocenters(sample_ct, angles))  # deterministic
    np.testing.assert_allclose(iso[0], ct_isocenter(sample_ct))
    assert 2 <= len(iso) <= MAX_TILES
    pts = sample_ct.sample_bone_points(3000, np.random.default_rng(11))  # other points than the rule's
    K = Intrinsics.deepfluoro(64)
    first = _seen_by_all(pts, angles, iso[0], K, 1.0)
    every = np.any([_seen_by_all(pts, angles, c, K, 1.0) for c in iso], axis=0)
    assert first.mean() < 0.8 and every.mean() > first.mean() + 0.15 and every.mean() > TILE_COVERAGE - 0.03
    lumbar = load_ct(shared_data / "ct" / "lumbar_spine_tptbox.nii.gz")
    assert len(template_isocenters(lumbar, angles)) == 1


def test_tiled_templates_give_each_point_one_tiles_views(tiny_model, sample_ct, tmp_path):
    """A network trained on tiles (``ModelConfig.template_tiles``) gets every tile's views; each point takes V = 4
    columns from the first tile that sees it best: the centroid tile's columns, unchanged, for a point it sees, and
    another tile's for a point at the top of the CT that no centroid view sees (zero subspace without tiles)."""
    from RayEmbRegistrationLib.detection.model import ModelConfig, build_model
    from RayEmbRegistrationLib.detection.templates import build_templates, ct_isocenter, inference_template_angles

    angles = inference_template_angles(4)
    tiled = build_model(ModelConfig.from_dict({**tiny_model.config.to_dict(), "template_tiles": True})).eval()
    tiled.load_state_dict(tiny_model.state_dict())
    one = build_templates(tiny_model, sample_ct, angles)
    many = build_templates(tiled, sample_ct, angles)
    assert len(one.poses) == 4 and one.n_tiles == 1
    assert many.n_tiles >= 2 and len(many.poses) == 4 * many.n_tiles and many.tiles.tolist()[:4] == [0, 0, 0, 0]
    np.testing.assert_allclose(many.poses[:4], one.poses)
    iso = ct_isocenter(sample_ct)
    pts = np.stack([iso, iso + [0.0, 0.0, 190.0]])  # the centroid, and a point of the spine 19 cm above it
    e1, em = one.point_embeddings(pts), many.point_embeddings(pts)
    assert e1.shape == em.shape == (2, tiny_model.config.dim, 4)
    assert many.point_tiles(pts).tolist()[0] == 0 and many.point_tiles(pts)[1] > 0
    torch.testing.assert_close(em[0], e1[0])
    assert float(e1[1].abs().max()) == 0.0  # no centroid view sees it …
    assert bool((em[1].norm(dim=0) > 0).all())  # … every view of its tile does
    # the cache keeps the tiles
    from RayEmbRegistrationLib.detection.model import load_model, save_model
    from RayEmbRegistrationLib.detection.templates import get_templates

    save_model(tiled, tmp_path / "t.safetensors")
    m = load_model(tmp_path / "t.safetensors")
    assert m.config.template_tiles
    a = get_templates(m, sample_ct, cache_dir=tmp_path / "c")
    b = get_templates(m, sample_ct, cache_dir=tmp_path / "c")
    assert b.tiles.tolist() == a.tiles.tolist() == many.tiles.tolist()


def test_template_cache_without_tiles_and_a_read_only_cache(tiny_model, sample_ct, tmp_path):
    """A cache file without a ``tiles`` array reads as one tile under the same key;
    a cache folder that cannot be written leaves the templates uncached instead of failing the registration."""
    save_model(tiny_model, tmp_path / "m.safetensors")
    model = load_model(tmp_path / "m.safetensors")
    t1 = get_templates(model, sample_ct, cache_dir=tmp_path / "cache")
    (f,) = (tmp_path / "cache").glob("templates_*.npz")
    z = dict(np.load(f))
    np.savez(f, **{k: v for k, v in z.items() if k != "tiles"})  # a cache without tiles
    t2 = get_templates(model, sample_ct, cache_dir=tmp_path / "cache")
    assert t2.n_tiles == 1 and len(t2.poses) == len(t1.poses) == 4
    blocked = tmp_path / "a_file"  # a cache folder that cannot be made (works for root too, unlike a chmod)
    blocked.write_text("not a folder")
    t3 = get_templates(model, sample_ct, cache_dir=blocked / "cache")
    np.testing.assert_allclose(t3.images, t1.images)
    assert blocked.read_text() == "not a folder"
