"""Which 3D Slicer, Python and PyTorch the extension runs on, and the message when it does not.

Owns: ``MIN_SLICER``, ``MIN_PYTHON``, ``TORCH_REQUIREMENT`` and the checks against them.

Why these: the library and its renderer nanodrr use Python ≥ 3.10 syntax (``X | Y`` types, ``match``); Slicer 5.8
ships Python 3.9, Slicer 5.10 and later ship Python 3.12 (Slicer's ``SuperBuild/External_python.cmake``), so 5.10
is the oldest Slicer that can import the library. nanodrr needs torch ≥ 2.5 and is installed without its declared
dependencies (``Resources/requirements.txt``), so the torch version is checked here rather than by pip.
A refused version is refused before anything is installed: an install into an unsupported Slicer would upgrade its
numpy and then fail."""

from __future__ import annotations

import sys

from packaging.version import InvalidVersion, Version

__all__ = ["MIN_SLICER", "MIN_PYTHON", "TORCH_REQUIREMENT", "unsupported_reason", "torch_problem"]

MIN_SLICER = (5, 10)
MIN_PYTHON = (3, 10)
#: what PyTorch must satisfy (handed to the PyTorch extension's installer, checked after any install)
TORCH_REQUIREMENT = ">=2.5"


def unsupported_reason(slicer_version: str | None, python_version: tuple[int, int] | None = None) -> str | None:
    """None when this Slicer/Python can run the extension, else the message for the user.

    ``slicer_version``: ``slicer.app.applicationVersion`` (e.g. ``"5.10.0"``, ``"5.11.0-2025-06-01"``); None when
    not running in Slicer (only Python is checked)."""
    py = tuple(python_version or sys.version_info[:2])
    if py < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return (f"RayEmb Registration needs Python {need} or newer; this Python is {py[0]}.{py[1]}"
                + (f" (3D Slicer {slicer_version})" if slicer_version else "")
                + f". Install 3D Slicer {MIN_SLICER[0]}.{MIN_SLICER[1]} or newer. Nothing was installed.")
    if slicer_version:
        try:
            release = Version(slicer_version.split("-")[0]).release
        except InvalidVersion:
            return None  # a development build with an unusual version string: Python was the real gate
        if tuple(release[:2]) < MIN_SLICER:
            return (f"RayEmb Registration supports 3D Slicer {MIN_SLICER[0]}.{MIN_SLICER[1]} and newer; this is "
                    f"{slicer_version}. Install a newer Slicer. Nothing was installed.")
    return None


def torch_problem(installed_version: str | None) -> str | None:
    """None when the installed torch satisfies ``TORCH_REQUIREMENT``, else what is wrong and what to do."""
    from packaging.specifiers import SpecifierSet

    if installed_version is None:
        return "PyTorch is not installed."
    try:
        ok = Version(installed_version.split("+")[0]) in SpecifierSet(TORCH_REQUIREMENT)
    except InvalidVersion:
        return None
    if ok:
        return None
    return (f"PyTorch {installed_version} is installed, but RayEmb Registration needs torch {TORCH_REQUIREMENT}. "
            "Update it in the PyTorch Utils module (uninstall, restart Slicer, install), then try again.")
