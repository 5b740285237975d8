"""X-ray I/O: real radiographs (DICOM CR, PNG), DICOM tags written with pydicom, sidecars, save/load round trips."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from RayEmbRegistrationLib.camera import GeometryError, Intrinsics
from RayEmbRegistrationLib.xray import XRayError, XRayImage, load_xray, save_xray, sidecar_candidates
from RayEmbRegistrationLib.carm import CarmAngles

GEOM = {"source_to_detector_mm": 1020.0, "pixel_spacing_mm": [0.3, 0.25]}


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def write_dicom(path: Path, stored: np.ndarray, modality: str = "XA", photometric: str = "MONOCHROME2", **tags) -> Path:
    """A real DICOM file (pydicom writer), uint16 pixels; ``stored`` is (H, W) or (F, H, W)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop = {"XA": "1.2.840.10008.5.1.4.1.1.12.1", "RF": "1.2.840.10008.5.1.4.1.1.12.2", "CR": "1.2.840.10008.5.1.4.1.1.1"}[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientName = "Test^Phantom"
    a = np.asarray(stored, dtype=np.uint16)
    if a.ndim == 3:
        ds.NumberOfFrames = a.shape[0]
    ds.Rows, ds.Columns = a.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = a.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def line_integral_phantom(H: int = 40, W: int = 60) -> np.ndarray:
    """A smooth 'bone' blob on soft tissue, line integrals in [0.2, ~2.7]."""
    v, u = np.mgrid[0:H, 0:W]
    return 0.2 + 2.5 * np.exp(-(((u - 0.6 * W) / 8.0) ** 2 + ((v - 0.4 * H) / 6.0) ** 2))


# --- real DICOM radiographs -------------------------------------------------------------------------------


def test_real_cr_chest_geometry_error_then_loads(shared_data):
    import pydicom

    path = shared_data / "xray" / "chest_pa_cr.dcm"
    before = _sha(path)
    with pytest.raises(GeometryError, match=r"PixelSpacing.*--geometry"):
        load_xray(path)  # its PixelSpacing is 0\0
    x = load_xray(path, geometry={"pixel_spacing_mm": [0.15, 0.15]})  # SDD comes from the DICOM tag (1996 mm)
    raw = pydicom.dcmread(str(path)).pixel_array
    assert x.pixels.shape == raw.shape == (1955, 1841) and x.pixels.dtype == np.float32
    assert x.intrinsics.source_to_detector_mm == 1996.0
    assert x.intrinsics.size == (1841, 1955) and x.intrinsics.principal_point_px == (920.0, 977.0)
    # MONOCHROME1: inverted, no flips (pixels[v, u] as stored).
    np.testing.assert_array_equal(x.pixels, (raw.max() - raw.astype(np.float64)).astype(np.float32))
    # Line-integral form: the mediastinum/spine attenuates more than the lung fields.
    H, W = x.shape
    mid = x.pixels[H // 3 : 2 * H // 3, W // 2 - 60 : W // 2 + 60].mean()
    lungs = [x.pixels[H // 3 : 2 * H // 3, c - 60 : c + 60].mean() for c in (W // 4, 3 * W // 4)]
    assert mid > max(lungs)
    assert x.metadata["modality"] == "CR" and "MONOCHROME1" in x.metadata["intensity"]
    assert _sha(path) == before


def test_real_cr_tibia_needs_sdd(shared_data, tmp_path):
    src = shared_data / "xray" / "tibia_cr.dcm"
    with pytest.raises(GeometryError, match=r"DistanceSourceToDetector \(0018,1110\).*--geometry"):
        load_xray(src)
    x = load_xray(src, geometry={"source_to_detector_mm": 1100, "pixel_spacing_mm": 0.2})
    assert x.intrinsics.size == (1760, 1760) and x.intrinsics.pixel_spacing_mm == (0.2, 0.2)
    # The same geometry as a sidecar next to a copy, and as a JSON path.
    copy = tmp_path / "tibia.dcm"
    shutil.copy(src, copy)
    (tmp_path / "tibia.dcm.json").write_text(json.dumps({"source_to_detector_mm": 1100, "pixel_spacing_mm": [0.2, 0.2]}))
    y = load_xray(copy)
    assert y.intrinsics == x.intrinsics and "sidecar" in y.metadata["geometry_source"]
    np.testing.assert_array_equal(y.pixels, x.pixels)
    z = load_xray(src, geometry=tmp_path / "tibia.dcm.json")
    assert z.intrinsics == x.intrinsics


def test_real_png_chest(shared_data):
    path = shared_data / "xray" / "chest_nih_00000001_000.png"
    K = Intrinsics(1800.0, (0.7, 0.7), 512, 512)
    x = load_xray(path, geometry=K)
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    raw = raw if raw.ndim == 2 else raw[..., 0]
    np.testing.assert_array_equal(x.pixels, raw.astype(np.float32))  # as stored: a display radiograph, bone bright
    assert x.intrinsics is K and x.carm is None
    with pytest.raises(GeometryError, match="512"):
        load_xray(path, geometry=Intrinsics(1800.0, 0.7, 256, 256))


# --- DICOM tags (pydicom-written files) ---------------------------------------------------------------------


def test_dicom_xa_raw_intensity_is_log_transformed(tmp_path):
    L = line_integral_phantom()
    I = np.round(60000 * np.exp(-L))  # raw detector intensity: bone dark
    path = write_dicom(
        tmp_path / "xa.dcm", I, "XA",
        DistanceSourceToDetector="1200", ImagerPixelSpacing=["0.3", "0.2"],  # row (Δv) \ column (Δu)
        PositionerPrimaryAngle="30.5", PositionerSecondaryAngle="-12", DistanceSourceToPatient="785",
        PixelIntensityRelationship="LIN", PixelIntensityRelationshipSign=1,
    )
    x = load_xray(path)
    # log(I0) - log(I) with I0 = max(I) ↔ min(L): the line integral up to the constant min(L).
    np.testing.assert_allclose(x.pixels, L - L.min(), atol=2e-3)
    assert x.intrinsics.pixel_spacing_mm == (0.2, 0.3)
    assert x.intrinsics.source_to_detector_mm == 1200.0
    assert x.intrinsics.principal_point_px == ((60 - 1) / 2, (40 - 1) / 2)
    assert x.carm == CarmAngles(30.5, -12.0, 785.0)
    # Without PixelIntensityRelationship, XA is still treated as raw fluoroscopy; log_transform=False overrides.
    path2 = write_dicom(tmp_path / "xa2.dcm", I, "XA", DistanceSourceToDetector="1200", ImagerPixelSpacing=["0.3", "0.2"])
    np.testing.assert_allclose(load_xray(path2).pixels, L - L.min(), atol=2e-3)
    inv = load_xray(path2, log_transform=False).pixels
    np.testing.assert_array_equal(inv, (I.max() - I).astype(np.float32))  # fluoroscopy display: inverted only


def test_dicom_polarity_rules(tmp_path):
    L = line_integral_phantom()
    q = np.round(L * 1000).astype(np.uint16)  # an attenuation-like (log) image: bone bright
    g = dict(DistanceSourceToDetector="1000", ImagerPixelSpacing=["0.2", "0.2"])
    # CR MONOCHROME2: as stored (minus min).
    x = load_xray(write_dicom(tmp_path / "a.dcm", q, "CR", **g))
    np.testing.assert_array_equal(x.pixels, q - q.min())
    # CR MONOCHROME1 stores the same picture inverted → we invert it back.
    x = load_xray(write_dicom(tmp_path / "b.dcm", 4000 - q, "CR", "MONOCHROME1", **g))
    np.testing.assert_array_equal(x.pixels, q - q.min())
    # LOG with sign +1 (lower value = less intensity = more attenuation) → inverted.
    x = load_xray(write_dicom(tmp_path / "c.dcm", 4000 - q, "RF", PixelIntensityRelationship="LOG",
                              PixelIntensityRelationshipSign=1, **g))
    np.testing.assert_array_equal(x.pixels, q - q.min())
    # LOG with sign -1 (higher value = less intensity) → as stored.
    x = load_xray(write_dicom(tmp_path / "d.dcm", q, "RF", PixelIntensityRelationship="LOG",
                              PixelIntensityRelationshipSign=-1, **g))
    np.testing.assert_array_equal(x.pixels, q - q.min())


def test_dicom_principal_point_from_isocenter_projection(tmp_path):
    """Detector elements 0.2 mm, image binned 2× (0.4 mm), field of view starts at element (row 100, col 50),
    isocenter projects onto element centre (v 299.5, u 249.5) → edges at 300, 250 → 200 elements = 40 mm =
    100 image pixels from the image edge → pixel-centre coordinate 99.5 on both axes."""
    path = write_dicom(
        tmp_path / "x.dcm", np.arange(300 * 250, dtype=np.uint16).reshape(300, 250), "XA",
        DistanceSourceToDetector="1000", ImagerPixelSpacing=["0.4", "0.4"], DetectorElementSpacing=["0.2", "0.2"],
        FieldOfViewOrigin=["100", "50"], PositionOfIsocenterProjection=[299.5, 249.5],
    )
    x = load_xray(path)
    assert x.intrinsics.principal_point_px == pytest.approx((99.5, 99.5))
    # An explicit principal point wins over the tags.
    y = load_xray(path, geometry={"principal_point_px": [10, 20]})
    assert y.intrinsics.principal_point_px == (10.0, 20.0) and y.intrinsics.source_to_detector_mm == 1000.0


def test_dicom_multiframe_needs_frame(tmp_path):
    frames = np.stack([np.full((8, 9), 100 + k, np.uint16) for k in range(3)])
    frames[:, 0, 0] = 5000
    path = write_dicom(tmp_path / "cine.dcm", frames, "XA", DistanceSourceToDetector="1000", ImagerPixelSpacing=["0.2", "0.2"])
    with pytest.raises(XRayError, match="frame="):
        load_xray(path)
    x = load_xray(path, frame=2, log_transform=True)
    assert x.shape == (8, 9)
    np.testing.assert_allclose(x.pixels[1, 1], np.log(5000) - np.log(102), rtol=1e-6)


# --- plain images + sidecars -------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".npy", ".tif", ".nrrd", ".png"])
def test_save_load_round_trip(tmp_path, ext):
    L = line_integral_phantom().astype(np.float32)
    K = Intrinsics(1020.0, (0.3, 0.25), 60, 40, (31.25, 18.5))
    img, side = save_xray(L, K, tmp_path / f"drr{ext}", carm=CarmAngles(10.0, -5.0, 700.0))
    assert side == tmp_path / f"drr{ext}.json" and side.is_file() and img.is_file()
    x = load_xray(img)
    assert x.intrinsics == K and x.carm == CarmAngles(10.0, -5.0, 700.0)
    tol = 0 if ext != ".png" else (L.max() - L.min()) / 65535
    np.testing.assert_allclose(x.pixels, L, atol=tol * 0.51 + 1e-6)
    assert x.name == "drr" and x.metadata["format"].startswith(ext[1:])


def test_sidecar_names_and_precedence(tmp_path):
    import cv2

    a = (line_integral_phantom() * 90).astype(np.uint8)
    path = tmp_path / "xray.png"
    cv2.imwrite(str(path), a)
    assert sidecar_candidates(path) == [tmp_path / "xray.png.json", tmp_path / "xray.json"]
    with pytest.raises(GeometryError, match=r"xray\.png\.json"):
        load_xray(path)
    (tmp_path / "xray.json").write_text(json.dumps({"source_to_detector_mm": 900, "pixel_spacing_mm": [0.5, 0.5]}))
    x = load_xray(path)
    assert x.intrinsics.source_to_detector_mm == 900 and x.pixels.dtype == np.float32
    np.testing.assert_array_equal(x.pixels, a)
    (tmp_path / "xray.png.json").write_text(json.dumps({"source_to_detector_mm": 1100, "pixel_spacing_mm": [0.5, 0.5]}))
    assert load_xray(path).intrinsics.source_to_detector_mm == 1100  # <name>.json wins over <stem>.json
    assert load_xray(path, geometry=GEOM).intrinsics.source_to_detector_mm == 1020  # explicit wins over both


def test_16bit_png_raw_intensity_log(tmp_path):
    import cv2

    L = line_integral_phantom()
    I = np.round(50000 * np.exp(-L)).astype(np.uint16)
    path = tmp_path / "fluoro.png"
    cv2.imwrite(str(path), I)
    x = load_xray(path, geometry=GEOM, log_transform=True)
    np.testing.assert_allclose(x.pixels, L - L.min(), atol=2e-3)
    # The sidecar can say so too.
    (tmp_path / "fluoro.json").write_text(json.dumps({**GEOM, "log_transform": True}))
    np.testing.assert_allclose(load_xray(path).pixels, x.pixels)


def test_nifti_one_slice_and_nrrd_2d(tmp_path):
    import nibabel as nib
    import nrrd

    L = line_integral_phantom().astype(np.float32)  # (H, W) = (40, 60)
    # NIfTI stores data[i, j, k] with i = column: a W×H×1 volume.
    nib.save(nib.Nifti1Image(np.ascontiguousarray(L.T)[:, :, None], np.eye(4)), str(tmp_path / "x.nii.gz"))
    x = load_xray(tmp_path / "x.nii.gz", geometry=GEOM)
    np.testing.assert_array_equal(x.pixels, L)
    assert x.intrinsics.size == (60, 40)
    nrrd.write(str(tmp_path / "y.nrrd"), L, index_order="C")
    np.testing.assert_array_equal(load_xray(tmp_path / "y.nrrd", geometry=GEOM).pixels, L)
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 3), np.float32), np.eye(4)), str(tmp_path / "vol.nii.gz"))
    with pytest.raises(XRayError, match="exactly one slice"):
        load_xray(tmp_path / "vol.nii.gz", geometry=GEOM)


def test_gray_rgb_png_accepted_colour_rejected(tmp_path):
    import cv2

    g = (line_integral_phantom() * 90).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), np.dstack([g, g, g]))
    x = load_xray(tmp_path / "g.png", geometry=GEOM)
    np.testing.assert_array_equal(x.pixels, g)
    assert any("identical colour channels" in n for n in x.metadata["notes"])
    c = np.dstack([g, g // 2, g])
    cv2.imwrite(str(tmp_path / "c.png"), c)
    with pytest.raises(XRayError, match="colour image"):
        load_xray(tmp_path / "c.png", geometry=GEOM)


def test_errors(tmp_path):
    with pytest.raises(XRayError, match="not found"):
        load_xray(tmp_path / "none.png")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(XRayError, match="Unsupported"):
        load_xray(tmp_path / "x.gif", geometry=GEOM)
    np.save(tmp_path / "const.npy", np.full((10, 12), 3.0))
    with pytest.raises(XRayError, match="constant"):
        load_xray(tmp_path / "const.npy", geometry=GEOM)
    a = line_integral_phantom()
    a[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", a)
    with pytest.raises(XRayError, match="NaN"):
        load_xray(tmp_path / "nan.npy", geometry=GEOM)
    np.save(tmp_path / "empty.npy", np.zeros((0, 5)))
    with pytest.raises(XRayError, match="empty"):
        load_xray(tmp_path / "empty.npy", geometry=GEOM)
    np.save(tmp_path / "stack.npy", np.zeros((4, 10, 12)))
    with pytest.raises(XRayError, match="2D"):
        load_xray(tmp_path / "stack.npy", geometry=GEOM)
    np.save(tmp_path / "ok.npy", line_integral_phantom())  # 60 × 40
    with pytest.raises(GeometryError, match="width 64"):  # contradictory sidecar
        load_xray(tmp_path / "ok.npy", geometry={**GEOM, "width": 64, "height": 40})
    with pytest.raises(GeometryError, match="source_to_detector_mm"):
        load_xray(tmp_path / "ok.npy", geometry={"pixel_spacing_mm": [0.2, 0.2]})
    with pytest.raises(GeometryError, match="pixel_spacing_mm"):
        load_xray(tmp_path / "ok.npy", geometry={"source_to_detector_mm": 1000, "pixel_spacing_mm": [0, 0.2]})
    (tmp_path / "ok.json").write_text("{not json")
    with pytest.raises(GeometryError, match="not valid JSON"):
        load_xray(tmp_path / "ok.npy")
    with pytest.raises(GeometryError, match="not found"):
        load_xray(tmp_path / "ok.npy", geometry=tmp_path / "missing.json")
    with pytest.raises(GeometryError, match="40"):
        XRayImage(np.zeros((40, 60), np.float32), Intrinsics(1000, 0.2, 60, 41))
    with pytest.raises(XRayError, match="unsupported"):
        save_xray(line_integral_phantom(), Intrinsics(1000, 0.2, 60, 40), tmp_path / "x.jpg")


def test_resized_keeps_geometry(tmp_path):
    L = line_integral_phantom(64, 96).astype(np.float32)
    x = XRayImage(L, Intrinsics(1020.0, (0.2, 0.2), 96, 64), "x")
    r = x.resized(48, 32)
    assert r.shape == (32, 48) and r.intrinsics == x.intrinsics.resized(48, 32)
    np.testing.assert_allclose(r.pixels, L.reshape(32, 2, 48, 2).mean(axis=(1, 3)), rtol=1e-5)
