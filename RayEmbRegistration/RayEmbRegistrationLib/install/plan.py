"""What to pip-install into Slicer's Python, and the pip arguments that cannot move what Slicer already has.

Owns: ``make_plan`` (missing requirements → ``InstallPlan``: a constraints file pinning every installed
distribution, the requirements installed with and without their dependencies) and ``import_satisfied``.

Rules:

* The list is the library's one ``Resources/requirements.txt``; ``skip`` names what is never installed here
  (Slicer's own VTK, SimpleITK and Qt; the Qt build of OpenCV; torch, which comes through the PyTorch extension).
* A requirement counts as present when its distribution is installed, or when the module it provides imports from
  another distribution: any OpenCV build provides ``cv2`` (``PROVIDES``), so an installed ``opencv-contrib-python``
  is never overlaid by a second OpenCV.
* Every distribution already installed is pinned to its installed version (``-c constraints.txt``), so installing
  the extension can never upgrade or downgrade Slicer's numpy, scipy, pillow or pydicom; a requirement that cannot
  be met without moving one fails in pip with the conflict named, and nothing is changed.
* One confirmation (the module's own dialog) precedes the install; ``slicer.util.pip_install`` receives plain pip
  arguments (a list: works on Slicer 5.10's and 5.12's signature alike)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement

__all__ = ["PROVIDES", "InstallPlan", "make_plan", "import_satisfied", "installed_distributions"]

#: requirement name → the import name it provides, for modules more than one distribution can provide
PROVIDES = {"opencv-python-headless": "cv2"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> dict[str, str]:
    """``{normalised name: version}`` of every distribution in this Python."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            out[_norm(name)] = dist.version
    return out


def import_satisfied(requirement: str) -> bool:
    """Whether the module a requirement provides (``PROVIDES``) imports from any installed distribution."""
    mod = PROVIDES.get(_norm(Requirement(requirement).name))
    return mod is not None and importlib.util.find_spec(mod) is not None


@dataclass
class InstallPlan:
    """The missing requirements and the pip arguments that install them without moving anything installed."""

    with_deps: list[str] = field(default_factory=list)
    no_deps: list[str] = field(default_factory=list)
    pins: dict[str, str] = field(default_factory=dict)  #: installed distribution → its version (constraints)

    @property
    def missing(self) -> list[str]:
        return self.with_deps + self.no_deps

    def constraints_text(self) -> str:
        return "".join(f"{name}=={version}\n" for name, version in sorted(self.pins.items()))

    def pip_arguments(self, constraints_path: str | Path) -> list[list[str]]:
        """One argument list per pip run (``pip install <args>``): the no-deps packages first (their imports
        are in the other list), then the rest; each with ``-c constraints_path``."""
        runs = []
        if self.no_deps:
            runs.append(["--no-deps", "-c", str(constraints_path), *self.no_deps])
        if self.with_deps:
            runs.append(["-c", str(constraints_path), *self.with_deps])
        return runs


def make_plan(requirements: list[tuple[str, bool]], skip: list[str], installed: dict[str, str] | None = None,
              importable=import_satisfied) -> InstallPlan:
    """The plan for ``requirements`` (``resources.requirements()``: ``(requirement, no_deps)``) minus ``skip``,
    given the ``installed`` distributions (default: this Python's)."""
    installed = installed_distributions() if installed is None else {_norm(k): v for k, v in installed.items()}
    skipped = {_norm(s) for s in skip}
    plan = InstallPlan(pins=dict(installed))
    for req, no_deps in requirements:
        name = _norm(Requirement(req).name)
        if name in skipped or name in installed or importable(req):
            continue
        (plan.no_deps if no_deps else plan.with_deps).append(req)
    return plan
