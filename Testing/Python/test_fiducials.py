"""Fiducial I/O against Slicer's own markups JSON storage node (slicer-core) and plain CSV."""

from __future__ import annotations

import json

import numpy as np
import pytest

from RayEmbRegistrationLib.inputs.fiducials import Fiducials, FiducialsError, load_fiducials, save_csv, save_markups_json

slicer = pytest.importorskip("slicer")

LABELS = ["L2 body", "L3 body", "L4-left pedicle", "L4 body"]
RAS = np.array([[-1.5, 22.25, -30.0], [3.0, -4.5, 61.75], [-20.125, 0.0, 13.0], [7.0, 8.0, -9.0]])


def _scene():
    scene = slicer.vtkMRMLScene()
    scene.AddNode(slicer.vtkMRMLSelectionNode())  # the markups node asks it for the length unit
    return scene


def slicer_write_markups(path, labels, ras, coordinate_system: str) -> None:
    """Write a point list with Slicer's markups JSON storage node (LPS is Slicer's default)."""
    scene = _scene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    for lab, p in zip(labels, ras):
        node.AddControlPoint([float(x) for x in p], lab)  # RAS, as Slicer always holds it
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetCoordinateSystem(
        slicer.vtkMRMLStorageNode.CoordinateSystemLPS if coordinate_system == "LPS" else slicer.vtkMRMLStorageNode.CoordinateSystemRAS
    )
    storage.SetFileName(str(path))
    assert storage.WriteData(node) == 1


def slicer_read_markups(path):
    scene = _scene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    n = node.GetNumberOfControlPoints()
    return [node.GetNthControlPointLabel(i) for i in range(n)], np.array(
        [list(node.GetNthControlPointPositionVector(i)) for i in range(n)]
    ).reshape(-1, 3)


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_reads_slicer_written_markups(tmp_path, system):
    path = tmp_path / "pts.mrk.json"
    slicer_write_markups(path, LABELS, RAS, system)
    assert json.loads(path.read_text())["markups"][0]["coordinateSystem"] == system
    f = load_fiducials(path)
    assert f.labels == LABELS
    np.testing.assert_allclose(f.ras, RAS, atol=1e-9)


def test_slicer_reads_our_markups(tmp_path):
    path = save_markups_json(Fiducials(LABELS, RAS), tmp_path / "ours.mrk.json")
    labels, ras = slicer_read_markups(path)
    assert labels == LABELS
    np.testing.assert_allclose(ras, RAS, atol=1e-9)
    back = load_fiducials(path)
    assert back.labels == LABELS
    np.testing.assert_allclose(back.ras, RAS)


def test_multiple_markups_and_units(tmp_path):
    doc = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [
            {"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [
                {"label": "a", "position": [1.0, 2.0, 3.0]}, {"label": "b", "position": [-4.0, 5.0, -6.0]}]},
            {"type": "Fiducial", "coordinateSystem": "RAS", "coordinateUnits": "um", "controlPoints": [
                {"label": "c", "position": [1000.0, -2000.0, 3000.0]}]},
            {"type": "Fiducial", "controlPoints": [{"label": "d", "position": [1.0, 1.0, 1.0]}]},  # no system: LPS
        ],
    }
    path = tmp_path / "many.mrk.json"
    path.write_text(json.dumps(doc))
    f = load_fiducials(path)
    assert f.labels == ["a", "b", "c", "d"]
    np.testing.assert_allclose(f.ras, [[-1, -2, 3], [4, -5, -6], [1, -2, 3], [-1, -1, 1]])


def test_csv_round_trip_with_and_without_header(tmp_path):
    f = Fiducials(LABELS, RAS)
    path = save_csv(f, tmp_path / "pts.csv")
    assert path.read_text().splitlines()[0] == "label,r,a,s"
    back = load_fiducials(path)
    assert back.labels == LABELS
    np.testing.assert_array_equal(back.ras, RAS)
    (tmp_path / "nohdr.csv").write_text("p1, 1, 2, 3\np2,-4.5,5,6e1\n")
    g = load_fiducials(tmp_path / "nohdr.csv")
    assert g.labels == ["p1", "p2"]
    np.testing.assert_array_equal(g.ras, [[1, 2, 3], [-4.5, 5, 60]])
    common, a, b = f.matched(Fiducials(["L4 body", "x", "L2 body"], np.zeros((3, 3))))
    assert common == ["L2 body", "L4 body"] and a.shape == b.shape == (2, 3)


def test_fcsv_lps(tmp_path):
    (tmp_path / "old.fcsv").write_text(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "vtkMRMLMarkupsFiducialNode_0,1.5,-2,3,0,0,0,1,1,1,0,F-1,,\n"
    )
    f = load_fiducials(tmp_path / "old.fcsv")
    assert f.labels == ["F-1"]
    np.testing.assert_allclose(f.ras, [[-1.5, 2, 3]])


def test_errors(tmp_path):
    with pytest.raises(FiducialsError, match="not found"):
        load_fiducials(tmp_path / "nope.mrk.json")
    (tmp_path / "x.xyz").write_text("1 2 3")
    with pytest.raises(FiducialsError, match="Unsupported"):
        load_fiducials(tmp_path / "x.xyz")
    (tmp_path / "bad.csv").write_text("a,1,2\n")
    with pytest.raises(FiducialsError, match="label,r,a,s"):
        load_fiducials(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("label,r,a,s\na,1,2,x\n")
    with pytest.raises(FiducialsError, match="row 2"):
        load_fiducials(tmp_path / "bad2.csv")
    (tmp_path / "missing.mrk.json").write_text(json.dumps({"markups": [{"coordinateSystem": "LPS", "controlPoints": [
        {"label": "ok", "position": [0, 0, 0]}, {"label": "unplaced", "positionStatus": "missing"}]}]}))
    with pytest.raises(FiducialsError, match="unplaced"):
        load_fiducials(tmp_path / "missing.mrk.json")
    (tmp_path / "empty.mrk.json").write_text(json.dumps({"markups": [{"controlPoints": []}]}))
    with pytest.raises(FiducialsError, match="no control points"):
        load_fiducials(tmp_path / "empty.mrk.json")
    (tmp_path / "notmarkups.json").write_text("[]")
    with pytest.raises(FiducialsError, match="markups"):
        load_fiducials(tmp_path / "notmarkups.json")
    with pytest.raises(FiducialsError, match="labels"):
        Fiducials(["a"], np.zeros((2, 3)))
