"""Template views (``templates.py``): embeddings sampled at projections, the on-disk cache."""

from __future__ import annotations

import numpy as np
import torch

from RayEmbRegistrationLib.model import load_model, save_model
from RayEmbRegistrationLib.templates import get_templates, sample_embeddings

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
