"""Both DRR backends against the camera model: point phantoms, agreement on real CTs, gradients."""

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics
from RayEmbRegistrationLib.geometry.carm import CLINICAL_SAMPLER, MILD_SAMPLER, carm_camera_from_world
from RayEmbRegistrationLib.rendering.render import BACKENDS, DRRRenderer, hu_to_attenuation
from RayEmbRegistrationLib.inputs.volume import CTVolume, load_ct

torch.set_num_threads(1)

# An anisotropic grid whose axes are permuted and flipped relative to RAS (det < 0 in ijk→RAS).
PHANTOM_AFFINE = np.array([[0, -1.3, 0, 20.0], [0, 0, 2.1, -15.0], [-0.9, 0, 0, 30.0], [0, 0, 0, 1]])
INTR = Intrinsics(1000.0, (0.8, 1.1), 96, 72, (41.3, 30.7))


def one_voxel_phantom(voxel=(23, 11, 14), shape=(40, 30, 24)):
    hu = np.full(shape, -1000.0, np.float32)
    hu[voxel] = 3000.0
    ct = CTVolume(hu, PHANTOM_AFFINE, "phantom")
    return ct, ct.ijk_to_ras_points(np.array([voxel]))[0]


def spot_centroid(img):
    w = np.clip(img - np.median(img), 0, None)
    v, u = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])


def ncc(a, b):
    a = (a - a.mean()) / a.std()
    b = (b - b.mean()) / b.std()
    return float((a * b).mean())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pose", ["carm", "sampled"])
def test_one_voxel_phantom_lands_where_P_projects_it(backend, pose):
    ct, X = one_voxel_phantom()
    if pose == "carm":
        T = carm_camera_from_world(20, -10, 600, ct.center_ras)
    else:
        T = MILD_SAMPLER.sample(1, X, rng=5)[0]
    cam = Camera(INTR, T)
    expected = cam.project(X[None])[0]
    assert 5 < expected[0] < 90 and 5 < expected[1] < 66
    img = DRRRenderer(ct, INTR, backend=backend, n_samples=600).render_numpy(T)
    assert img.shape == (INTR.height, INTR.width)
    err = np.linalg.norm(spot_centroid(img) - expected)
    assert err <= 0.3, f"{backend}: spot at {spot_centroid(img)}, P says {expected} ({err:.3f} px)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_phantom_sees_flip_of_principal_point(backend):
    """Moving the principal point by +Δ pixels moves the projected spot by +Δ (no hidden flips)."""
    ct, X = one_voxel_phantom()
    T = carm_camera_from_world(0, 0, 600, ct.center_ras)
    shifted = Intrinsics(1000.0, (0.8, 1.1), 96, 72, (41.3 + 7, 30.7 - 5))
    a = spot_centroid(DRRRenderer(ct, INTR, backend=backend, n_samples=600).render_numpy(T))
    b = spot_centroid(DRRRenderer(ct, shifted, backend=backend, n_samples=600).render_numpy(T))
    np.testing.assert_allclose(b - a, [7, -5], atol=0.3)


@pytest.mark.parametrize("name", ["sample", "lumbar_spine_tptbox.nii.gz", "head_invesalius.nii.gz"])
def test_backends_render_real_ct_alike(name, sample_ct, shared_data):
    ct = sample_ct if name == "sample" else load_ct(shared_data / "ct" / name)
    if name == "head_invesalius.nii.gz":
        ct = CTVolume(ct.hu[::3, ::3, ::2], ct.ijk_to_ras @ np.diag([3, 3, 2, 1]), ct.name)  # keep the test fast
    intr = Intrinsics.deepfluoro(96)
    T = carm_camera_from_world(15, 10, 700, ct.center_ras)
    a = DRRRenderer(ct, intr, backend="nanodrr").render_numpy(T)
    for other in ("diffdrr", "joseph"):
        b = DRRRenderer(ct, intr, backend=other).render_numpy(T)
        assert ncc(a, b) >= 0.98, other
        # same physical units too (line integrals of μ), within 5 %
        assert np.median(b) == pytest.approx(np.median(a), rel=0.05), other


def test_joseph_matches_nanodrr_at_close_up_poses(sample_ct):
    """Joseph's method at the clinic's close-ups, where the CT reaches past the source's side of the detector's
    cone (the clipped path of ``joseph.py``) and the slice axis differs between poses of one batch."""
    intr = Intrinsics.deepfluoro(64)
    c = np.asarray(sample_ct.center_ras)
    T = np.concatenate([CLINICAL_SAMPLER.sample(5, c + [40.0, -30.0, 60.0], rng=3),
                        carm_camera_from_world(90, 0, 500, c)[None],  # lateral: another slice axis
                        carm_camera_from_world(0, 0, 120, c)[None]])  # the CT reaches behind the source
    corners = np.c_[sample_ct.corners_ras, np.ones(8)]
    assert ((corners @ T[-1].T)[:, 2] <= 0).any()  # the last pose does exercise the clipped path
    a = DRRRenderer(sample_ct, intr, backend="nanodrr").render_numpy(T)
    b = DRRRenderer(sample_ct, intr, backend="joseph").render_numpy(T)
    for i in range(len(T)):
        assert np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] >= 0.999, i
        assert b[i].mean() == pytest.approx(a[i].mean(), rel=0.02), i


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_wrt_pose_matches_finite_difference(backend, sample_ct):
    intr = Intrinsics.deepfluoro(48)
    r = DRRRenderer(sample_ct, intr, backend=backend, dtype=torch.float64)
    T0 = torch.tensor(carm_camera_from_world(5, 5, 700, sample_ct.center_ras))
    target = r(T0).detach()
    shift = torch.zeros(4, 4, dtype=torch.float64)
    shift[0, 3] = 1.0  # move along camera x

    def loss(s):
        return ((r(T0 + s * shift) - target.roll(2, dims=-1)) ** 2).mean()

    s = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    loss(s).backward()
    h = 0.25
    fd = (loss(torch.tensor(h)) - loss(torch.tensor(-h))).item() / (2 * h)
    assert torch.isfinite(s.grad) and abs(s.grad.item()) > 0
    assert s.grad.item() == pytest.approx(fd, rel=0.25)


def test_bone_multiplier_raises_bone_contrast(sample_ct):
    intr = Intrinsics.deepfluoro(64)
    T = carm_camera_from_world(0, 0, 700, sample_ct.center_ras)
    r = DRRRenderer(sample_ct, intr)
    a = r.render_numpy(T)
    r.set_bone_multiplier(5.0)
    b = r.render_numpy(T)
    assert (b - a).min() >= -1e-5 and (b - a).max() > 0.1
    hu = np.array([-1000.0, 0.0, 350.0, 1350.0])
    mu = hu_to_attenuation(hu, 2.0)
    assert mu[0] == 0 and mu[1] == pytest.approx(0.0192) and mu[3] > mu[2] > mu[1]


def test_coarse_detector_matches_binned_fine_render(sample_ct):
    fine = Intrinsics.deepfluoro(128)
    coarse = fine.resized(32)
    T = carm_camera_from_world(-10, 5, 700, sample_ct.center_ras)
    r = DRRRenderer(sample_ct, fine)
    a = r.render_numpy(T).reshape(32, 4, 32, 4).mean(axis=(1, 3))
    r.set_intrinsics(coarse)
    b = r.render_numpy(T)
    assert ncc(a, b) > 0.99


def test_batch_rendering_equals_single(sample_ct):
    intr = Intrinsics.deepfluoro(32)
    poses = MILD_SAMPLER.sample(3, sample_ct.center_ras, rng=2)
    r = DRRRenderer(sample_ct, intr)
    batch = r.render_numpy(poses)
    for k in range(3):
        np.testing.assert_allclose(batch[k], r.render_numpy(poses[k]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.forward(poses, max_batch=2).detach().numpy(), batch, rtol=1e-5, atol=1e-5)


def test_renderer_rejects_unknown_backend(sample_ct):
    with pytest.raises(ValueError, match="backend"):
        DRRRenderer(sample_ct, INTR, backend="raytracer")
