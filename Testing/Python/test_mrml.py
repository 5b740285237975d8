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
