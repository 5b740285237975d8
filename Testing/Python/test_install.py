"""``RayEmbRegistrationLib.install``: the version gates and the pinned install plan the Slicer module uses —
checked against this Python's real distributions and a real ``pip install --dry-run`` of the plan's arguments."""

from __future__ import annotations

import subprocess
import sys

import pytest

from RayEmbRegistrationLib.install import (MIN_SLICER, TORCH_REQUIREMENT, make_plan, torch_problem,
                                           unsupported_reason)
from RayEmbRegistrationLib.install.plan import installed_distributions
from RayEmbRegistrationLib.resources import requirements


def test_slicer_and_python_gates():
    assert unsupported_reason("5.10.0", (3, 12)) is None
    assert unsupported_reason("5.12.4", (3, 12)) is None
    assert unsupported_reason("5.11.0-2025-06-01", (3, 12)) is None
    msg = unsupported_reason("5.8.1", (3, 9))
    assert "Python 3.10" in msg and "5.8.1" in msg and "Nothing was installed" in msg
    msg = unsupported_reason("5.6.2", (3, 12))
    assert f"{MIN_SLICER[0]}.{MIN_SLICER[1]}" in msg and "5.6.2" in msg
    assert unsupported_reason(None) is None  # this Python runs the tests: it is supported


def test_torch_version_gate():
    assert TORCH_REQUIREMENT == ">=2.5"
    assert torch_problem("2.5.0") is None and torch_problem("2.13.0+cpu") is None
    assert "2.4.1" in torch_problem("2.4.1+cu121") and "PyTorch Utils" in torch_problem("2.4.1")
    assert torch_problem(None) == "PyTorch is not installed."


def test_plan_installs_only_what_is_missing_and_skips_slicer_owned_packages():
    reqs = [("numpy", False), ("opencv-python-headless", False), ("SimpleITK", False), ("nanodrr", True),
            ("tqdm", False)]
    plan = make_plan(reqs, skip=["SimpleITK", "vtk"], installed={"numpy": "2.0.2", "opencv-contrib-python": "4.10.0"},
                     importable=lambda r: r == "opencv-python-headless")  # cv2 comes from the contrib build
    assert plan.with_deps == ["tqdm"] and plan.no_deps == ["nanodrr"]
    assert plan.pins == {"numpy": "2.0.2", "opencv-contrib-python": "4.10.0"}
    runs = plan.pip_arguments("/c.txt")
    assert runs == [["--no-deps", "-c", "/c.txt", "nanodrr"], ["-c", "/c.txt", "tqdm"]]
    assert "numpy==2.0.2\n" in plan.constraints_text()


def test_the_real_requirement_list_is_complete_here():
    """This environment has everything (scripts/env.sh): nothing to install, every distribution pinned."""
    plan = make_plan(requirements(), skip=["torch", "vtk", "SimpleITK"])
    assert plan.missing == [] and plan.pins == installed_distributions()


def _dry_run(tmp_path, plan, requirement):
    c = tmp_path / "constraints.txt"
    c.write_text(plan.constraints_text())
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-c", str(c), requirement],
                          capture_output=True, text=True, timeout=120)


def test_pins_hold_installed_packages_where_they_are(tmp_path):
    """pip itself, on this Python: with the plan's constraints an installed numpy is accepted as it is, and a
    requirement that would move it fails instead of moving it."""
    numpy_version = installed_distributions()["numpy"]
    plan = make_plan([], skip=[])
    ok = _dry_run(tmp_path, plan, "numpy")
    assert ok.returncode == 0 and "already satisfied" in ok.stdout, ok.stderr
    plan.pins["numpy"] = "0.0.1"  # as if Slicer had another numpy: pip must not replace it
    moved = _dry_run(tmp_path, plan, "numpy")
    assert moved.returncode != 0 and "numpy" in (moved.stdout + moved.stderr)
    assert installed_distributions()["numpy"] == numpy_version
