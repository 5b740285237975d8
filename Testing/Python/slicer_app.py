"""The headless slicer-core application context used by the tests: ``RayEmbRegistrationLib.mrml.HeadlessSlicerApp``.

Usage::

    app = SlicerApp()               # or: with SlicerApp() as app:
    scene = app.scene
    red = app.add_slice_view("Red")  # optional: a slice logic for 2D rendering
    app.save_mrb(path); app2 = SlicerApp(); app2.load_mrb(path)
"""

from RayEmbRegistrationLib.mrml import HeadlessSlicerApp as SlicerApp

__all__ = ["SlicerApp"]
