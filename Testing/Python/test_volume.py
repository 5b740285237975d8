"""CT I/O against Slicer itself (slicer-core's volume storage node) and against pydicom, on real CTs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from RayEmbRegistrationLib.inputs.volume import BONE_HU, CTVolume, VolumeError, load_ct, save_ct

slicer = pytest.importorskip("slicer")  # slicer-core wheel: real MRML scene + storage nodes
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402

DICOM_DIR = "ct/dicom_series_totalseg"


# --- Slicer helpers ----------------------------------------------------------------------------------------


def _vtk_matrix(A: np.ndarray):
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(A[r, c]))
    return m


def slicer_write(hu_ijk: np.ndarray, ijk_to_ras: np.ndarray, path: Path) -> None:
    """Write a volume the way Slicer does (vtkMRMLVolumeArchetypeStorageNode)."""
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    img = vtk.vtkImageData()
    img.SetDimensions(*hu_ijk.shape)  # (I, J, K); VTK's array is [k, j, i]
    arr = np.ascontiguousarray(np.transpose(hu_ijk, (2, 1, 0))).ravel()
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(arr, deep=True, array_type=numpy_support.get_vtk_array_type(arr.dtype)))
    node.SetAndObserveImageData(img)
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.WriteData(node) == 1, f"Slicer failed to write {path}"


def slicer_read(path: Path, files: list[Path] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a file (or a DICOM file list) the way Slicer does → (hu[i, j, k], IJKToRAS 4×4)."""
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    for f in files or []:
        storage.AddFileName(str(f))
    assert storage.ReadData(node) == 1, f"Slicer failed to read {path}"
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    A = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    img = node.GetImageData()
    dims = img.GetDimensions()
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(dims[::-1])
    return np.transpose(arr, (2, 1, 0)), A


def oblique_ijk_to_ras(flipped: bool = True) -> np.ndarray:
    """Anisotropic spacing, a rotation about an oblique axis and (``flipped``) a left-handed grid."""
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    th = 0.4
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    R = np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K
    A = np.eye(4)
    A[:3, :3] = R @ np.diag([-1.0 if flipped else 1.0, 1.0, 1.0]) @ np.diag([0.7, 1.1, 2.5])
    A[:3, 3] = [12.5, -40.25, 101.0]
    return A


oblique_flipped_ijk_to_ras = oblique_ijk_to_ras


def assert_same_world(a: CTVolume, b: CTVolume, atol: float = 1e-3) -> None:
    """Every voxel centre of ``a`` is a voxel centre of ``b`` with the same value (grids may differ in
    index order, e.g. a reversed k axis)."""
    assert a.shape == b.shape
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in a.shape], indexing="ij"), -1).reshape(-1, 3)
    ijk_b = b.ras_to_ijk_points(a.ijk_to_ras_points(ijk))
    idx = np.round(ijk_b).astype(int)
    np.testing.assert_allclose(ijk_b, idx, atol=atol)
    np.testing.assert_array_equal(b.hu[tuple(idx.T)], a.hu[tuple(ijk.T)])


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- Slicer writes, load_ct reads ------------------------------------------------------------------------


@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz"])
def test_slicer_written_volume_reads_back_identically(tmp_path, ext, flipped):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 2000, size=(7, 5, 4)).astype(np.int16)  # I != J != K to catch transposes
    A = oblique_ijk_to_ras(flipped)
    path = tmp_path / f"vol{ext}"
    slicer_write(hu, A, path)
    vol = load_ct(path)
    hu_s, A_s = slicer_read(path)  # what Slicer shows for the file
    np.testing.assert_allclose(vol.ijk_to_ras, A_s, atol=1e-9)
    np.testing.assert_array_equal(vol.hu, hu_s.astype(np.float32))
    if not flipped:
        np.testing.assert_allclose(vol.ijk_to_ras, A, atol=1e-4)  # NIfTI stores float32 geometry
        np.testing.assert_array_equal(vol.hu, hu.astype(np.float32))
    else:
        # Slicer (and load_ct) make a left-handed grid right-handed by reversing k: every voxel keeps its RAS
        # position and value.
        assert np.linalg.det(vol.ijk_to_ras[:3, :3]) > 0
        np.testing.assert_array_equal(vol.hu, hu[:, :, ::-1].astype(np.float32))
    assert_same_world(CTVolume(hu, A), vol)


def test_nrrd_space_is_converted_lps_to_ras(tmp_path):
    """A hand-written NRRD in 'left-posterior-superior' space: origin (10, 20, 30) LPS is (-10, -20, 30) RAS."""
    import nrrd

    data = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)  # pynrrd Fortran order: data[i, j, k]
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([2.0, 3.0, 4.0]),
        "space origin": np.array([10.0, 20.0, 30.0]),
        "kinds": ["domain", "domain", "domain"],
    }
    path = tmp_path / "lps.nrrd"
    nrrd.write(str(path), data, header)
    vol = load_ct(path)
    np.testing.assert_array_equal(vol.hu, data)
    np.testing.assert_allclose(vol.ijk_to_ras, [[-2, 0, 0, -10], [0, -3, 0, -20], [0, 0, 4, 30], [0, 0, 0, 1]])
    _, A_s = slicer_read(path)
    np.testing.assert_allclose(vol.ijk_to_ras, A_s)


# --- real CTs: Slicer reads, compare to load_ct -----------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["lumbar_spine_tptbox.nii.gz", "head_invesalius.nii.gz", "pelvis_abdomen_totalseg_3mm.nii.gz"]
)
def test_real_ct_matches_slicer(shared_data, name):
    path = shared_data / "ct" / name
    before = _sha(path)
    vol = load_ct(path)
    hu_s, A_s = slicer_read(path)
    np.testing.assert_allclose(vol.ijk_to_ras, A_s, atol=1e-6)
    np.testing.assert_array_equal(vol.hu, hu_s.astype(np.float32))
    assert _sha(path) == before


def test_real_ct_axes(shared_data):
    """README: tptbox is PIR, head_invesalius LPS. Check the first column directions of ijk_to_ras."""
    pir = load_ct(shared_data / "ct" / "lumbar_spine_tptbox.nii.gz").ijk_to_ras[:3, :3]
    dirs = pir / np.linalg.norm(pir, axis=0)
    np.testing.assert_allclose(np.abs(dirs), np.abs(np.round(dirs)), atol=1e-6)
    # P, I, R: i → -A, j → -S, k → +R
    assert dirs[1, 0] < -0.99 and dirs[2, 1] < -0.99 and dirs[0, 2] > 0.99
    lps = load_ct(shared_data / "ct" / "head_invesalius.nii.gz").ijk_to_ras[:3, :3]
    assert lps[0, 0] < 0 and lps[1, 1] < 0 and lps[2, 2] > 0


# --- real DICOM series --------------------------------------------------------------------------------------


def test_dicom_series_matches_slicer_and_pydicom(shared_data):
    import pydicom

    folder = shared_data / DICOM_DIR
    files = sorted(folder.iterdir())
    vol = load_ct(folder)
    assert vol.shape == (512, 512, 20)
    np.testing.assert_allclose(vol.spacing, [0.9765625, 0.9765625, 2.0], atol=1e-4)
    # Slicer's archetype reader on the same file list (what the DICOM module does).
    hu_s, A_s = slicer_read(files[0], files)
    np.testing.assert_allclose(vol.ijk_to_ras, A_s, atol=1e-6)
    np.testing.assert_array_equal(vol.hu, hu_s.astype(np.float32))
    # Independent check with pydicom: slice k at ImagePositionPatient, pixel[row j, col i] * slope + intercept.
    ds = [pydicom.dcmread(str(f)) for f in files]
    ras_origins = vol.ijk_to_ras_points(np.array([[0, 0, k] for k in range(vol.shape[2])]))
    for d in ds[::6]:
        ipp_ras = np.array([-1, -1, 1]) * np.array(d.ImagePositionPatient, dtype=float)
        k = int(np.argmin(np.linalg.norm(ras_origins - ipp_ras, axis=1)))
        np.testing.assert_allclose(ras_origins[k], ipp_ras, atol=1e-3)
        ref = d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        np.testing.assert_array_equal(vol.hu[:, :, k], ref.T.astype(np.float32))
    assert vol.hu.min() >= -1100 and vol.hu.max() > 1000  # HU, not raw uint16
    # One file of the series reads the whole series.
    np.testing.assert_array_equal(load_ct(files[7]).hu, vol.hu)


# --- writing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_save_ct_round_trip_and_slicer_reads_it(tmp_path, ext):
    rng = np.random.default_rng(1)
    vol = CTVolume(rng.normal(0, 300, size=(6, 5, 4)).astype(np.float32), oblique_flipped_ijk_to_ras(), "x")
    path = save_ct(vol, tmp_path / f"out{ext}")
    back = load_ct(path)
    assert_same_world(vol, back)  # left-handed input: back has k reversed, like Slicer
    hu_s, A_s = slicer_read(path)
    np.testing.assert_allclose(back.ijk_to_ras, A_s, atol=1e-6)
    np.testing.assert_array_equal(back.hu, hu_s)
    right = CTVolume(vol.hu, oblique_ijk_to_ras(flipped=False))
    back = load_ct(save_ct(right, tmp_path / f"right{ext}"))
    np.testing.assert_array_equal(back.hu, right.hu)
    np.testing.assert_allclose(back.ijk_to_ras, right.ijk_to_ras, atol=1e-4)


# --- resampling, bone -------------------------------------------------------------------------------------


def _ramp_volume(shape, A):
    """A volume whose HU is a linear function of RAS: f(x) = g·x + c."""
    g, c = np.array([1.5, -2.0, 0.75]), 100.0
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ijk = np.stack([ii, jj, kk], -1).reshape(-1, 3).astype(float)
    ras = ijk @ A[:3, :3].T + A[:3, 3]
    return CTVolume((ras @ g + c).reshape(shape), A), g, c


@pytest.mark.parametrize("spacing", [2.3, 0.9, (3.0, 1.0, 5.0), (1.4, 2.2, 7.5)])
def test_resampled_keeps_extent_and_voxel_centres(spacing):
    A = oblique_ijk_to_ras()  # spacing (0.7, 1.1, 2.5)
    vol, g, c = _ramp_volume((20, 14, 9), A)
    r = vol.resampled(spacing)
    # Same physical box (outer voxel edges), same centre, axes unchanged.
    np.testing.assert_allclose(r.edge_corners_ras, vol.edge_corners_ras, atol=1e-9)
    np.testing.assert_allclose(r.center_ras, vol.center_ras, atol=1e-9)
    np.testing.assert_allclose(r.ijk_to_ras[:3, :3] / r.spacing, A[:3, :3] / vol.spacing, atol=1e-12)
    target = np.broadcast_to(np.asarray(spacing, float), (3,))
    assert np.all(np.abs(r.spacing - target) <= 0.5 * target)
    np.testing.assert_allclose(r.hu.mean(), vol.hu.mean(), rtol=1e-4)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in r.shape], indexing="ij")
    ras = r.ijk_to_ras_points(np.stack([ii, jj, kk], -1).reshape(-1, 3))
    expect = (ras @ g + c).reshape(r.shape)
    factor = r.spacing / vol.spacing
    if np.allclose(factor, np.round(factor)) or np.all(factor < 1):
        # Integer-factor box averages, and linear interpolation, of a linear field equal the field at the new
        # voxel centres: true only if ijk_to_ras points at the centres of the new voxels.
        interior = (slice(1, -1),) * 3 if np.any(factor < 1) else (slice(None),) * 3
        np.testing.assert_allclose(r.hu[interior], expect[interior], atol=2e-3)
    else:
        # Non-integer box averages weigh partial voxels: off by less than one old voxel's gradient step.
        step = np.abs(g @ A[:3, :3]).max()
        assert np.abs(r.hu - expect).max() < step


def test_resampled_conserves_mass_on_real_ct(shared_data):
    vol = load_ct(shared_data / "ct" / "lumbar_spine_tptbox.nii.gz")
    r = vol.resampled(4.0)
    assert r.shape == tuple(int(max(2, round(n * 1.5 / 4.0))) for n in vol.shape)
    np.testing.assert_allclose(r.hu.mean(), vol.hu.mean(), rtol=1e-5)
    assert r.hu.max() <= vol.hu.max() and r.hu.min() >= vol.hu.min()


def test_bone_points_lie_in_bone_voxels(shared_data):
    vol = load_ct(shared_data / "ct" / "lumbar_spine_tptbox.nii.gz")
    mask = vol.bone_mask()
    assert mask.dtype == bool and mask.shape == vol.shape and 0 < mask.sum() < mask.size
    pts = vol.sample_bone_points(2000, rng=0)
    assert pts.shape == (2000, 3)
    ijk = vol.ras_to_ijk_points(pts)
    idx = np.round(ijk).astype(int)
    assert np.all(np.abs(ijk - idx) <= 0.5 + 1e-9)  # jitter stays within the voxel
    assert np.all(vol.hu[tuple(idx.T)] >= BONE_HU)
    assert (ijk - idx).std() > 0.2  # really jittered (uniform on [-0.5, 0.5]: std 0.29)
    np.testing.assert_array_equal(pts, vol.sample_bone_points(2000, rng=0))  # reproducible
    high = vol.sample_bone_points(500, rng=np.random.default_rng(1), threshold=1000.0)
    assert np.all(vol.hu[tuple(np.round(vol.ras_to_ijk_points(high)).astype(int).T)] >= 1000.0)


# --- errors -----------------------------------------------------------------------------------------------


def test_errors(tmp_path, shared_data):
    with pytest.raises(VolumeError, match="not found"):
        load_ct(tmp_path / "nope.nii.gz")
    (tmp_path / "ct.mha.txt").write_text("hello")
    with pytest.raises(VolumeError, match="Unsupported"):
        load_ct(tmp_path / "ct.mha.txt")
    with pytest.raises(VolumeError, match="2D image"):  # a radiograph given as CT
        load_ct(shared_data / "xray" / "chest_pa_cr.dcm")
    import nibabel as nib

    a = np.zeros((5, 5, 5), np.float32)
    a[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(VolumeError, match="NaN"):
        load_ct(tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 1), np.int16), np.eye(4)), str(tmp_path / "slice.nii.gz"))
    with pytest.raises(VolumeError, match="2D image"):
        load_ct(tmp_path / "slice.nii.gz")
    soft = CTVolume(np.full((4, 4, 4), 40.0), np.eye(4), "soft")
    with pytest.raises(VolumeError, match="bone threshold"):
        soft.sample_bone_points(10, rng=0)
    with pytest.raises(VolumeError, match="spacing"):
        soft.resampled(0)
    with pytest.raises(VolumeError, match="unsupported"):
        save_ct(soft, tmp_path / "x.png")


def _series_copy(shared_data, tmp_path, edit):
    """The real DICOM series copied to ``tmp_path`` with ``edit(k, dataset)`` applied to each slice's header
    (``edit`` returning False drops the slice)."""
    import pydicom

    files = sorted((shared_data / DICOM_DIR).glob("*"), key=lambda f: float(pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient[2]))
    out = tmp_path / "series"
    out.mkdir()
    for k, f in enumerate(files):
        ds = pydicom.dcmread(str(f))
        if edit(k, ds) is False:
            continue
        ds.save_as(str(out / f.name))
    return out


def test_dicom_series_with_gantry_tilt_is_refused_with_what_to_do(shared_data, tmp_path):
    def tilt(k, ds):  # each slice shifted along the column direction: a 20° gantry tilt
        dz = float(ds.SliceThickness or 1.0) if "SliceThickness" in ds else 1.0
        ipp = [float(x) for x in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + k * dz * np.tan(np.radians(20.0)), ipp[2]]

    folder = _series_copy(shared_data, tmp_path, tilt)
    with pytest.raises(VolumeError, match=r"tilted by 2\d\.\d°.*acquisition geometry regularization"):
        load_ct(folder)


def test_dicom_series_with_a_missing_slice_is_refused(shared_data, tmp_path):
    folder = _series_copy(shared_data, tmp_path, lambda k, ds: k != 5)
    with pytest.raises(VolumeError, match="not equally spaced"):
        load_ct(folder)
    (tmp_path / "b").mkdir()
    assert load_ct(_series_copy(shared_data, tmp_path / "b", lambda k, ds: None)).hu.shape[2] == 20
