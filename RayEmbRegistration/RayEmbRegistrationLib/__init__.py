"""RayEmbRegistrationLib: the Qt-free core of the RayEmbRegistration 3D Slicer extension.

Owns: the package version, the public names importable from the package root, and the map of its folders (below);
``docs/architecture.md`` draws the data path and says where new code goes.

Markerless 2D/3D registration of an X-ray to a CT with ray embeddings (RayEmb, Shrestha et al., ACCV 2024).
Everything here runs headless (CLI ``rayemb``) and inside Slicer alike; nothing imports qt, ctk, slicer.app or
ScriptedLoadableModule (enforced by ``Testing/Python/test_slicer_module_static.py``). The folders follow the data
path, one concept per module:

    geometry/       camera (the pinhole camera, the one geometry parser, renderer conventions), carm (C-arm
                    angles, pose samplers)
    inputs/         volume (CTs: HU, ijk→RAS), xray / xray_dicom (X-ray pixels + their camera.Intrinsics),
                    fiducials (3D points: markups JSON, fcsv, CSV)
    rendering/      render (one DRR interface, three backends), joseph (the fast CPU projector), simulate
                    (simulated X-rays at known poses), appearance (X-ray appearance families)
    detection/      model (the network, its weight files), templates (template views of a CT and their cache),
                    detect (point subspaces, scores, detections, heatmaps)
    registration/   pipeline (Registrar: caches per CT; detect(), register()), initial_pose (where the start comes
                    from), pose (PnP + RANSAC), plausibility, refine (DRR refinement, depth search, multi-start),
                    rescue, similarity, verdict (accepted / uncertain / rejected)
    outputs/        report (registration.json, detections.json; all-or-nothing folders), overlay (overlay.png)
    training/       prepare (the pre-operative prepared-CT folder), generate, stream, anatomy, cts, train,
                    ledger, finetune, augment, data, export
    mrml/           nodes, inputs, outputs, table, headless app (the scene is always an argument)
    cli/            one file per ``rayemb`` command
    options, results, errors, progress, device, resources, evaluate: shared by every stage (the options tree,
                    typed results, user-fixable errors, progress/cancel, the torch device, bundled files, the
                    simulated benchmark)

The names a user needs are importable from here (``from RayEmbRegistrationLib import Registrar, load_ct``); they
are resolved on first use, so ``import RayEmbRegistrationLib`` itself loads neither torch nor OpenCV (the Slicer
module imports it before the Python dependencies are installed).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name → the module (relative to this package) that defines it
_PUBLIC = {
    "Registrar": "registration.pipeline",
    "register": "registration.pipeline",
    "detect": "registration.pipeline",
    "RegistrationOptions": "options",
    "DetectionOptions": "options",
    "PnPOptions": "options",
    "RefineOptions": "options",
    "OptionsError": "options",
    "RegistrationResult": "results",
    "DetectionResult": "results",
    "Landmark": "results",
    "RegistrationError": "errors",
    "ModelUnavailable": "errors",
    "Cancelled": "progress",
    "CTVolume": "inputs.volume",
    "load_ct": "inputs.volume",
    "XRayImage": "inputs.xray",
    "load_xray": "inputs.xray",
    "Fiducials": "inputs.fiducials",
    "load_fiducials": "inputs.fiducials",
    "Camera": "geometry.camera",
    "Intrinsics": "geometry.camera",
    "write_registration": "outputs.report",
    "write_detections": "outputs.report",
    "use_prepared": "training.prepare",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    """Import the module of a public name on first use (PEP 562) and keep the name here."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
