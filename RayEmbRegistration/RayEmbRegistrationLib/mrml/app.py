"""A headless Slicer application context (slicer-core) and scene bundle files.

Owns: a headless slicer-core application context and ``.mrb`` scene files.

``HeadlessSlicerApp`` — a real MRML scene with the logics Slicer's application attaches to it (colours,
markups, volumes, models, transforms, tables), a data IO manager with a cache directory, optional slice views —
and ``.mrb`` save/load. Used by the CLI to write ``scene.mrb`` and by the tests; inside Slicer, use
``slicer.mrmlScene``. No Qt, no ``slicer.app``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .nodes import MRMLAdapterError


def save_scene_mrb(scene, path) -> None:
    """Write the scene to a Medical Reality Bundle (``.mrb``); raises ``MRMLAdapterError`` on failure."""
    path = str(path)
    if not path.lower().endswith(".mrb"):
        raise MRMLAdapterError(f"Scene bundle file name must end with .mrb, got {path}.")
    if not scene.WriteToMRB(path):
        raise MRMLAdapterError(f"Could not write the scene to {path} (see the log for the node that failed).")


def load_scene_mrb(scene, path, clear: bool = True) -> None:
    """Read a ``.mrb`` into ``scene`` (the scene needs a data IO manager with a cache directory, which Slicer
    and ``HeadlessSlicerApp`` provide)."""
    path = str(path)
    if not scene.ReadFromMRB(path, clear):
        raise MRMLAdapterError(f"Could not read the scene bundle {path} (see the log for details).")


def _slicer_core():
    import slicer  # noqa: PLC0415  (the slicer-core wheel, or Slicer itself: MRML and logics)

    return slicer


class HeadlessSlicerApp:
    """A scene plus the logics Slicer's application would attach to it (see the module docstring)."""

    def __init__(self, temp_dir: str | os.PathLike | None = None, color_nodes: bool = True) -> None:
        slicer = _slicer_core()
        self._own_temp = temp_dir is None
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rayemb-slicer-") if temp_dir is None else temp_dir)
        (self.temp_dir / "cache").mkdir(parents=True, exist_ok=True)

        self.scene = slicer.vtkMRMLScene()
        self.scene.SetRootDirectory(str(self.temp_dir))

        # Remote IO: a cache manager + data IO manager (ReadFromMRB needs the cache directory).
        self.cache_manager = slicer.vtkCacheManager()
        self.cache_manager.SetRemoteCacheDirectory(str(self.temp_dir / "cache"))
        self.data_io_manager = slicer.vtkDataIOManager()
        self.data_io_manager.SetCacheManager(self.cache_manager)
        self.scene.SetCacheManager(self.cache_manager)
        self.scene.SetDataIOManager(self.data_io_manager)

        self.app_logic = slicer.vtkSlicerApplicationLogic()
        # The colour logic looks for colour files under the home directory; an empty one means "none extra".
        # Slicer looks for them in <home>/<share>/ColorFiles (share is relative to home).
        (self.temp_dir / "home" / "share" / "ColorFiles").mkdir(parents=True, exist_ok=True)
        self.app_logic.SetHomeDirectory(str(self.temp_dir / "home"))
        self.app_logic.SetShareDirectory("share")
        self.app_logic.SetMRMLScene(self.scene)

        self.logics = {}
        for name, cls in (
            ("Colors", "vtkSlicerColorLogic"),
            ("Markups", "vtkSlicerMarkupsLogic"),
            ("Volumes", "vtkSlicerVolumesLogic"),
            ("Models", "vtkSlicerModelsLogic"),
            ("Transforms", "vtkSlicerTransformLogic"),
            ("Tables", "vtkSlicerTablesLogic"),
        ):
            if name == "Colors" and not color_nodes:
                continue
            logic = getattr(slicer, cls)()
            if hasattr(logic, "SetMRMLApplicationLogic"):
                logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.logics[name] = logic
            if hasattr(self.app_logic, "SetModuleLogic"):
                self.app_logic.SetModuleLogic(name, logic)
        self.slice_logics: dict[str, object] = {}

    # --- views ----------------------------------------------------------------------------------------------
    def add_slice_view(self, layout_name: str = "Red", orientation: str = "Axial"):
        """Create a slice node + composite node and a ``vtkMRMLSliceLogic`` for them; returns the logic."""
        slicer = _slicer_core()
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(self.app_logic)
        logic.SetMRMLScene(self.scene)
        slice_node = logic.AddSliceNode(layout_name)
        slice_node.SetOrientation(orientation)
        self.slice_logics[layout_name] = logic
        return logic

    # --- files ----------------------------------------------------------------------------------------------
    def save_mrb(self, path: str | os.PathLike) -> None:
        save_scene_mrb(self.scene, path)

    def load_mrb(self, path: str | os.PathLike, clear: bool = True) -> None:
        load_scene_mrb(self.scene, path, clear)

    # --- lifetime -------------------------------------------------------------------------------------------
    def close(self) -> None:
        for logic in self.slice_logics.values():
            logic.SetMRMLScene(None)
        self.slice_logics.clear()
        self.scene.Clear(True)
        if self._own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "HeadlessSlicerApp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def headless_scene() -> HeadlessSlicerApp:
    """A new headless application context (``.scene``, ``.close()``); needs the slicer-core wheel."""
    try:
        return HeadlessSlicerApp()
    except ImportError as exc:
        raise MRMLAdapterError(
            "writing a Slicer scene outside Slicer needs the slicer-core package (pip install slicer-core==5.12.4.0 "
            "vtk==9.6.0), which scripts/env.sh installs; or pass --no-scene."
        ) from exc
