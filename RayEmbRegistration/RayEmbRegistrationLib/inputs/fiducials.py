"""Landmark points (fiducials) in RAS: reading/writing Slicer markups JSON, legacy .fcsv and plain CSV.

Owns: named 3D points and their files (markups JSON, fcsv, CSV).

``Fiducials`` (labels + (N, 3) RAS mm points), ``load_fiducials``, ``save_markups_json``, ``save_csv``.
Every reader converts to RAS once, here: a markups file in LPS (Slicer's default since 5.0) has x and y negated.

Formats:

* Slicer markups JSON (``.mrk.json`` / ``.json``): every control point of every markup in the file, in file
  order, honouring each markup's ``coordinateSystem`` (``"LPS"`` — the default when absent — or ``"RAS"``)
  and ``coordinateUnits`` (``"mm"``, or ``"um"`` converted to mm). A control point without a position
  (``positionStatus`` ``"missing"``) is an error, not silently skipped.
* Slicer legacy ``.fcsv``: ``# CoordinateSystem = LPS|RAS|0|1`` header, columns ``id,x,y,z,…,label,…``.
* CSV (``.csv``/``.txt``): rows ``label,r,a,s`` in RAS mm; a header row is optional (detected when its last
  three fields are not numbers).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Fiducials", "FiducialsError", "load_fiducials", "save_markups_json", "save_csv", "MARKUPS_SCHEMA"]

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)


class FiducialsError(ValueError):
    """An unreadable or inconsistent fiducial file (the message names the file, the point and the fix)."""


@dataclass(frozen=True)
class Fiducials:
    """Named points.

    Attributes:
        labels: N labels (may repeat or be empty strings).
        ras: (N, 3) float64 RAS mm.
    """

    labels: list[str]
    ras: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        ras = np.asarray(self.ras, dtype=np.float64)
        if ras.size == 0:
            ras = ras.reshape(0, 3)
        if ras.ndim != 2 or ras.shape[1] != 3:
            raise FiducialsError(f"Fiducials.ras must have shape (N, 3), got {ras.shape}.")
        if len(self.labels) != len(ras):
            raise FiducialsError(f"Fiducials: {len(self.labels)} labels for {len(ras)} points.")
        if not np.isfinite(ras).all():
            raise FiducialsError("Fiducials.ras contains NaN or infinity.")
        object.__setattr__(self, "labels", [str(x) for x in self.labels])
        object.__setattr__(self, "ras", ras)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, label: str) -> np.ndarray:
        """(3,) RAS of the first point called ``label``."""
        try:
            return self.ras[self.labels.index(label)]
        except ValueError:
            raise KeyError(f"no fiducial labelled {label!r}; have {self.labels}") from None

    def matched(self, other: "Fiducials") -> tuple[list[str], np.ndarray, np.ndarray]:
        """Labels present in both (in this object's order, first occurrence) → (labels, (M, 3), (M, 3))."""
        common = [lab for i, lab in enumerate(self.labels) if lab in other.labels and lab not in self.labels[:i]]
        return common, np.array([self[l] for l in common]).reshape(-1, 3), np.array([other[l] for l in common]).reshape(-1, 3)


def _flip_if_lps(xyz: np.ndarray, system: str) -> np.ndarray:
    return xyz * np.array([-1.0, -1.0, 1.0]) if system == "LPS" else xyz


def _parse_system(value, path: Path, default: str = "LPS") -> str:
    if value is None or value == "":
        return default
    v = str(value).strip().upper()
    if v in ("LPS", "1"):
        return "LPS"
    if v in ("RAS", "0"):
        return "RAS"
    raise FiducialsError(f"{path}: unknown coordinateSystem {value!r}; Slicer files use 'LPS' or 'RAS'.")


def _load_markups_json(path: Path) -> Fiducials:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FiducialsError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("markups"), list):
        raise FiducialsError(f"{path} is not a Slicer markups file: it has no 'markups' list.")
    labels: list[str] = []
    pts: list[np.ndarray] = []
    for m_i, m in enumerate(doc["markups"]):
        system = _parse_system(m.get("coordinateSystem"), path)
        units = str(m.get("coordinateUnits", "mm")).lower()
        scale = {"mm": 1.0, "um": 1e-3}.get(units)
        if scale is None:
            raise FiducialsError(f"{path}: markup {m_i} has coordinateUnits {units!r}; only 'mm' and 'um' are supported.")
        for c_i, cp in enumerate(m.get("controlPoints") or []):
            label = str(cp.get("label", ""))
            pos = cp.get("position")
            if pos is None or cp.get("positionStatus") == "missing":
                raise FiducialsError(
                    f"{path}: control point {c_i} ('{label}') of markup {m_i} has no position "
                    "(positionStatus 'missing'); place it in Slicer or delete it."
                )
            xyz = np.asarray(pos, dtype=np.float64)
            if xyz.shape != (3,) or not np.isfinite(xyz).all():
                raise FiducialsError(f"{path}: control point {c_i} ('{label}') has an invalid position {pos!r}.")
            labels.append(label)
            pts.append(_flip_if_lps(xyz * scale, system))
    if not pts:
        raise FiducialsError(f"{path} contains no control points.")
    return Fiducials(labels, np.array(pts))


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def _load_fcsv(path: Path) -> Fiducials:
    system = "RAS"  # Slicer < 4.11 files without the header were RAS
    labels, pts = [], []
    columns = None
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("#"):
            key, _, val = line[1:].partition("=")
            if key.strip().lower() == "coordinatesystem":
                system = _parse_system(val, path)
            elif key.strip().lower() == "columns":
                columns = [c.strip() for c in val.split(",")]
            continue
        if not line.strip():
            continue
        row = next(csv.reader([line]))
        ix, iy, iz = (columns.index(c) for c in ("x", "y", "z")) if columns else (1, 2, 3)
        il = columns.index("label") if columns and "label" in columns else 11
        try:
            xyz = np.array([float(row[ix]), float(row[iy]), float(row[iz])])
        except (IndexError, ValueError):
            raise FiducialsError(f"{path}:{line_no}: cannot read x, y, z from {line!r}.") from None
        labels.append(row[il] if len(row) > il else "")
        pts.append(_flip_if_lps(xyz, system))
    if not pts:
        raise FiducialsError(f"{path} contains no points.")
    return Fiducials(labels, np.array(pts))


def _load_csv(path: Path) -> Fiducials:
    labels, pts = [], []
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(x.strip() for x in r)]
    for n, row in enumerate(rows):
        row = [x.strip() for x in row]
        if len(row) != 4:
            raise FiducialsError(f"{path}: row {n + 1} {row!r} must have 4 fields: label,r,a,s (RAS mm).")
        if not all(_is_number(x) for x in row[1:]):
            if n == 0:
                continue  # header
            raise FiducialsError(f"{path}: row {n + 1} {row!r}: r, a, s must be finite numbers (RAS mm).")
        labels.append(row[0])
        pts.append([float(x) for x in row[1:]])
    if not pts:
        raise FiducialsError(f"{path} contains no points (expected rows label,r,a,s).")
    return Fiducials(labels, np.array(pts))


def load_fiducials(path: str | Path) -> Fiducials:
    """Read fiducials into RAS mm from Slicer markups JSON (``.mrk.json``/``.json``), ``.fcsv`` or CSV
    ``label,r,a,s`` (``.csv``/``.txt``). Raises ``FiducialsError``."""
    path = Path(path)
    if not path.is_file():
        raise FiducialsError(f"Fiducial file not found: {path}.")
    lower = path.name.lower()
    if lower.endswith(".json"):
        return _load_markups_json(path)
    if lower.endswith(".fcsv"):
        return _load_fcsv(path)
    if lower.endswith((".csv", ".txt")):
        return _load_csv(path)
    raise FiducialsError(f"Unsupported fiducial file {path}: use Slicer markups .mrk.json, .fcsv or CSV label,r,a,s.")


def save_markups_json(fids: Fiducials, path: str | Path, name: str = "F") -> Path:
    """Write a Slicer point-list markups file (schema v1.0.3, ``coordinateSystem`` RAS) that Slicer loads."""
    path = Path(path)
    cps = [
        {
            "id": str(i + 1),
            "label": lab,
            "description": "",
            "associatedNodeID": "",
            "position": [float(x) for x in p],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for i, (lab, p) in enumerate(zip(fids.labels, fids.ras))
    ]
    doc = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": "RAS",
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": f"{name}-%d",
                "lastUsedControlPointNumber": len(cps),
                "controlPoints": cps,
                "measurements": [],
            }
        ],
    }
    path.write_text(json.dumps(doc, indent=4))
    return path


def save_csv(fids: Fiducials, path: str | Path) -> Path:
    """Write ``label,r,a,s`` rows (RAS mm) with a header row."""
    path = Path(path)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "r", "a", "s"])
        for lab, p in zip(fids.labels, fids.ras):
            w.writerow([lab] + [repr(float(x)) for x in p])
    return path
