"""The ray-embedding network: subspace-score math, input normalisation, weight files (sha256 manifest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.detection.detect import gram_scores, subspace_basis, subspace_scores
from RayEmbRegistrationLib.detection.model import (
    BACKBONES,
    BUNDLED_MODEL,
    ModelConfig,
    ModelFileError,
    build_model,
    load_model,
    normalize_image,
    save_model,
)

torch.set_num_threads(1)


def _explicit_cos(E: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """cos(e, P e) with the explicit D×D orthogonal projector P onto span(E) (pinv) — the slow reference."""
    out = torch.empty(E.shape[0], e.shape[0], dtype=torch.float64)
    for n in range(E.shape[0]):
        P = E[n] @ torch.linalg.pinv(E[n], rtol=1e-6)
        Pe = e @ P.T
        out[n] = (e * Pe).sum(-1) / (e.norm(dim=-1) * Pe.norm(dim=-1)).clamp_min(1e-300)
    return out


def test_subspace_score_equals_cosine_to_projection():
    g = torch.Generator().manual_seed(0)
    E = torch.randn(6, 16, 4, generator=g, dtype=torch.float64)
    e = torch.randn(50, 16, generator=g, dtype=torch.float64)
    U, mask = subspace_basis(E)
    assert mask.all()
    # U is orthonormal and spans E
    torch.testing.assert_close(U.transpose(1, 2) @ U, torch.eye(4, dtype=torch.float64).expand(6, 4, 4))
    s = subspace_scores(U, e)
    torch.testing.assert_close(s, _explicit_cos(E, e))
    assert (s >= 0).all() and (s <= 1 + 1e-12).all()
    # a vector inside the span scores 1, one orthogonal to it 0
    inside = (E[0] @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64))[None]
    ortho = torch.randn(1, 16, generator=g, dtype=torch.float64)
    ortho = ortho - (ortho @ U[0]) @ U[0].T
    assert subspace_scores(U[:1], inside).item() == pytest.approx(1.0, abs=1e-12)
    assert subspace_scores(U[:1], ortho).item() == pytest.approx(0.0, abs=1e-12)
    # the differentiable training form agrees for full-rank E
    torch.testing.assert_close(gram_scores(E, e, ridge=1e-10), s, atol=1e-6, rtol=1e-6)


def test_rank_handling_duplicates_and_unseen_points():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 8, generator=g, dtype=torch.float64)
    E = torch.zeros(3, 8, 4, dtype=torch.float64)
    E[0] = torch.stack([a, 2 * a, b, a - b], 1)  # rank 2
    E[1, :, 0] = a  # seen in one template only: rank 1
    # E[2] = 0: seen by no template → empty subspace
    U, mask = subspace_basis(E)
    assert mask.sum(1).tolist() == [2, 1, 0]
    e = torch.randn(20, 8, generator=g, dtype=torch.float64)
    s = subspace_scores(U, e)
    torch.testing.assert_close(s[:2], _explicit_cos(E[:2], e))
    assert torch.all(s[2] == 0)
    # the rank-1 case is |cos(e, a)|
    torch.testing.assert_close(s[1], (e @ a).abs() / (e.norm(dim=1) * a.norm()))


def test_scores_invariant_to_scaling():
    g = torch.Generator().manual_seed(2)
    E = torch.randn(4, 32, 4, generator=g, dtype=torch.float64)
    e = torch.randn(30, 32, generator=g, dtype=torch.float64)
    s = subspace_scores(subspace_basis(E)[0], e)
    col_scale = torch.tensor([0.01, 3.0, 7.0, 100.0], dtype=torch.float64)
    s2 = subspace_scores(subspace_basis(E * col_scale)[0], e * torch.linspace(0.1, 50, 30, dtype=torch.float64)[:, None])
    torch.testing.assert_close(s, s2)
    # gram form too
    torch.testing.assert_close(gram_scores(E * col_scale, -3.0 * e, ridge=1e-12), s, atol=1e-6, rtol=1e-6)


def test_gram_scores_have_gradients():
    E = torch.randn(3, 8, 4, dtype=torch.float64, requires_grad=True)
    e = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    gram_scores(E, e).sum().backward()
    assert torch.isfinite(E.grad).all() and torch.isfinite(e.grad).all() and E.grad.abs().sum() > 0


def test_normalize_image_is_one_function_for_all_inputs():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 1.0, (64, 80)).astype(np.float32)
    x = normalize_image(img)
    assert x.shape == (1, 1, 64, 80) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    # invariant to a positive affine change of the line integrals (robust percentiles)
    torch.testing.assert_close(normalize_image(3.0 * img + 7.0), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(normalize_image(torch.from_numpy(img)), x)
    assert normalize_image(img, size=32).shape == (1, 1, 32, 32)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbones_map_image_to_per_pixel_embeddings(name):
    m = build_model(ModelConfig(backbone=name, dim=8, widths=(4, 8, 8)))
    assert m(torch.rand(2, 1, 40, 48)).shape == (2, 8, 40, 48)


def test_weight_file_roundtrip_and_sha256_check(tmp_path):
    m = build_model(ModelConfig(dim=8, widths=(4, 8, 8), image_size=32)).eval()
    path = tmp_path / "w.safetensors"
    digest = save_model(m, path, metadata={"note": "test"})
    loaded = load_model(path)
    assert loaded.sha256 == digest and loaded.config.dim == 8 and loaded.config.image_size == 32
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x))
    # a manifest that does not match → clear error naming the file
    (tmp_path / "w.safetensors.sha256").write_text("0" * 64 + "  w.safetensors\n")
    with pytest.raises(ModelFileError, match="sha256 mismatch"):
        load_model(path)
    # a modified weight file → error as well
    (tmp_path / "w.safetensors.sha256").write_text(f"{digest}  w.safetensors\n")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256 mismatch"):
        load_model(path)
    # a missing manifest is an error too
    (tmp_path / "w.safetensors.sha256").unlink()
    with pytest.raises(ModelFileError, match="manifest missing"):
        load_model(path)
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nope.safetensors")


def test_torch_state_dict_weights_load_with_weights_only(tmp_path):
    import hashlib

    m = build_model(ModelConfig(dim=8, widths=(4, 8, 8)))
    save_model(m, tmp_path / "a.safetensors")
    pt = tmp_path / "a.pt"
    torch.save(m.state_dict(), pt)
    (tmp_path / "a.pt.sha256").write_text(hashlib.sha256(pt.read_bytes()).hexdigest() + "  a.pt\n")
    (tmp_path / "a.json").write_text((tmp_path / "a.json").read_text())
    loaded = load_model(pt)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_bundled_model_loads_and_is_small():
    assert BUNDLED_MODEL.exists(), "the bundled model must ship in Resources/Models"
    assert BUNDLED_MODEL.stat().st_size <= 20 * 1024 * 1024
    m = load_model()  # sha256 checked against the manifest
    assert m.sha256 and m.config.dim == 32
    with torch.no_grad():
        assert m(torch.rand(1, 1, 64, 64)).shape == (1, 32, 64, 64)
