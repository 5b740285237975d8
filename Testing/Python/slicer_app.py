"""The headless slicer-core application context of the tests: ``mrml.HeadlessSlicerApp`` plus the helpers the
shared checks (``mrml_checks.py``) need: ``nodes``, ``snapshot``, ``fresh``, ``load_volume``.

Usage::

    app = SlicerApp()               # or: with SlicerApp() as app:
    scene = app.scene
    red = app.add_slice_view("Red")  # optional: a slice logic for 2D rendering
    app.save_mrb(path); app2 = SlicerApp(); app2.load_mrb(path)
"""

from pathlib import Path

from RayEmbRegistrationLib.mrml import HeadlessSlicerApp

__all__ = ["SlicerApp"]


class SlicerApp(HeadlessSlicerApp):
    """``HeadlessSlicerApp`` with test helpers (the Slicer self-test borrows ``nodes`` and ``snapshot``)."""

    def fresh(self) -> "SlicerApp":
        """Another application context with an empty scene (use as ``with app.fresh() as other:``)."""
        return SlicerApp()

    def nodes(self, class_name: str = "vtkMRMLNode") -> list:
        """All nodes of a class (including subclasses) in scene order."""
        col = self.scene.GetNodesByClass(class_name)
        return [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]

    def load_volume(self, path: str):
        """Read a volume file into the scene as Slicer's *Add data* does (the volumes logic's archetype reader)."""
        node = self.logics["Volumes"].AddArchetypeVolume(str(path), Path(str(path)).name.split(".")[0])
        if node is None:
            raise OSError(f"could not read {path} as a volume")
        return node

    def snapshot(self) -> list:
        """``(ID, class, MTime)`` of every node: equal snapshots ⇒ no node added, removed or modified."""
        return [
            (n.GetID(), n.GetClassName(), int(n.GetMTime()))
            for n in (self.scene.GetNthNode(i) for i in range(self.scene.GetNumberOfNodes()))
        ]
