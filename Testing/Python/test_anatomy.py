"""Synthetic anatomy (``training/anatomy.py``) and the training-CT table (``training/cts.py``), on real CTs."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from RayEmbRegistrationLib.training.anatomy import AnatomyRanges, random_anatomy
from RayEmbRegistrationLib.training.cts import TRAINING_CTS, patient_of, training_set
from RayEmbRegistrationLib.inputs.volume import BONE_HU, load_ct

#: every random change off, so that one at a time can be switched on
OFF = AnatomyRanges(crop=(1.0, 1.0), p_mirror=0.0, elastic_mm=0.0, scale=(1.0, 1.0), shear=0.0, bone_scale=(1.0, 1.0),
                    p_metal=0.0, p_no_soft=0.0, slice_mm=(1.0, 1.0), hu_scale=0.0, hu_shift=0.0, noise_hu=0.0)


@pytest.fixture(scope="module")
def lumbar(shared_data):
    return load_ct(shared_data / "ct" / "lumbar_spine_tptbox.nii.gz").resampled(3.0)


def test_random_anatomy_is_deterministic_new_and_leaves_the_input_alone(lumbar):
    digest = hashlib.sha256(lumbar.hu.tobytes()).hexdigest()
    a = random_anatomy(lumbar, np.random.default_rng(7))
    b = random_anatomy(lumbar, np.random.default_rng(7))
    c = random_anatomy(lumbar, np.random.default_rng(8))
    assert hashlib.sha256(lumbar.hu.tobytes()).hexdigest() == digest
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.ijk_to_ras, b.ijk_to_ras)
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)
    assert (a.hu >= BONE_HU).sum() > 100  # still a CT with bone in it
    with_all_off = random_anatomy(lumbar, np.random.default_rng(7), OFF)
    assert np.allclose(with_all_off.hu, lumbar.hu) and np.allclose(with_all_off.ijk_to_ras, lumbar.ijk_to_ras)


def test_mirroring_swaps_left_and_right_in_the_patient_frame(lumbar):
    m = random_anatomy(lumbar, np.random.default_rng(0), replace(OFF, p_mirror=1.0))
    bone = lambda ct: ct.ijk_to_ras_points(np.argwhere(ct.hu >= BONE_HU).astype(float))  # noqa: E731
    x0, x1 = bone(lumbar)[:, 0], bone(m)[:, 0]
    lo, hi = lumbar.corners_ras[:, 0].min(), lumbar.corners_ras[:, 0].max()  # voxel centres
    assert np.isclose(np.median(x1), lo + hi - np.median(x0), atol=3.0)  # x ↦ lo + hi − x
    assert np.allclose(np.sort(bone(lumbar)[:, 2]), np.sort(bone(m)[:, 2]))  # superior–inferior untouched


def test_scaling_stays_in_range_and_elastic_deformation_moves_voxels(lumbar):
    for seed in range(5):
        v = random_anatomy(lumbar, np.random.default_rng(seed), replace(OFF, scale=(0.85, 1.15)))
        ratio = np.linalg.norm(v.ijk_to_ras[:3, :3], axis=1) / np.linalg.norm(lumbar.ijk_to_ras[:3, :3], axis=1)
        assert ((ratio >= 0.85 - 1e-9) & (ratio <= 1.15 + 1e-9)).all()
    e = random_anatomy(lumbar, np.random.default_rng(1), replace(OFF, elastic_mm=6.0))
    assert e.hu.shape == lumbar.hu.shape and np.abs(e.hu - lumbar.hu).mean() > 5.0


def test_metal_soft_tissue_free_and_thick_slices(lumbar):
    metal = random_anatomy(lumbar, np.random.default_rng(2), replace(OFF, p_metal=1.0))
    assert (metal.hu >= 2500).sum() > (lumbar.hu >= 2500).sum() + 10
    for seed in range(4):  # both soft-tissue-free kinds: nothing between air and the cut except water (0 HU)
        v = random_anatomy(lumbar, np.random.default_rng(seed), replace(OFF, p_no_soft=1.0))
        soft = (v.hu > -1000) & (v.hu < 150) & (v.hu != 0)
        assert soft.sum() == 0
    thick = random_anatomy(lumbar, np.random.default_rng(3), replace(OFF, slice_mm=(9.0, 9.0)))
    dk = lambda hu: np.abs(np.diff(hu, axis=2)).mean()  # noqa: E731
    assert dk(thick.hu) < 0.6 * dk(lumbar.hu) and np.isclose(thick.hu.mean(), lumbar.hu.mean(), rtol=0.02)


def test_training_set_holds_out_patients_not_files(shared_data):
    everything = training_set()
    assert set(everything) == set(TRAINING_CTS)
    loo = training_set(["pelvis_abdomen_totalseg_3mm"])
    assert "pelvis_abdomen_totalseg_3mm" not in loo and "abdomen_slab_totalseg_3mm" not in loo
    assert len(loo) == len(everything) - 2
    with pytest.raises(ValueError, match="not a training CT"):
        training_set(["pelvis"])
    # why: the slab is slices 82–111 of the pelvis CT, voxel for voxel (same patient)
    pelvis = load_ct(shared_data / "ct" / "pelvis_abdomen_totalseg_3mm.nii.gz")
    slab = load_ct(shared_data / "ct" / "abdomen_slab_totalseg_3mm.nii.gz")
    assert np.array_equal(pelvis.hu[:, :, 82:112], slab.hu)
    assert patient_of("pelvis_abdomen_totalseg_3mm") == patient_of("abdomen_slab_totalseg_3mm")
