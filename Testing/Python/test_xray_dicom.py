"""DICOM X-rays (``xray_dicom.py``, through ``xray.load_xray``): real CR radiographs, tags written with pydicom
(log transform, polarity, principal point, multi-frame), C-arm angles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from RayEmbRegistrationLib.geometry.camera import GeometryError
from RayEmbRegistrationLib.inputs.xray import XRayError, load_xray
from RayEmbRegistrationLib.geometry.carm import CarmAngles
from RayEmbRegistrationLib.inputs.xray_dicom import read_carm_angles
from test_xray import _sha, line_integral_phantom  # the shared helpers of the X-ray tests


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



def test_read_carm_angles_from_the_header(tmp_path):
    """The C-arm angles a DICOM file records, read from its header alone (what Slicer's DICOM-loaded X-rays use)."""
    a = (line_integral_phantom() * 1000).astype(np.uint16)
    p = write_dicom(tmp_path / "xa.dcm", a, "XA", PositionerPrimaryAngle=30.0, PositionerSecondaryAngle=-10.0,
                    DistanceSourceToPatient=700.0)
    c = read_carm_angles(p)
    assert (c.primary_deg, c.secondary_deg, c.source_to_isocenter_mm) == (30.0, -10.0, 700.0)
    assert read_carm_angles(write_dicom(tmp_path / "plain.dcm", a, "CR")) is None
    (tmp_path / "not.dcm").write_text("not a dicom file")
    with pytest.raises(XRayError, match="Cannot read DICOM"):
        read_carm_angles(tmp_path / "not.dcm")


def test_a_pydicom_without_pydicom_pixels_reads_the_same_image(shared_data, monkeypatch):
    """3D Slicer 5.10 ships pydicom 2.4, which has no ``pydicom.pixels``: the reader falls back to
    ``pydicom.pixel_data_handlers.util.apply_modality_lut`` and gets the same pixels."""
    import warnings

    import pydicom.pixels

    src = shared_data / "xray" / "tibia_cr.dcm"
    geo = {"source_to_detector_mm": 1100, "pixel_spacing_mm": 0.2}
    want = load_xray(src, geometry=geo).pixels
    monkeypatch.delattr(pydicom.pixels, "apply_modality_lut")  # as in pydicom 2.x: the name is not there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        got = load_xray(src, geometry=geo).pixels
    np.testing.assert_array_equal(got, want)
