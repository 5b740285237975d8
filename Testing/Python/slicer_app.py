"""A small headless "Slicer application" around the slicer-core wheel, for tests and scripts.

Owns: creating a real MRML scene with what Slicer's application sets up for it: the application logic
(``vtkSlicerApplicationLogic``), the module logics that register node classes and defaults (markups, volumes,
models, transforms, tables, colors), a data IO manager with a cache directory (needed to read ``.mrb``
bundles), optional slice views (slice node + composite node + ``vtkMRMLSliceLogic``, which renders the slice
images exactly as Slicer's slice views do) and ``.mrb`` save/load. No Qt, no ``slicer.app``.

Usage::

    app = SlicerApp()               # or: with SlicerApp() as app:
    scene = app.scene
    red = app.add_slice_view("Red")  # optional: a slice logic for 2D rendering
    app.save_mrb(path); app2 = SlicerApp(); app2.load_mrb(path)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def _slicer():
    import slicer  # noqa: PLC0415  (the slicer-core wheel: MRML, logics, no Qt)

    return slicer


class SlicerApp:
    """A scene plus the logics Slicer's application would attach to it (see the module docstring)."""

    def __init__(self, temp_dir: str | os.PathLike | None = None, color_nodes: bool = True) -> None:
        slicer = _slicer()
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
        (self.temp_dir / "home").mkdir(exist_ok=True)
        self.app_logic.SetHomeDirectory(str(self.temp_dir / "home"))
        self.app_logic.SetShareDirectory(str(self.temp_dir / "home"))
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
        slicer = _slicer()
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(self.app_logic)
        logic.SetMRMLScene(self.scene)
        slice_node = logic.AddSliceNode(layout_name)
        slice_node.SetOrientation(orientation)
        self.slice_logics[layout_name] = logic
        return logic

    # --- files ----------------------------------------------------------------------------------------------
    def save_mrb(self, path: str | os.PathLike) -> None:
        from RayEmbRegistrationLib.mrml import save_scene_mrb

        save_scene_mrb(self.scene, path)

    def load_mrb(self, path: str | os.PathLike, clear: bool = True) -> None:
        from RayEmbRegistrationLib.mrml import load_scene_mrb

        load_scene_mrb(self.scene, path, clear)

    # --- lifetime -------------------------------------------------------------------------------------------
    def close(self) -> None:
        for logic in self.slice_logics.values():
            logic.SetMRMLScene(None)
        self.slice_logics.clear()
        self.scene.Clear(True)
        if self._own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "SlicerApp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fresh(self) -> "SlicerApp":
        """Another application context with an empty scene (use as ``with app.fresh() as other:``)."""
        return SlicerApp()

    def nodes(self, class_name: str = "vtkMRMLNode") -> list:
        """All nodes of a class (including subclasses) in scene order."""
        col = self.scene.GetNodesByClass(class_name)
        return [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]

    def snapshot(self) -> list[tuple[str, str, int]]:
        """``(ID, class, MTime)`` of every node: equal snapshots ⇒ no node added, removed or modified."""
        return [
            (n.GetID(), n.GetClassName(), int(n.GetMTime()))
            for n in (self.scene.GetNthNode(i) for i in range(self.scene.GetNumberOfNodes()))
        ]
