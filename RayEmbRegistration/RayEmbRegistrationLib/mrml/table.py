"""The per-landmark results table in the scene.

Owns: the per-landmark results table in the scene.

``LandmarkRow`` and the table node of a registration or detection (columns ``RESULT_COLUMNS``), written and
read back (also after a ``.mrb`` round trip)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .nodes import MRMLAdapterError, _get_or_add, _node_label, _vtk


RESULT_COLUMNS = (
    "Label",
    "R",
    "A",
    "S",
    "Detected u",
    "Detected v",
    "Reprojected u",
    "Reprojected v",
    "Error px",
    "Confidence",
)


@dataclass(frozen=True)
class LandmarkRow:
    """One landmark of a registration: label, 3D RAS (3,), detected and reprojected pixels (2,), confidence."""

    label: str
    ras: tuple[float, float, float]
    detected_px: tuple[float, float]
    reprojected_px: tuple[float, float]
    confidence: float

    @property
    def error_px(self) -> float:
        d = np.subtract(self.detected_px, self.reprojected_px)
        return float(np.hypot(*d)) if np.isfinite(d).all() else math.nan

    @classmethod
    def coerce(cls, x: Any) -> "LandmarkRow":
        """From a LandmarkRow, a dict, an object with these attributes, or a 5-sequence in field order."""
        if isinstance(x, cls):
            return x
        names = ("label", "ras", "detected_px", "reprojected_px", "confidence")
        if isinstance(x, dict):
            vals = [x.get(n) for n in names]
        elif all(hasattr(x, n) for n in names):
            vals = [getattr(x, n) for n in names]
        elif isinstance(x, (tuple, list)) and len(x) == 5:
            vals = list(x)
        else:
            raise MRMLAdapterError(f"Cannot read a landmark result from {x!r}: need {', '.join(names)}.")

        def vec(v, n):
            if v is None:
                return (math.nan,) * n
            a = np.asarray(v, dtype=np.float64).reshape(-1)
            if a.size != n:
                raise MRMLAdapterError(f"Landmark '{vals[0]}': expected {n} numbers, got {a.size}.")
            return tuple(float(t) for t in a)

        conf = math.nan if vals[4] is None else float(vals[4])
        return cls(str(vals[0]), vec(vals[1], 3), vec(vals[2], 2), vec(vals[3], 2), conf)


def results_table_node(scene, landmarks: Sequence[Any], name: str = "RayEmb landmarks", key: str = "", node=None):
    """Per-landmark results → table node (columns ``RESULT_COLUMNS``; role ``"table"``)."""
    vtk = _vtk()
    rows = [LandmarkRow.coerce(x) for x in landmarks]
    table = vtk.vtkTable()
    label_col = vtk.vtkStringArray()
    label_col.SetName(RESULT_COLUMNS[0])
    for r in rows:
        label_col.InsertNextValue(r.label)
    table.AddColumn(label_col)
    numeric = [
        [r.ras[0] for r in rows],
        [r.ras[1] for r in rows],
        [r.ras[2] for r in rows],
        [r.detected_px[0] for r in rows],
        [r.detected_px[1] for r in rows],
        [r.reprojected_px[0] for r in rows],
        [r.reprojected_px[1] for r in rows],
        [r.error_px for r in rows],
        [r.confidence for r in rows],
    ]
    for col_name, values in zip(RESULT_COLUMNS[1:], numeric):
        arr = vtk.vtkDoubleArray()
        arr.SetName(col_name)
        for v in values:
            arr.InsertNextValue(float(v))
        table.AddColumn(arr)
    node = _get_or_add(scene, "vtkMRMLTableNode", "table", key, name, node)
    node.SetAndObserveTable(table)
    node.SetUseColumnTitleAsColumnHeader(True) if hasattr(node, "SetUseColumnTitleAsColumnHeader") else None
    node.SetLocked(True) if hasattr(node, "SetLocked") else None
    return node


def table_node_to_rows(node) -> list[LandmarkRow]:
    """Read a results table back (tables loaded from .mrb store numbers; empty cells become NaN)."""
    t = node.GetTable()
    cols = {t.GetColumn(c).GetName(): t.GetColumn(c) for c in range(t.GetNumberOfColumns())}
    missing = [c for c in RESULT_COLUMNS if c not in cols]
    if missing:
        raise MRMLAdapterError(f"Table {_node_label(node)} lacks the columns {missing}.")

    def num(col, i):
        v = cols[col].GetValue(i)
        try:
            return float(v.ToDouble()) if hasattr(v, "ToDouble") else float(v)
        except (TypeError, ValueError):
            return math.nan

    rows = []
    for i in range(t.GetNumberOfRows()):
        label = cols["Label"].GetValue(i)
        label = label.ToString() if hasattr(label, "ToString") else str(label)
        rows.append(
            LandmarkRow(
                label,
                (num("R", i), num("A", i), num("S", i)),
                (num("Detected u", i), num("Detected v", i)),
                (num("Reprojected u", i), num("Reprojected v", i)),
                num("Confidence", i),
            )
        )
    return rows
