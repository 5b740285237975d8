"""Installing the extension's Python dependencies into 3D Slicer's own Python, safely.

Owns: which Slicer, Python and PyTorch versions are supported (``gates``) and what is installed, how, and pinned
to what (``plan``). Qt-free and Slicer-free, so every rule is tested headlessly; the module file only shows the one
confirmation dialog and hands ``plan``'s pip arguments to ``slicer.util.pip_install``."""

from .gates import MIN_PYTHON, MIN_SLICER, TORCH_REQUIREMENT, torch_problem, unsupported_reason
from .plan import InstallPlan, import_satisfied, make_plan

__all__ = ["MIN_PYTHON", "MIN_SLICER", "TORCH_REQUIREMENT", "unsupported_reason", "torch_problem", "InstallPlan",
           "make_plan", "import_satisfied"]
