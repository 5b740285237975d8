"""X-ray I/O (``xray.py``): real PNG radiograph, sidecars, the geometry parser's nested form, save/load round trips.
DICOM X-rays: ``test_xray_dicom.py``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from RayEmbRegistrationLib.geometry.camera import GeometryError, Intrinsics
from RayEmbRegistrationLib.inputs.xray import XRayError, XRayImage, load_xray, save_xray, sidecar_candidates
from RayEmbRegistrationLib.geometry.carm import CarmAngles

GEOM = {"source_to_detector_mm": 1020.0, "pixel_spacing_mm": [0.3, 0.25]}


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()




def line_integral_phantom(H: int = 40, W: int = 60) -> np.ndarray:
    """A smooth 'bone' blob on soft tissue, line integrals in [0.2, ~2.7]."""
    v, u = np.mgrid[0:H, 0:W]
    return 0.2 + 2.5 * np.exp(-(((u - 0.6 * W) / 8.0) ** 2 + ((v - 0.4 * H) / 6.0) ** 2))








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


def test_geometry_from_a_registration_json_and_over_a_sidecar(tmp_path):
    """One parser everywhere: ``--geometry`` may be a registration.json / render sidecar (geometry nested under
    "geometry"), and an explicit file's keys override the sidecar's."""
    L = line_integral_phantom().astype(np.float32)
    save_xray(L, Intrinsics(1000.0, (0.2, 0.2), 60, 40), tmp_path / "x.tif")
    reg = tmp_path / "registration.json"
    reg.write_text(json.dumps({"final_stage": "refined", "geometry": {**GEOM, "width": 60, "height": 40}}))
    x = load_xray(tmp_path / "x.tif", geometry=reg)
    assert x.intrinsics.source_to_detector_mm == 1020.0 and x.intrinsics.pixel_spacing_mm == (0.3, 0.25)
    with pytest.raises(GeometryError, match="width 64"):
        load_xray(tmp_path / "x.tif", geometry={"geometry": {**GEOM, "width": 64, "height": 40}})
