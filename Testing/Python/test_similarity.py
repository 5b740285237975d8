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
