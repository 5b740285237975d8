"""RayEmbRegistrationLib.mrml on a REAL slicer-core MRML scene with a real CT (the bundled sample CT).

The bodies live in ``mrml_checks.py`` (shared with the Slicer module's self-test); each ``check_*`` runs here
on a fresh headless scene from ``slicer_app.SlicerApp``: adapters both ways (CT, X-ray + geometry, fiducials,
cameras, frustum, overlays, 2D points, results table), output rules (re-run updates instead of duplicating,
inputs untouched, failures leave the scene unchanged) and a .mrb save + load.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("slicer", reason="slicer-core wheel not installed")
pytest.importorskip("vtk")

import mrml_checks  # noqa: E402
from slicer_app import SlicerApp  # noqa: E402


@pytest.fixture()
def app():
    with SlicerApp() as a:
        yield a


@pytest.fixture(scope="module")
def cameras(sample_ct):
    return mrml_checks.make_cameras(sample_ct)


@pytest.fixture(scope="module")
def drr(sample_ct, cameras):
    return mrml_checks.make_drr(sample_ct, cameras)


@pytest.mark.parametrize("check", mrml_checks.all_checks(), ids=lambda f: f.__name__[len("check_"):])
def test_mrml(check, app, sample_ct, cameras, drr, tmp_path):
    mrml_checks.run_check(check, app=app, ct=sample_ct, cameras=cameras, drr=drr, tmp_path=tmp_path)


def test_checks_are_collected():
    assert len(mrml_checks.all_checks()) >= 15


def test_the_shared_checks_run_without_pytorch_or_opencv():
    """The module's self-test runs these checks on a fresh Slicer install, before PyTorch and OpenCV are installed:
    every check passes in a Python where importing torch or cv2 fails."""
    import subprocess

    here = Path(__file__).resolve().parent
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['cv2'] = None\n"
        f"sys.path[:0] = [{str(here)!r}, {str(here.parents[1] / 'RayEmbRegistration')!r}]\n"
        "import pathlib, tempfile, mrml_checks\n"
        "from slicer_app import SlicerApp\n"
        "from RayEmbRegistrationLib.inputs.volume import load_ct\n"
        "from RayEmbRegistrationLib.resources import SAMPLE_CT\n"
        "ct = load_ct(SAMPLE_CT); cams = mrml_checks.make_cameras(ct); drr = mrml_checks.make_drr(ct, cams)\n"
        "for check in mrml_checks.all_checks():\n"
        "    with SlicerApp() as app, tempfile.TemporaryDirectory() as tmp:\n"
        "        mrml_checks.run_check(check, app=app, ct=ct, cameras=cams, drr=drr, tmp_path=pathlib.Path(tmp))\n"
        "print('ran', len(mrml_checks.all_checks()))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"ran {len(mrml_checks.all_checks())}" in r.stdout
