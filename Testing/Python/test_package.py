"""The package root (``RayEmbRegistrationLib/__init__.py``): the public names resolve to the objects of their
modules, and importing the package loads neither torch nor OpenCV (the Slicer module imports it before the Python
dependencies are installed)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import RayEmbRegistrationLib as lib


def test_import_loads_no_heavy_dependency():
    code = ("import sys, RayEmbRegistrationLib as L; heavy = [m for m in ('torch', 'cv2', 'nanodrr', 'diffdrr') "
            "if m in sys.modules]; print(','.join(heavy)); assert not heavy, heavy; assert L.__version__")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name", sorted(lib._PUBLIC))
def test_public_name_is_its_module_object(name):
    module = importlib.import_module(f"RayEmbRegistrationLib.{lib._PUBLIC[name]}")
    assert getattr(lib, name) is getattr(module, name)
    assert name in lib.__all__ and name in dir(lib)


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'camera'"):
        lib.camera  # noqa: B018  (modules live in their stage folders: RayEmbRegistrationLib.geometry.camera)


def test_stage_folders_hold_their_modules():
    from RayEmbRegistrationLib.detection import detect, model, templates  # noqa: F401
    from RayEmbRegistrationLib.geometry import camera, carm  # noqa: F401
    from RayEmbRegistrationLib.inputs import fiducials, volume, xray, xray_dicom  # noqa: F401
    from RayEmbRegistrationLib.outputs import overlay, report  # noqa: F401
    from RayEmbRegistrationLib.registration import (initial_pose, pipeline, plausibility, pose, refine,  # noqa: F401
                                                    rescue, similarity, verdict)
    from RayEmbRegistrationLib.rendering import joseph, render, simulate  # noqa: F401
    from RayEmbRegistrationLib.training import prepare  # noqa: F401

    assert pipeline.Registrar is lib.Registrar and volume.load_ct is lib.load_ct
