"""Image similarity (``similarity.py``): the NCC family."""

import torch

from RayEmbRegistrationLib.registration.similarity import local_ncc, multiscale_ncc, ncc


def test_similarity_basics():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 40, 40, generator=g)
    assert torch.allclose(ncc(a, 3 * a + 1), torch.ones(2), atol=1e-5)
    assert torch.allclose(ncc(a, -a), -torch.ones(2), atol=1e-5)
    assert torch.allclose(local_ncc(a, 2 * a, 8), torch.ones(2), atol=1e-4)
    assert multiscale_ncc(a, a).shape == (2,)
    flat = torch.zeros(1, 40, 40)
    assert float(local_ncc(flat, a[:1], 8)) == 0.0  # flat tiles count as no correlation


def test_gradient_ncc_is_blind_to_smooth_intensity_changes():
    """``gradient_ncc``: 1 for an image and an affine copy of it, still ~1 with a linear ramp added (scatter, heel
    effect), where the intensity NCC drops; −1-like for an inverted copy; one value per image of a batch."""
    from RayEmbRegistrationLib.registration.similarity import gradient_ncc, image_similarity

    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.avg_pool2d(torch.rand(2, 1, 84, 84, generator=g), 5, 1)[:, 0]  # smooth structure, 80²
    ramp = torch.linspace(0, 3, 80)[None, None, :].expand(2, 80, 80) * float(a.std())
    assert torch.allclose(gradient_ncc(a, 2 * a + 5), torch.ones(2), atol=1e-4)
    assert (gradient_ncc(a, a + ramp) > 0.97).all() and (multiscale_ncc(a, a + ramp) < gradient_ncc(a, a + ramp)).all()
    assert (gradient_ncc(a, -a) < -0.99).all() and gradient_ncc(a[0], a[0]).shape == (1,)
    assert image_similarity("grad") is gradient_ncc and image_similarity("mncc") is multiscale_ncc
    import pytest

    with pytest.raises(ValueError, match="mncc, grad"):
        image_similarity("mi")
