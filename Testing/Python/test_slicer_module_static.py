"""Static checks of the Slicer-facing files, without Slicer: the scripted module (parsed with ``ast``), its .ui,
the CMake files, the .s4ext and catalog entry, the icon, and the rule that RayEmbRegistrationLib is Qt-free.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "RayEmbRegistration"
MODULE_PY = MODULE_DIR / "RayEmbRegistration.py"
LIB_DIR = MODULE_DIR / "RayEmbRegistrationLib"
UI_FILE = REPO / "Resources" / "UI" / "RayEmbRegistration.ui"
ICON = REPO / "Resources" / "Icons" / "RayEmbRegistration.png"

FORBIDDEN_IN_SLICER_PYTHON = {"vtk", "simpleitk", "slicer-core", "opencv-python", "opencv-contrib-python", "pyqt5", "pyside6", "pyside2"}


@pytest.fixture(scope="module")
def module_ast() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(), filename=str(MODULE_PY))


@pytest.fixture(scope="module")
def ui_root() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _base_names(cls: ast.ClassDef) -> list[str]:
    return [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in cls.bases]


# ------------------------------------------------------------------------------------------------------------
# The scripted module
# ------------------------------------------------------------------------------------------------------------


def test_module_defines_the_four_template_classes(module_ast):
    classes = _classes(module_ast)
    expected = {
        "RayEmbRegistration": ["ScriptedLoadableModule"],
        "RayEmbRegistrationWidget": ["ScriptedLoadableModuleWidget", "VTKObservationMixin"],
        "RayEmbRegistrationLogic": ["ScriptedLoadableModuleLogic"],
        "RayEmbRegistrationTest": ["ScriptedLoadableModuleTest"],
    }
    for name, bases in expected.items():
        assert name in classes, f"{MODULE_PY.name} lacks class {name}"
        assert _base_names(classes[name]) == bases, f"{name} bases {_base_names(classes[name])} != {bases}"
    wrappers = [c for c in classes.values() if any(ast.unparse(d) == "parameterNodeWrapper" for d in c.decorator_list)]
    assert [c.name for c in wrappers] == ["RayEmbRegistrationParameterNode"]
    widget_methods = {n.name for n in classes["RayEmbRegistrationWidget"].body if isinstance(n, ast.FunctionDef)}
    assert {"setup", "cleanup", "enter", "exit", "initializeParameterNode", "setParameterNode"} <= widget_methods
    src = MODULE_PY.read_text()
    assert "slicer.util.loadUI(" in src and "tryWithErrorDisplay" in src and ".connectGui(self.ui)" in src
    test_methods = [n.name for n in classes["RayEmbRegistrationTest"].body if isinstance(n, ast.FunctionDef)]
    assert "runTest" in test_methods and sum(m.startswith("test_") for m in test_methods) >= 2


def test_module_imports_nothing_heavy_and_installs_nothing_at_import(module_ast):
    allowed = {"importlib", "logging", "os", "pathlib", "shutil", "sys", "typing", "ctk", "qt", "slicer", "vtk"}
    for node in module_ast.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            # Only definitions, assignments and the docstring at module level: no calls (no pip at import).
            assert isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            ), f"module-level statement at line {node.lineno}: {ast.unparse(node)[:80]}"
            continue
        for n in names:
            assert n.split(".")[0] in allowed, f"module-level import of {n} (import heavy packages lazily, after installing)"


def test_one_dependency_list_and_it_never_installs_slicer_owned_packages(module_ast):
    """Resources/requirements.txt is the one list: pyproject.toml and scripts/env.sh read it, the module installs
    from it (``resources.requirements``), skipping what Slicer owns and torch (the PyTorch extension)."""
    from RayEmbRegistrationLib.resources import REQUIREMENTS, requirements

    consts = {}
    for node in module_ast.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                consts[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    assert "PIP_REQUIREMENTS" not in consts and "PIP_NO_DEPS" not in consts, "the module must not keep its own list"
    assert "requirements()" in MODULE_PY.read_text()
    reqs = requirements()
    names = {re.split(r"[<>=!~\[; ]", r)[0].lower() for r, _ in reqs}
    no_deps = {re.split(r"[<>=!~\[; ]", r)[0].lower() for r, nd in reqs if nd}
    skip = {s.lower() for s in consts["SKIP_PACKAGES"]}
    assert {"vtk", "simpleitk", "slicer-core", "opencv-python", "torch"} <= skip
    assert not (names - skip) & FORBIDDEN_IN_SLICER_PYTHON, "the module would install a Slicer-owned package"
    assert {"opencv-python-headless", "safetensors", "torch"} <= names and {"diffdrr", "nanodrr", "torchio"} <= no_deps
    assert 'dependencies = { file = ["Resources/requirements.txt"] }' in (REPO / "pyproject.toml").read_text()
    assert "Resources/requirements.txt" in (REPO / "scripts" / "env.sh").read_text()
    assert not (REPO / "requirements" / "requirements.txt").exists()
    assert REQUIREMENTS == REPO / "Resources" / "requirements.txt"


def _ui_widgets(root) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_every_ui_widget_the_module_uses_exists(module_ast, ui_root):
    widgets = _ui_widgets(ui_root)
    used = {
        n.attr
        for n in ast.walk(module_ast)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"
        and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"
    }
    assert used, "the widget uses no self.ui.X?"
    missing = sorted(used - set(widgets))
    assert not missing, f"self.ui.X names missing from {UI_FILE.name}: {missing}"
    # the brief's inputs/outputs are all there
    for name in ("ctSelector", "xraySelector", "fiducialsSelector", "fiducialsPlaceWidget", "sddSpinBox",
                 "pixelSpacingUSpinBox", "pixelSpacingVSpinBox", "principalPointUSpinBox", "principalPointVSpinBox",
                 "geometryWarningLabel", "modelSourceComboBox", "deviceComboBox", "autoBonePointsCheckBox",
                 "refineCheckBox", "iterationsSpinBox", "resolutionSpinBox", "detectButton", "registerButton",
                 "prepareButton", "resultsTableView", "overlayOpacitySliderWidget", "modelPathLineEdit",
                 "preparedFolderLineEdit"):
        assert name in widgets, name


# parameterNodeWrapper GUI connectors: widget class → the types it can represent (Slicer's guiConnectors.py)
_CONNECTORS = {
    "QCheckBox": {"bool"},
    "QSpinBox": {"int"},
    "QDoubleSpinBox": {"float"},
    "ctkSliderWidget": {"float"},
    "QComboBox": {"str"},  # needs a Choice annotation
    "QLineEdit": {"str"},
    "ctkPathLineEdit": {"pathlib.Path"},
    "qMRMLNodeComboBox": {"node"},
}


def _parameter_fields(module_ast) -> dict[str, ast.expr]:
    cls = _classes(module_ast)["RayEmbRegistrationParameterNode"]
    return {n.target.id: n.annotation for n in cls.body if isinstance(n, ast.AnnAssign)}


def _base_type(annotation: ast.expr) -> tuple[str, str]:
    text = ast.unparse(annotation)
    m = re.match(r"Annotated\[\s*([\w.]+)\s*,(.*)\]$", text, re.S)
    base, extra = (m.group(1), m.group(2)) if m else (text, "")
    return ("node" if base.startswith("vtkMRML") else base), extra


def test_parameter_names_in_ui_match_the_parameter_node(module_ast, ui_root):
    fields = _parameter_fields(module_ast)
    bound = {}
    for w in ui_root.iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                bound[p.find("string").text] = w
    assert bound
    for param, w in bound.items():
        assert param in fields, f"{w.get('name')} binds unknown parameter {param!r}"
        base, extra = _base_type(fields[param])
        cls = w.get("class")
        assert cls in _CONNECTORS, f"{w.get('name')}: no parameterNodeWrapper connector for {cls}"
        assert base in _CONNECTORS[cls], f"{w.get('name')} ({cls}) cannot represent {param}: {base}"
        if cls == "QComboBox":
            assert "Choice(" in extra, f"{param}: a QComboBox needs a Choice annotation"
        if cls == "ctkSliderWidget":
            assert "WithinRange(" in extra, f"{param}: a ctkSliderWidget needs bounds"
    # the two path strings are connected by hand (an empty pathlib.Path would show "."): both directions
    by_hand = {"modelFile": "modelPathLineEdit", "preparedFolder": "preparedFolderLineEdit",
               "deepfluoroFile": "deepfluoroPathLineEdit"}
    text = MODULE_PY.read_text()
    for param, widget in by_hand.items():
        assert _base_type(fields[param])[0] == "str" and param not in bound
        assert f'self.ui.{widget}.connect("currentPathChanged(QString)", lambda path: self._setPathParameter("{param}", path))' in text
        assert f"(self.ui.{widget}, p.{param})" in text
    unbound = set(fields) - set(bound) - set(by_hand)
    assert not unbound, f"parameters without a widget: {sorted(unbound)}"


def test_module_stops_preparations_through_the_job_and_installs_pinned_after_one_question(module_ast):
    """The review's breaks, as the module file must avoid them: no QProcess.terminate (it ends only PythonSlicer's
    launcher), no second install dialog or slow skip_packages path, a modal progress dialog, and the version gate
    constant equal to the library's."""
    from RayEmbRegistrationLib.install import MIN_PYTHON

    text = MODULE_PY.read_text()
    assert "QProcess" not in text and ".terminate()" not in text
    assert "prepareJob" in text and "job.stop()" in text and "job.kill()" in text and "self._prepareJob.close()" in text
    assert "pip_ensure" not in text and "skip_packages" not in text and "pydeps" not in text
    assert "plan.pip_arguments(constraints)" in text and "torchVersionRequirement=requirement" in text
    assert "qt.Qt.ApplicationModal" in text
    consts = {n.targets[0].id: ast.literal_eval(n.value) for n in module_ast.body
              if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and n.targets[0].id == "MIN_PYTHON"}
    assert consts["MIN_PYTHON"] == MIN_PYTHON
    # the confirmation is never shown under a wait cursor: the install runs outside tryWithErrorDisplay(waitCursor=True)
    assert 'tryWithErrorDisplay(_("Could not install the Python packages."), waitCursor=False)' in text


def test_ui_is_a_valid_designer_file(ui_root):
    assert ui_root.tag == "ui" and ui_root.find("class").text == "RayEmbRegistration"
    top = ui_root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    names = [w.get("name") for w in ui_root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    declared = {c.find("class").text for c in ui_root.iter("customwidget")}
    qt_std = {"QWidget", "QProgressBar", "QLabel", "QCheckBox", "QComboBox", "QSpinBox", "QDoubleSpinBox", "QPushButton", "QLineEdit"}
    for w in ui_root.iter("widget"):
        cls = w.get("class")
        assert cls in qt_std or cls in declared, f"{w.get('name')}: class {cls} is neither Qt nor declared"
    # every MRML widget receives the scene (mrmlSceneChanged → setMRMLScene)
    receivers = {c.find("receiver").text for c in ui_root.iter("connection") if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    for w in ui_root.iter("widget"):
        if w.get("class").startswith(("qMRML", "qSlicer")) and w is not top:
            assert w.get("name") in receivers, f"{w.get('name')} never gets the MRML scene"


# ------------------------------------------------------------------------------------------------------------
# Extension packaging
# ------------------------------------------------------------------------------------------------------------


def _cmake_set(text: str, var: str) -> list[str]:
    """The arguments of ``set(VAR ...)`` (quoted strings kept whole, comments dropped)."""
    m = re.search(r"set\(\s*" + re.escape(var) + r"\s", text)
    assert m, f"set({var} ...) not found"
    out = []
    for tok in re.finditer(r'"[^"]*"|#[^\n]*|\)|[^\s)]+', text[m.end():]):
        t = tok.group(0)
        if t == ")":
            return out
        if not t.startswith("#"):
            out.append(t)
    raise AssertionError(f"set({var} ...) is not closed")


def test_top_level_cmake():
    text = (REPO / "CMakeLists.txt").read_text()
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert _cmake_set(text, var), var
    assert _cmake_set(text, "EXTENSION_CATEGORY") == ['"Registration"']
    assert _cmake_set(text, "EXTENSION_DEPENDS") == ['"PyTorch"']  # torch through the PyTorch extension
    assert "add_subdirectory(RayEmbRegistration)" in text
    assert "find_package(Slicer REQUIRED)" in text and "Slicer_EXTENSION_CPACK" in text
    icon_url = _cmake_set(text, "EXTENSION_ICONURL")[0].strip('"')
    assert icon_url.endswith("Resources/Icons/RayEmbRegistration.png")
    for url in _cmake_set(text, "EXTENSION_SCREENSHOTURLS")[0].strip('"').split():
        rel = url.split("/main/", 1)[1]
        assert (REPO / rel).exists() or rel.startswith("docs/screenshots/"), url


def test_module_cmake_lists_existing_files():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in text and "SCRIPTS ${MODULE_PYTHON_SCRIPTS}" in text
    # explicit scripts
    scripts = [s for s in _cmake_set(text, "MODULE_PYTHON_SCRIPTS") if not s.startswith("${RAYEMB")]
    for s in scripts:
        assert (MODULE_DIR / s.replace("${MODULE_NAME}", "RayEmbRegistration")).is_file(), s
    # the glob covers every library file
    m = re.search(r"file\(GLOB_RECURSE RAYEMB_LIB_SCRIPTS(.*?)\)", text, re.S)
    pattern = re.search(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)", m.group(1)).group(1)
    lib_files = sorted(str(p.relative_to(MODULE_DIR)) for p in LIB_DIR.rglob("*.py") if "__pycache__" not in p.parts)
    matched = [f for f in lib_files if fnmatch.fnmatch(f, pattern)]
    assert matched == lib_files and "RayEmbRegistrationLib/__init__.py" in matched and "RayEmbRegistrationLib/mrml/__init__.py" in matched
    # explicit resources exist under the top-level Resources/
    for r in _cmake_set(text, "MODULE_PYTHON_RESOURCES"):
        assert (REPO / "Resources" / r.replace("${MODULE_NAME}", "RayEmbRegistration")).is_file(), r
    assert "${CMAKE_CURRENT_SOURCE_DIR}/../Resources" in text
    for s in _cmake_set(text, "RAYEMB_TESTING_SCRIPTS"):
        assert (REPO / "Testing" / "Python" / s).is_file(), s
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_s4ext_has_the_template_fields():
    fields = {}
    for line in (REPO / "RayEmbRegistration.s4ext").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            fields[key] = value.strip()
    required = ["scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                "category", "iconurl", "status", "description", "screenshoturls", "enabled"]
    for key in required:
        assert key in fields, key
    assert fields["scm"] == "git" and fields["category"] == "Registration" and fields["depends"] == "PyTorch"
    assert fields["enabled"] in ("0", "1") and fields["scmurl"].endswith(".git")


def test_catalog_entry_json():
    entry = json.loads((REPO / "RayEmbRegistration.json").read_text())
    # slicer-extension-catalog-entry-schema v1.0.x: required keys and the only allowed ones
    assert {"$schema", "category", "scm_url"} <= set(entry)
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed, set(entry) - allowed
    assert "slicer-extension-catalog-entry-schema" in entry["$schema"]
    assert entry["category"] == "Registration" and entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"].startswith("https://") and 1 <= entry.get("tier", 1) <= 5


def test_icon_is_a_128px_png():
    from PIL import Image

    with Image.open(ICON) as im:
        assert im.format == "PNG" and im.size == (128, 128)
        import numpy as np

        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(px, axis=0)) > 50, "the icon should be a picture, not a flat colour"


# ------------------------------------------------------------------------------------------------------------
# The library stays Qt-free
# ------------------------------------------------------------------------------------------------------------


def _lib_files():
    return sorted(p for p in LIB_DIR.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _lib_files(), ids=lambda p: str(p.relative_to(LIB_DIR)))
def test_library_never_imports_qt_ctk_slicer_app(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    is_mrml = path.parent == LIB_DIR / "mrml"
    module_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for n in names:
                top = n.split(".")[0]
                assert top not in ("qt", "ctk", "PythonQt", "PyQt5", "PySide2", "PySide6", "__main__"), f"{path.name}:{node.lineno} imports {n}"
                assert "ScriptedLoadableModule" not in n, f"{path.name}:{node.lineno} imports {n}"
                if isinstance(node, ast.ImportFrom):
                    assert not any(a.name in ("ScriptedLoadableModule", "app") for a in node.names), f"{path.name}:{node.lineno}"
                if top in ("vtk", "vtkmodules", "slicer"):
                    assert is_mrml, f"{path.name}:{node.lineno}: vtk/slicer imports belong in mrml/ only"
                    assert id(node) not in module_level, f"mrml/{path.name}:{node.lineno}: import {n} lazily, inside a function"
        if isinstance(node, ast.Attribute) and node.attr in ("app", "mrmlScene") and isinstance(node.value, ast.Name) and node.value.id == "slicer":
            raise AssertionError(f"{path.name}:{node.lineno} uses slicer.{node.attr}: take the scene as an argument")


def test_catalog_rules_that_need_no_network():
    """The offline part of ExtensionsIndex's check_description_files.py (scripts/check_catalog_entry.py runs the
    real checker): the entry's name is the CMake project's and does not start with 'Slicer'; the repository's name
    does; a LICENSE at the root; the icon and screenshot URLs name files of this tree; LF line endings."""
    entry_path = REPO / "RayEmbRegistration.json"
    entry = json.loads(entry_path.read_text())
    name = entry_path.stem
    assert not name.lower().startswith("slicer")
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"project\s*\(\s*([^\s)]+)", cmake).group(1) == name
    repo_name = entry["scm_url"].rstrip("/").split("/")[-1].removesuffix(".git")
    assert repo_name.startswith("Slicer"), repo_name
    assert (REPO / "LICENSE").is_file() and "MIT License" in (REPO / "LICENSE").read_text()
    assert b"\r" not in entry_path.read_bytes()
    raw = f"https://raw.githubusercontent.com/{entry['scm_url'].split('github.com/')[1].removesuffix('.git')}/" \
          f"{entry['scm_revision']}/"
    icon = re.search(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"', cmake).group(1)
    shots = re.search(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake).group(1).split()
    for url in [icon, *shots]:
        assert url.startswith(raw) and (REPO / url[len(raw):]).is_file(), url
    s4ext = (REPO / "RayEmbRegistration.s4ext").read_text()
    assert f"iconurl {icon}" in s4ext and f"scmurl {entry['scm_url']}" in s4ext


def test_module_file_parses_as_python_3_9_so_an_old_slicer_can_show_the_refusal():
    """Slicer 5.8 (Python 3.9) must be able to load the module file to show why it is unsupported; the library
    itself is imported only after the version gate."""
    ast.parse(MODULE_PY.read_text(), feature_version=(3, 9))


def test_module_clumsy_points_stay_fixed():
    """Entering the module does not reset the overlay opacity (connectGui's write is not a user's change); the
    in-process fine-tune is gone; Sample Data lists the X-ray with its geometry sidecar beside it."""
    text = MODULE_PY.read_text()
    assert "self._connectingGui = True" in text and "if not self._connectingGui:" in text
    assert "finetune" not in text.lower().replace("fine-tuned on", "")
    assert "uris=[SAMPLE_XRAY.as_uri(), sidecar.as_uri()]" in text and "loadFiles=[True, False]" in text
