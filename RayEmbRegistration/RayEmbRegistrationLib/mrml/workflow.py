"""What the Slicer module does, as Qt-free steps on a given scene: its inputs, options, registration, detection and
preparation.

Owns: ``ModuleInputs`` (the module's parameters as plain values) and ``Workflow`` (every decision the module makes:
geometry sources, which network, the registrar kept per CT, re-entry, the outputs written, the preparation job).

The module file (``RayEmbRegistration.py``) only turns its parameter node into ``ModuleInputs``, finds the DICOM
files behind nodes in Slicer's database, shows dialogs and drives a timer; everything here runs unchanged on a
headless slicer-core scene, where the tests click through it as a tester would in Slicer
(``Testing/Python/test_workflow.py``)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

__all__ = ["ModuleInputs", "Workflow", "Busy", "MODEL_SOURCES"]

#: where the network comes from: the bundled general one (or, for the bundled sample CT, the one fine-tuned on it),
#: a prepared-CT folder, or a weights file
MODEL_SOURCES = ("bundled", "prepared", "file")


class Busy(RuntimeError):
    """A registration, detection or preparation is already running in this workflow."""


@dataclass
class ModuleInputs:
    """The module's parameters as plain values (what its parameter node holds). Zero / empty = not given."""

    ct_node: Any = None
    xray_node: Any = None
    fiducials_node: Any = None
    source_to_detector_mm: float = 0.0
    pixel_spacing_mm: tuple[float, float] = (0.0, 0.0)
    principal_point_px: tuple[float, float] | None = None  #: None = the image centre
    raw_intensity: bool = False
    model_source: str = "bundled"
    model_file: str = ""
    prepared_folder: str = ""
    device: str = "auto"
    initial_pose: str = "auto"  #: ``options.INITIAL_POSES``; regression / both need a prepared folder
    auto_bone_points: bool = True
    refine: bool = True
    iterations: int = 60
    resolution: int = 96
    prepare_minutes: float = 10.0
    #: the DICOM file of the X-ray (geometry from its header) and the CT's DICOM files (slice geometry checked),
    #: found by the module in Slicer's DICOM database; empty when the nodes did not come from DICOM
    xray_dicom_file: str = ""
    ct_dicom_files: list[str] = field(default_factory=list)


class Workflow:
    """The module's steps on ``scene`` (Slicer's ``slicer.mrmlScene`` or a headless one). One ``Registrar`` is
    kept while the CT is unchanged, so re-runs reuse its templates and renderer; a step started while another runs
    raises ``Busy`` (the progress callbacks process GUI events, so a second click could otherwise start a nested
    run on the same state)."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.outputs: dict = {}
        self.last_result = None
        self.last_detection = None
        self.network_note = ""
        self._registrar = None
        self._running: str | None = None

    # --- re-entry -----------------------------------------------------------------------------------------------
    @property
    def running(self) -> str | None:
        """The step running now (``"register"``, ``"detect"``), or None."""
        return self._running

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[None]:
        if self._running is not None:
            raise Busy(f"{self._running} is still running; wait for it to finish (or cancel it) first.")
        self._running = name
        try:
            yield
        finally:
            self._running = None

    # --- inputs -------------------------------------------------------------------------------------------------
    @staticmethod
    def geometry_overrides(inp: ModuleInputs) -> dict:
        """The geometry the user typed, in the sidecar format (zero / None = not given)."""
        d: dict = {}
        if inp.source_to_detector_mm > 0:
            d["source_to_detector_mm"] = float(inp.source_to_detector_mm)
        if min(inp.pixel_spacing_mm) > 0:
            d["pixel_spacing_mm"] = tuple(float(x) for x in inp.pixel_spacing_mm)
        if inp.principal_point_px is not None:
            d["principal_point_px"] = tuple(float(x) for x in inp.principal_point_px)
        return d

    def known_geometry(self, inp: ModuleInputs) -> dict:
        """The geometry the X-ray node brings (attributes, sidecar, DICOM, a non-unit spacing), for filling the
        module's empty fields; ``{}`` without an X-ray."""
        from .inputs import read_xray_geometry

        return read_xray_geometry(inp.xray_node, inp.xray_dicom_file or None) if inp.xray_node is not None else {}

    def missing_geometry(self, inp: ModuleInputs) -> list[str]:
        """``"source_to_detector_mm"`` / ``"pixel_spacing_mm"`` when neither the X-ray nor the fields give it."""
        from .inputs import missing_geometry

        if inp.xray_node is None:
            return []
        return missing_geometry(inp.xray_node, self.geometry_overrides(inp), inp.xray_dicom_file or None)

    def ct(self, inp: ModuleInputs):
        """The CT node → ``CTVolume``; a DICOM CT whose slices are tilted or unevenly spaced is refused."""
        from ..inputs.volume import VolumeError, series_geometry_problem
        from .inputs import volume_node_to_ct

        if inp.ct_node is None:
            raise ValueError("Select the CT volume.")
        if inp.ct_dicom_files:
            problem = series_geometry_problem(list(inp.ct_dicom_files))
            if problem is not None:
                raise VolumeError(f"CT '{inp.ct_node.GetName()}': {problem}")
        return volume_node_to_ct(inp.ct_node)

    def xray(self, inp: ModuleInputs):
        """The X-ray node → ``XRayImage`` (line integrals, geometry per ``read_xray_geometry`` + the fields, C-arm
        angles from its DICOM file when there is one)."""
        import dataclasses

        from .inputs import volume_node_to_xray

        if inp.xray_node is None:
            raise ValueError("Select the X-ray.")
        xr = volume_node_to_xray(inp.xray_node, self.geometry_overrides(inp), raw_intensity=bool(inp.raw_intensity),
                                 dicom_file=inp.xray_dicom_file or None)
        if xr.carm is None and inp.xray_dicom_file:
            from ..inputs.xray_dicom import read_carm_angles

            try:
                carm = read_carm_angles(inp.xray_dicom_file)
            except ValueError:
                carm = None
            if carm is not None:
                xr = dataclasses.replace(xr, carm=carm)
        return xr

    @staticmethod
    def fiducials(inp: ModuleInputs):
        """The point list → ``Fiducials``, or None when there is none (automatic bone points then)."""
        from .inputs import markups_node_to_fiducials

        if inp.fiducials_node is None:
            return None
        fids = markups_node_to_fiducials(inp.fiducials_node)
        return fids if len(fids) else None

    # --- options and the network -------------------------------------------------------------------------------
    def options(self, inp: ModuleInputs, ct):
        """``RegistrationOptions`` of the module's fields, with the network of ``model_source``: a weights file; a
        prepared-CT folder (checked to belong to ``ct``; empty folder = this CT's own, found by its content); or the
        bundled network — for the bundled sample CT, the bundled network fine-tuned on it. The initial pose
        ``regression`` / ``both`` needs the pose-regression network that only a prepared folder holds."""
        options = self._network_options(inp, ct)
        if options.initial in ("regression", "both") and options.regression_path is None:
            if inp.model_source == "prepared":
                raise ValueError(f"Initial pose '{options.initial}': the prepared folder "
                                 f"{Path(options.model_path).parent} has no pose-regression network (prepared with "
                                 "none). Prepare this CT again, or choose the initial pose 'auto' or 'rayemb'.")
            raise ValueError(f"Initial pose '{options.initial}' needs the CT's pose-regression network, which a "
                             "prepared folder holds: press 'Prepare this CT' and select the network 'prepared' (or "
                             "choose the initial pose 'auto' or 'rayemb').")
        return options

    def _network_options(self, inp: ModuleInputs, ct):
        """``options`` before the initial pose's check."""
        from ..options import DetectionOptions, RefineOptions, RegistrationOptions
        from ..resources import RESOURCES, bundled_model_for_ct
        from ..training.prepare import find_prepared, use_prepared

        if inp.model_source not in MODEL_SOURCES:
            raise ValueError(f"model source {inp.model_source!r}: choose one of {', '.join(MODEL_SOURCES)}.")
        options = RegistrationOptions(
            device=inp.device, initial=inp.initial_pose,
            detection=DetectionOptions(auto_bone_points=bool(inp.auto_bone_points)),
            refine=RefineOptions.schedule(int(inp.resolution), int(inp.iterations), enabled=bool(inp.refine)),
        )
        if inp.model_source == "file":
            path = (inp.model_file or "").strip()
            if not path or not os.path.isfile(path):
                raise ValueError(f"Model file not found: '{path}'. Choose a .safetensors file or select 'bundled'.")
            self.network_note = f"network: {path}"
            return options.replace(model_path=path)
        if inp.model_source == "prepared":
            folder = (inp.prepared_folder or "").strip() or "auto"
            if folder == "auto" and find_prepared(ct) is None:
                raise ValueError(f"CT '{ct.name}' has no prepared folder yet: press 'Prepare this CT' (or choose "
                                 "the folder, or select the bundled network).")
            options = use_prepared(options, ct, folder)
            self.network_note = f"network: prepared folder {Path(options.model_path).parent}"
            return options
        own = bundled_model_for_ct(ct)
        if own is not None:
            self.network_note = (f"network: {own.relative_to(RESOURCES)} — the bundled network fine-tuned on this "
                                 "sample CT")
            return options.replace(model_path=str(own))
        self.network_note = "network: the bundled general network (Prepare this CT for a better one)"
        return options

    def registrar(self, inp: ModuleInputs):
        """The ``Registrar`` for the CT with the current options (kept while the CT is unchanged)."""
        from ..registration.pipeline import Registrar

        ct = self.ct(inp)
        options = self.options(inp, ct)
        if self._registrar is None or not self._registrar.matches(ct):
            self._registrar = Registrar(ct, options)
        self._registrar.options = options
        return self._registrar

    # --- steps --------------------------------------------------------------------------------------------------
    def register(self, inp: ModuleInputs, progress=None, cancel=None):
        """Register the X-ray to the CT; writes (or updates) the output nodes all or nothing; returns the result."""
        from .outputs import write_registration_outputs

        with self._step("register"):
            registrar = self.registrar(inp)
            result = registrar.register(self.xray(inp), self.fiducials(inp), progress=progress, cancel=cancel)
            self.outputs = write_registration_outputs(self.scene, inp.xray_node, result.for_display())
            self.last_result, self.last_detection = result, None
            return result

    def detect(self, inp: ModuleInputs, progress=None, cancel=None):
        """Detect the fiducials in the X-ray: 2D points on the X-ray and a table; heatmaps kept for display."""
        from .outputs import write_detection_outputs

        with self._step("detect"):
            fids = self.fiducials(inp)
            if fids is None:
                raise ValueError("Detect landmarks needs 3D landmarks: select or place a point list in the CT.")
            registrar = self.registrar(inp)
            det = registrar.detect(self.xray(inp), fids, heatmaps=True, progress=progress, cancel=cancel)
            self.outputs = write_detection_outputs(self.scene, inp.xray_node, det)
            self.last_detection = det
            return det

    def load_deepfluoro(self, path: str, specimen, frame) -> dict:
        """Load a DeepFluoro specimen and frame (``mrml.deepfluoro.load_deepfluoro_frame``); → the new nodes."""
        from .deepfluoro import load_deepfluoro_frame

        if not path or not os.path.isfile(path):
            raise ValueError(f"DeepFluoro file not found: '{path}'. Choose your copy of ipcai_2020_full_res_data.h5.")
        return load_deepfluoro_frame(self.scene, path, specimen, frame)

    def prepare_job(self, inp: ModuleInputs, temp_dir: str, python: str, module_dir: str):
        """A ``PrepareJob`` (not started) that prepares the CT in a child process: the CT is written to a temporary
        NIfTI in ``temp_dir`` (the node is not modified; the job removes it when closed), the folder goes to the prepared-CT cache under the CT's
        content hash (so ``--prepared auto`` and this module find it again); ``python`` runs
        ``RayEmbRegistrationLib`` from ``module_dir``."""
        from ..detection.templates import ct_hash
        from ..inputs.volume import save_ct
        from ..training.prepare import prepare_command, prepared_cache_dir
        from ..training.prepare_job import PrepareJob

        import tempfile

        ct = self.ct(inp)
        digest = ct_hash(ct)[:16]
        ct_dir = tempfile.mkdtemp(prefix=f"RayEmbPrepare-{digest}-", dir=temp_dir)
        ct_path = os.path.join(ct_dir, "ct.nii.gz")
        save_ct(ct, ct_path)
        out_dir = prepared_cache_dir() / digest
        base = inp.model_file if inp.model_source == "file" and inp.model_file else None
        cmd = prepare_command(ct_path, out_dir, inp.prepare_minutes, python, model=base, device=inp.device)
        env = {"PYTHONPATH": os.pathsep.join([module_dir] + [x for x in [os.environ.get("PYTHONPATH")] if x])}
        return PrepareJob(cmd, out_dir, env=env, work_dir=temp_dir, owned_paths=(ct_dir,))

    @staticmethod
    def use_prepared(inp: ModuleInputs, out_dir: str) -> str:
        """Select the prepared folder ``out_dir`` (``inp`` is updated: model source *prepared*); its readiness."""
        from ..training.prepare import PreparedCT

        prep = PreparedCT.open(out_dir)
        inp.prepared_folder = str(out_dir)
        inp.model_source = "prepared"
        return "\n".join(prep.summary_lines())

    # --- display ------------------------------------------------------------------------------------------------
    def truth_error(self, inp: ModuleInputs, result) -> dict | None:
        """The result's error against the ground truth of a dataset frame (``mrml.deepfluoro``: mTRE and mPD over
        its landmarks), or None for an X-ray without one."""
        from ..evaluate import pose_errors
        from .deepfluoro import truth_of

        t = truth_of(self.scene, inp.xray_node)
        if t is None:
            return None
        truth, pts = t
        return pose_errors(result.final.camera_from_world, truth.camera_from_world, pts, truth.intrinsics)

    def summary(self, result, inp: ModuleInputs | None = None) -> str:
        """The status text after a registration: headline (verdict first), total time, the network used, the
        error against the ground truth (a dataset frame), the verdict's reasons and the warnings."""
        text = f"{result.headline()}; {result.timings_s.get('total', float('nan')):.1f} s"
        reasons = list(result.verdict.reasons) if result.verdict is not None else []
        err = self.truth_error(inp, result) if inp is not None else None
        truth = [f"ground truth: mTRE {err['mtre_mm']:.2f} mm, mPD {err['mpd_mm']:.2f} mm over the landmarks"] if err else []
        return "\n".join([text] + ([self.network_note] if self.network_note else []) + truth + reasons
                         + list(result.warnings or []))

    #: status-label colour per verdict (rejected results are shown, but never look like a success)
    VERDICT_COLORS = {"accepted": "#1a7f37", "uncertain": "#9a6700", "rejected": "#cf222e"}
