"""Node mechanics shared by the MRML adapters: attributes, VTK conversions, output-node lookup, transactions.

Owns: the mechanics of RayEmb's nodes in a given scene.

The rules for RayEmb's nodes in a given scene — the ``ATTR_*`` attribute names, finding an output node
again (role + key) instead of duplicating it, and ``scene_transaction`` (nodes added by a failing block are
removed again). ``vtk`` is imported lazily. Conventions: ``mrml/__init__.py``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Sequence

import numpy as np

from ..geometry.camera import GeometryError

ATTR_CARM = "RayEmb.CarmAngles"  # JSON of carm.CarmAngles on X-ray nodes, when known
ATTR_VERDICT = "RayEmb.Verdict"  # "accepted" / "uncertain: …" / "rejected: …" on a registration's output nodes


ATTR_ROLE = "RayEmb.Role"


ATTR_KEY = "RayEmb.Key"


ATTR_SDD = "RayEmb.SourceToDetectorMM"


ATTR_PIXEL_SPACING = "RayEmb.PixelSpacingMM"


ATTR_PRINCIPAL_POINT = "RayEmb.PrincipalPointPx"


ATTR_INTRINSICS = "RayEmb.Intrinsics"


ATTR_MATRIX = "RayEmb.Matrix"  # always "world_from_camera" on camera transform nodes


class MRMLAdapterError(ValueError):
    """A node that cannot be converted (the message names the node, the problem and what to do)."""


def _vtk():
    import vtk  # noqa: PLC0415  (lazy by design: only this module may import vtk, and only when used)

    return vtk


def _numpy_support():
    from vtk.util import numpy_support  # noqa: PLC0415

    return numpy_support


def _matrix_to_vtk(M: np.ndarray):
    vtk = _vtk()
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(M[r, c]))
    return m


def _vtk_to_matrix(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _read_matrix(getter) -> np.ndarray:
    """(4, 4) NumPy matrix filled by a VTK getter such as ``node.GetIJKToRASMatrix``."""
    m = _vtk().vtkMatrix4x4()
    getter(m)
    return _vtk_to_matrix(m)


def _node_label(node) -> str:
    if node is None:
        return "None"
    return f"'{node.GetName()}' ({node.GetClassName()})"


def _node_to_world(node) -> np.ndarray:
    """(4, 4) matrix from the node's coordinates to world, through its parent transforms (linear only)."""
    parent = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise MRMLAdapterError(
            f"{_node_label(node)} is under the non-linear transform '{parent.GetName()}'. "
            "Harden the transform (Data module, right-click → Harden transform) and try again."
        )
    return _read_matrix(parent.GetMatrixTransformToWorld)


def _set_image(node, arr_kji: np.ndarray, vtk_type: int) -> None:
    """Put a (K, J, I) array into the node as new vtkImageData (a deep copy)."""
    vtk = _vtk()
    ns = _numpy_support()
    arr = np.ascontiguousarray(arr_kji)
    img = vtk.vtkImageData()
    img.SetDimensions(int(arr.shape[2]), int(arr.shape[1]), int(arr.shape[0]))
    scalars = ns.numpy_to_vtk(arr.ravel(), deep=True, array_type=vtk_type)
    scalars.SetName("ImageScalars")
    img.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(img)


def array_from_volume_node(node) -> np.ndarray:
    """A copy of the node's voxels as ``(K, J, I)`` (scalar) or ``(K, J, I, C)`` (vector) NumPy array."""
    if node is None or not node.IsA("vtkMRMLVolumeNode"):
        raise MRMLAdapterError(f"Expected a volume node, got {_node_label(node)}. Select a volume.")
    img = node.GetImageData()
    if img is None or img.GetPointData() is None or img.GetPointData().GetScalars() is None:
        raise MRMLAdapterError(f"Volume {_node_label(node)} has no voxels. Load the image again.")
    ns = _numpy_support()
    I, J, K = img.GetDimensions()
    scalars = img.GetPointData().GetScalars()
    a = ns.vtk_to_numpy(scalars).copy()
    C = scalars.GetNumberOfComponents()
    return a.reshape(K, J, I, C) if C > 1 else a.reshape(K, J, I)


def find_output_node(scene, class_name: str, role: str, key: str = ""):
    """The first node of ``class_name`` whose ``ATTR_ROLE`` is ``role`` and ``ATTR_KEY`` is ``key``, or None."""
    nodes = scene.GetNodesByClass(class_name)
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute(ATTR_ROLE) == role and (node.GetAttribute(ATTR_KEY) or "") == (key or ""):
            return node
    return None


def _get_or_add(scene, class_name: str, role: str | None, key: str, name: str, node=None):
    """The node to write to: ``node`` if given, else the existing output (role, key), else a new one."""
    if node is None and role is not None:
        node = find_output_node(scene, class_name, role, key)
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
        if node is None:
            raise MRMLAdapterError(f"The scene cannot create a {class_name} (is its module logic registered?).")
    elif not node.IsA(class_name):
        raise MRMLAdapterError(f"Output node {_node_label(node)} must be a {class_name}.")
    if name:
        node.SetName(name)
    if role is not None:
        node.SetAttribute(ATTR_ROLE, role)
        node.SetAttribute(ATTR_KEY, key or "")
    return node


def _ensure_display(node):
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node.GetDisplayNode()


@contextmanager
def scene_transaction(scene):
    """All-or-nothing block: nodes added inside it are removed again if it raises; scene events are batched.

    Write functions validate and build all their data before touching the scene, so an exception during
    the block means no existing node was changed either.
    """
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    scene.StartState(scene.BatchProcessState)
    try:
        yield
    except BaseException:
        added = [
            scene.GetNthNode(i)
            for i in range(scene.GetNumberOfNodes())
            if scene.GetNthNode(i).GetID() not in before
        ]
        for node in reversed(added):
            if scene.IsNodePresent(node):
                scene.RemoveNode(node)
        raise
    finally:
        scene.EndState(scene.BatchProcessState)


def _fmt(values: Iterable[float]) -> str:
    return ",".join(repr(float(v)) for v in values)


def _parse_numbers(node, attr: str, n: int) -> tuple[float, ...] | None:
    text = node.GetAttribute(attr)
    if text is None or not text.strip():
        return None
    try:
        vals = tuple(float(x) for x in text.replace(";", ",").split(","))
    except ValueError:
        raise GeometryError(
            f"X-ray node '{node.GetName()}' attribute {attr} = {text!r} is not a list of numbers; "
            "correct it in the module's geometry fields."
        ) from None
    if len(vals) == 1 and n == 2:
        vals = (vals[0], vals[0])
    if len(vals) != n:
        raise GeometryError(f"X-ray node '{node.GetName()}' attribute {attr} = {text!r} must hold {n} numbers.")
    return vals


def _set_control_points(node, labels: Sequence[str], ras: np.ndarray) -> None:
    vtk = _vtk()
    wasModifying = node.StartModify()
    try:
        node.RemoveAllControlPoints()
        for label, p in zip(labels, ras):
            node.AddControlPoint(vtk.vtkVector3d(float(p[0]), float(p[1]), float(p[2])), str(label))
    finally:
        node.EndModify(wasModifying)


def _check_points(labels: Sequence[str], ras, what: str) -> np.ndarray:
    P = np.asarray(ras, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3:
        raise MRMLAdapterError(f"{what}: points must have shape (N, 3), got {P.shape}.")
    if len(labels) != len(P):
        raise MRMLAdapterError(f"{what}: {len(labels)} labels for {len(P)} points.")
    if not np.isfinite(P).all():
        raise MRMLAdapterError(f"{what}: points contain NaN or infinity.")
    return P


def _xray_grid(xray_node) -> tuple[np.ndarray, int, int]:
    """(IJKToRAS in world (4, 4), W, H) of an X-ray node."""
    if xray_node is None or not xray_node.IsA("vtkMRMLVolumeNode") or xray_node.GetImageData() is None:
        raise MRMLAdapterError(f"Expected the X-ray volume node, got {_node_label(xray_node)}.")
    W, H, _ = xray_node.GetImageData().GetDimensions()
    return _node_to_world(xray_node) @ _read_matrix(xray_node.GetIJKToRASMatrix), W, H
