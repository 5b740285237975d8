"""Shared test fixtures: the real data in ../shared/data (developers, CI) and the bundled sample CT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CT = REPO / "Resources" / "SampleData" / "pelvis_abdomen_totalseg_3mm.nii.gz"


def shared_data_dir() -> Path | None:
    env = os.environ.get("RAYEMB_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real CTs and radiographs). Required in CI; skipped elsewhere if absent."""
    d = shared_data_dir()
    if d is None:
        if os.environ.get("CI"):
            pytest.fail("../shared/data is missing: CI must run with the shared real data beside the clone.")
        pytest.skip("real data folder ../shared/data not found (set RAYEMB_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def sample_ct_path() -> Path:
    assert SAMPLE_CT.exists(), f"bundled sample CT missing: {SAMPLE_CT}"
    return SAMPLE_CT


@pytest.fixture(scope="session")
def sample_ct(sample_ct_path):
    from RayEmbRegistrationLib.inputs.volume import load_ct

    return load_ct(sample_ct_path)


@pytest.fixture(scope="module")
def tiny_model():
    """A randomly initialised, tiny ray-embedding network (64² input) for the detector and template tests."""
    import torch

    from RayEmbRegistrationLib.detection.model import ModelConfig, build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(dim=16, widths=(8, 16, 16), image_size=64, voxel_mm=6.0)).eval()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny network's weight file (64² input; safetensors + config + sha256) for the preparation tests."""
    import torch

    from RayEmbRegistrationLib.detection.model import ModelConfig, build_model, save_model

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_model(build_model(ModelConfig(dim=8, widths=(8, 16, 16), image_size=64, voxel_mm=6.0)), p)
    return p
