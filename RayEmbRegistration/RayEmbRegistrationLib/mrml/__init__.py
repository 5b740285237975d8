"""Adapters between RayEmbRegistrationLib objects and a GIVEN MRML scene (3D Slicer or the slicer-core wheel).

Owns: the public API of the MRML adapters and their conventions.

The package's public API and its conventions (below); the work is in ``nodes`` (node mechanics),
``inputs`` (nodes → ``CTVolume``/``XRayImage``/``Fiducials``/``Camera``), ``outputs`` (results → nodes, all or
nothing), ``table`` (the per-landmark table), ``app`` (a headless slicer-core application, ``.mrb`` files) and
``workflow`` (the Slicer module's steps and decisions, Qt-free; imported on its own, not re-exported here).

Rules for output nodes: found again and updated on a re-run, never duplicated; inputs never modified; a failure
leaves the scene as it was. The scene is always an argument: nothing here touches ``slicer.mrmlScene``,
``slicer.app``, Qt or the GUI, so the same code runs inside Slicer and on a headless slicer-core scene.
``vtk`` and ``slicer`` are imported lazily, inside the functions.

Frames and conventions (geometry itself is ``camera.py``'s):

* World = RAS mm = Slicer's world. A node under a parent transform is read in world coordinates.
* CT volume node: ``CTVolume.hu[i, j, k]`` ↔ vtkImageData scalars, whose NumPy view is ``(k, j, i)``;
  ``CTVolume.ijk_to_ras`` ↔ the node's IJKToRAS matrix.
* X-ray volume node: a single-slice volume, ``pixels[v, u]`` at IJK ``(i, j, k) = (u, v, 0)`` (column, row),
  so pixel coordinates of the library are the node's I, J voxel coordinates. Its IJKToRAS places it either
  (default) so that the Red (axial) slice view shows the image as stored (row 0 at the top, column 0 on the
  left: I → −R·Δu, J → −A·Δv, like Slicer shows a 2D PNG), or, given a ``Camera``, on that camera's detector
  plane in RAS. The detector geometry is stored as node attributes (``ATTR_SDD``, ``ATTR_PIXEL_SPACING``,
  ``ATTR_PRINCIPAL_POINT``, plain numbers separated by commas; ``ATTR_CARM``, JSON) and read back by
  ``volume_node_to_xray``.
* Camera transform node: the matrix-to-parent is **world_from_camera** (OpenCV camera frame → RAS), i.e. the
  pose of the X-ray source in Slicer's world, the usual "ToolToReference" convention of Slicer transforms:
  anything built in camera coordinates and placed under this transform appears where the camera sees it.
  The intrinsics are stored in the attribute ``ATTR_INTRINSICS`` (JSON), so ``transform_node_to_camera``
  restores the whole ``Camera``.
* Frustum model node: the 5 vertices of ``Camera.frustum_vertices_ras`` (source, then the 4 detector corners)
  in RAS, with the 8 line cells of ``Camera.FRUSTUM_EDGES``; colours per stage in ``FRUSTUM_COLORS``.
* 2D points (detected / reprojected landmarks, pixels ``(u, v)`` of the X-ray grid) are control points placed
  on the X-ray volume's slice: RAS = IJKToRAS · (u, v, 0, 1); ``markups_node_to_points_2d`` inverts it.
* Overlay volumes (DRR, heatmaps) with a different pixel grid cover the same detector: their IJKToRAS is the
  X-ray's composed with the pixel-edge-preserving scaling of ``Intrinsics.resized``.

Output nodes carry ``ATTR_ROLE`` (what they are, e.g. ``"frustum.initial"``) and ``ATTR_KEY`` (which input
they belong to, normally the X-ray node's ID); ``find_output_node`` finds them again after a re-run or after a
scene was saved to ``.mrb`` and loaded back.
"""


from .app import HeadlessSlicerApp, headless_scene, load_scene_mrb, save_scene_mrb
from .inputs import (markups_node_to_fiducials, markups_node_to_points_2d, missing_geometry, read_xray_geometry,
                     transform_node_to_camera, volume_node_to_ct, volume_node_to_xray)
from .nodes import (ATTR_CARM, ATTR_INTRINSICS, ATTR_KEY, ATTR_MATRIX, ATTR_PIXEL_SPACING, ATTR_PRINCIPAL_POINT,
                    ATTR_VERDICT,
                    ATTR_ROLE, ATTR_SDD, MRMLAdapterError, array_from_volume_node, find_output_node, scene_transaction)
from .outputs import (FRUSTUM_COLORS, camera_to_transform_node, ct_to_volume_node, fiducials_to_markups_node,
                      frustum_model_node, frustum_polydata, overlay_to_volume_node, points_2d_to_markups_node,
                      show_in_slice_views, write_detection_outputs, write_registration_outputs, xray_ijk_to_ras,
                      xray_to_volume_node)
from .table import RESULT_COLUMNS, LandmarkRow, results_table_node, table_node_to_rows

__all__ = [
    "MRMLAdapterError", "ATTR_ROLE", "ATTR_KEY", "ATTR_SDD", "ATTR_PIXEL_SPACING", "ATTR_PRINCIPAL_POINT",
    "ATTR_INTRINSICS", "ATTR_MATRIX", "ATTR_CARM", "ATTR_VERDICT", "FRUSTUM_COLORS", "RESULT_COLUMNS", "LandmarkRow",
    "array_from_volume_node", "ct_to_volume_node", "volume_node_to_ct", "xray_to_volume_node", "xray_ijk_to_ras",
    "volume_node_to_xray", "read_xray_geometry", "missing_geometry", "fiducials_to_markups_node",
    "markups_node_to_fiducials", "camera_to_transform_node", "transform_node_to_camera", "frustum_polydata",
    "frustum_model_node", "overlay_to_volume_node", "points_2d_to_markups_node", "markups_node_to_points_2d",
    "results_table_node", "table_node_to_rows", "find_output_node", "scene_transaction", "write_registration_outputs",
    "write_detection_outputs", "show_in_slice_views", "save_scene_mrb", "load_scene_mrb", "HeadlessSlicerApp",
    "headless_scene",
]
