"""Static checks of the Slicer modules (no Slicer needed), generic over every module of the repository: what a
module file uses of its .ui exists there, parameter-node fields and widgets are bound one to one with compatible
widget types, every MRML widget gets the scene, every Lib file is packaged by CMake, and only the module files and
mrml.py import Slicer (engine code stays Qt-free)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from slicer_module_stubs import ROOT, module_files

MODULES = module_files()
LIBS = sorted(p for p in ROOT.glob("*/*Lib") if p.is_dir() and p.name == f"{p.parent.name}Lib")
SLICER_ONLY = {"qt", "ctk", "slicer"}
MRML_ALLOWED = {"slicer", "vtk", "numpy", "SimpleITK"}


def ids(paths):
    return [p.stem if p.suffix else p.name for p in paths]


def ui_tree(module: Path) -> ET.Element:
    return ET.parse(module.parent / "Resources" / "UI" / f"{module.stem}.ui").getroot()


def ui_widgets(module: Path) -> dict[str, str]:
    """name -> class of every widget in the module's .ui."""
    return {w.get("name"): w.get("class") for w in ui_tree(module).iter("widget")}


def ui_bindings(module: Path) -> dict[str, tuple[str, str]]:
    """SlicerParameterName -> (widget name, widget class)."""
    out = {}
    for w in ui_tree(module).iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.findtext("string")
                assert name not in out, f"parameter {name} is bound to two widgets"
                out[name] = (w.get("name"), w.get("class"))
    return out


def parameter_fields(module: Path) -> dict[str, str]:
    """Fields of every @parameterNodeWrapper class: name -> annotation source text."""
    tree = ast.parse(module.read_text())
    fields = {}
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        decorators = [ast.unparse(d) for d in cls.decorator_list]
        if any(d.split(".")[-1].startswith("parameterNodeWrapper") for d in decorators):
            for stmt in cls.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    fields[stmt.target.id] = ast.unparse(stmt.annotation)
    return fields


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file (anywhere in it, lazy imports included)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def cmake_tokens(path: Path) -> set[str]:
    text = re.sub(r"#[^\n]*", "", path.read_text())
    return set(re.findall(r"[\w${}./-]+", text))


def test_the_checks_see_the_xraytodrr_module_and_every_lib():
    assert "XrayToDRR" in [m.stem for m in MODULES]
    assert {"XrayToDRRLib", "XrayToDRRRegistrationLib", "XrayToDRRTranslationLib"} <= {lib.name for lib in LIBS}


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_module_file_parses_and_defines_module_widget_logic_and_test(module):
    tree = ast.parse(module.read_text())
    classes = {c.name: [ast.unparse(b) for b in c.bases] for c in tree.body if isinstance(c, ast.ClassDef)}
    name = module.stem
    expected = {name: "ScriptedLoadableModule", f"{name}Widget": "ScriptedLoadableModuleWidget",
                f"{name}Logic": "ScriptedLoadableModuleLogic", f"{name}Test": "ScriptedLoadableModuleTest"}
    for cls, base in expected.items():
        assert cls in classes, f"{module.name} lacks class {cls}"
        assert base in classes[cls], f"{cls} should derive from {base}"


def ui_names(source: str) -> set[str]:
    return set(re.findall(r"\bself\.ui\.(\w+)", source))


def module_classes() -> dict[str, ast.ClassDef]:
    """Every top-level class of every module file, by name."""
    return {c.name: c for m in MODULES for c in ast.parse(m.read_text()).body if isinstance(c, ast.ClassDef)}


def ui_names_used(module: Path) -> set[str]:
    """self.ui names a module's panel uses: in its own file and in the module-file classes its widget derives from
    (XrayToDRR's TaskRunnerMixin runs against the .ui of every module whose widget uses it)."""
    classes = module_classes()
    used = ui_names(module.read_text())
    for base in classes[f"{module.stem}Widget"].bases:
        shared = classes.get(ast.unparse(base).split(".")[-1])
        if shared is not None:
            used |= ui_names(ast.unparse(shared))
    return used


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_every_ui_name_the_module_uses_exists_in_its_ui(module):
    used = ui_names_used(module)
    missing = used - set(ui_widgets(module))
    assert used and not missing, f"{module.name} uses self.ui.{sorted(missing)} absent from its .ui"


def test_the_ui_check_covers_the_shared_task_runner_in_every_module():
    runner = ui_names(ast.unparse(module_classes()["TaskRunnerMixin"]))
    assert {"cancelButton", "progressBar", "statusLabel", "logTextEdit"} <= runner
    for module in MODULES:
        assert runner <= ui_names_used(module), f"{module.stem}Widget does not run its steps with TaskRunnerMixin"


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_the_logic_never_touches_widgets(module):
    tree = ast.parse(module.read_text())
    logic = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == f"{module.stem}Logic")
    source = ast.unparse(logic)
    assert "self.ui" not in source and not re.search(r"\b(qt|ctk)\.", source)


# Which widget classes the parameter node wrapper can bind to which field types (slicer.parameterNodeWrapper).
CONNECTORS = [
    (r"vtkMRML", {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"}),
    (r"\b(pathlib\.)?\w*Path\b", {"ctkPathLineEdit", "ctkDirectoryButton"}),
    (r"\bbool\b", {"QCheckBox", "QPushButton"}),
    (r"\bfloat\b", {"QDoubleSpinBox", "ctkSliderWidget", "QComboBox"}),
    (r"\bint\b", {"QSpinBox", "QSlider", "QComboBox"}),
    (r"\bstr\b", {"QLineEdit", "QTextEdit", "QComboBox"}),
]


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_parameter_node_fields_and_widgets_are_bound_one_to_one(module):
    fields, bindings = parameter_fields(module), ui_bindings(module)
    assert fields, f"{module.name} has no @parameterNodeWrapper class"
    assert not set(fields) - set(bindings), f"fields without a widget: {sorted(set(fields) - set(bindings))}"
    assert not set(bindings) - set(fields), f"widgets bound to no field: {sorted(set(bindings) - set(fields))}"
    for field, annotation in fields.items():
        widget, cls = bindings[field]
        allowed = next((classes for pattern, classes in CONNECTORS if re.search(pattern, annotation)), None)
        assert allowed is not None, f"{field}: {annotation} has no known widget connector"
        assert cls in allowed, f"{field}: {annotation} cannot bind to {widget} ({cls})"
        if cls == "QComboBox":
            assert "Choice(" in annotation or "Enum" in annotation, f"{field}: a QComboBox needs Choice([...])"
        if cls in ("ctkSliderWidget", "QSlider"):
            assert "WithinRange(" in annotation, f"{field}: a slider needs WithinRange(lo, hi)"


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_ui_declares_its_custom_widgets_and_gives_every_mrml_widget_the_scene(module):
    root = ui_tree(module)
    top = root.find("widget")
    assert root.findtext("class") == module.stem == top.get("name") and top.get("class") == "qMRMLWidget"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if c.startswith(("ctk", "qMRML", "qSlicer"))} <= declared
    wired = {c.findtext("receiver") for c in root.iter("connection")
             if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)" and c.findtext("sender") == module.stem}
    mrml = {w.get("name") for w in root.iter("widget") if w.get("class", "").startswith("qMRML")} - {module.stem}
    assert mrml <= wired, f"MRML widgets without the scene: {sorted(mrml - wired)}"


@pytest.mark.parametrize("lib", LIBS, ids=ids(LIBS))
def test_engine_files_stay_qt_free_and_only_mrml_imports_slicer(lib):
    stdlib = set(sys.stdlib_module_names)
    for path in sorted(lib.rglob("*.py")):
        roots = imported_roots(path)
        if path.name == "mrml.py":
            outside = roots - stdlib - MRML_ALLOWED - {"__future__"} - {lib.name, "XrayToDRRLib"}
            assert not outside and not roots & {"qt", "ctk"}, f"{path.relative_to(ROOT)} imports {sorted(outside)}"
        else:
            assert not roots & SLICER_ONLY, f"{path.relative_to(ROOT)} imports {sorted(roots & SLICER_ONLY)}"


@pytest.mark.parametrize("lib", LIBS, ids=ids(LIBS))
def test_every_lib_file_and_resource_is_listed_in_its_module_cmake(lib):
    cmake = lib.parent / "CMakeLists.txt"
    if not cmake.exists():
        pytest.skip(f"{lib.parent.name} has no CMakeLists.txt yet")
    tokens = cmake_tokens(cmake)
    files = {p.relative_to(lib.parent).as_posix() for p in lib.rglob("*.py")}
    assert not files - tokens, f"{cmake.relative_to(ROOT)} does not list {sorted(files - tokens)}"
    listed = {t for t in tokens if t.endswith((".py", ".ui", ".png", ".txt", ".json")) and "$" not in t
              and t != "CMakeLists.txt"}
    listed |= {t.replace("${MODULE_NAME}", lib.parent.name) for t in tokens if "${MODULE_NAME}" in t and "." in t}
    stale = [t for t in listed if not (lib.parent / t).exists()]
    assert not stale, f"{cmake.relative_to(ROOT)} lists missing files {stale}"
    assert f"{lib.parent.name}.py" in {t.replace("${MODULE_NAME}", lib.parent.name) for t in tokens}


def test_the_extension_builds_every_module_that_has_a_cmake_file():
    top = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS", "find_package(Slicer",
                "include(${Slicer_USE_FILE})"):
        assert key in top
    for cmake in ROOT.glob("*/CMakeLists.txt"):
        assert f"add_subdirectory({cmake.parent.name})" in top, f"{cmake.parent.name} is not built"
    assert (ROOT / "Resources" / "Icons" / "XrayToDRR.png").is_file()
    for module in MODULES:
        assert (module.parent / "Resources" / "Icons" / f"{module.stem}.png").is_file()


def test_slicer_requirements_cover_the_engine_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda r: re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower()  # noqa: E731
    wanted = {name(r) for r in project["dependencies"]}
    lines = (ROOT / "XrayToDRR" / "Resources" / "requirements.txt").read_text().splitlines()
    listed = {name(line.split("#")[0]) for line in lines if line.split("#")[0].strip()}
    assert wanted <= listed, f"requirements.txt lacks {sorted(wanted - listed)}"
