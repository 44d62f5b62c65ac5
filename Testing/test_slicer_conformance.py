"""The modules call only what Slicer has: MRML/VTK names by introspecting slicer-core, the application side against
Testing/slicer_api/ (Slicer's source at a release). A fixture module with one deliberate mistake per category, and
one-word mutations of the real module files, prove the check fails when it should."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

import slicer_conformance as conformance
from slicer_module_stubs import ROOT, module_files

MODULES = module_files()
GLUE = sorted(p for p in ROOT.glob("*/*Lib/mrml.py"))
FIXTURE = Path(__file__).parent / "conformance_fixture" / "WrongModule" / "WrongModule.py"


def module_classes() -> dict[str, ast.ClassDef]:
    """Top-level classes of every module file: Registration's and Translation's widgets derive from XrayToDRR's."""
    return {c.name: c for m in MODULES for c in ast.parse(m.read_text()).body if isinstance(c, ast.ClassDef)}


def test_the_check_covers_the_three_modules_and_their_mrml_glue():
    assert [m.stem for m in MODULES] == ["XrayToDRR", "XrayToDRRRegistration", "XrayToDRRTranslation"]
    assert [g.parent.name for g in GLUE] == ["XrayToDRRLib", "XrayToDRRRegistrationLib", "XrayToDRRTranslationLib"]


def test_the_api_table_names_a_slicer_release_from_5_8_on_and_its_commits():
    table = conformance.slicer_table()
    major, minor = (int(n) for n in re.fullmatch(r"v(\d+)\.(\d+)\.\d+", table["release"]).groups())
    assert (major, minor) >= (5, 8)
    assert re.fullmatch(r"[0-9a-f]{40}", table["commit"]) and re.fullmatch(r"[0-9a-f]{40}", table["ctk_commit"])
    assert {"errorDisplay", "loadUI", "setSliceViewerLayers", "arrayFromVolume"} <= set(
        table["python"]["slicer.util"]["functions"])
    assert {"qMRMLNodeComboBox", "ctkSliderWidget", "ctkPathLineEdit"} <= set(table["designer_plugins"])
    assert "startupCompleted()" in conformance.widget_signals("qSlicerApplication")


@pytest.mark.parametrize("module", MODULES, ids=[m.stem for m in MODULES])
def test_module_file_and_its_ui_use_only_what_slicer_has(module):
    problems = conformance.check_module(module, GLUE, module_classes())
    assert not problems, "\n".join(map(str, problems))


@pytest.mark.parametrize("glue", GLUE, ids=[g.parent.name for g in GLUE])
def test_mrml_glue_uses_only_what_slicer_core_has(glue):
    problems = conformance.check_python(glue, glue=GLUE)
    assert not problems, "\n".join(map(str, problems))


def fixture_problems() -> list[conformance.Problem]:
    return conformance.check_module(FIXTURE, [], {})


def marked_mistakes() -> dict[int, str]:
    """Line -> category of every `# wrong: CATEGORY` line of the fixture module."""
    lines = FIXTURE.read_text().splitlines()
    return {n: m.group(1) for n, line in enumerate(lines, 1) if (m := re.search(r"# wrong: ([\w-]+)", line))}


UI_MISTAKES = {"ui-widget": ("ctkFancySlider",), "ui-property": ("noneEnabledd", "vtkMRMLLabelMapVolumeNod")}


@pytest.mark.parametrize("category", conformance.CATEGORIES)
def test_each_deliberate_mistake_of_the_fixture_is_caught(category):
    caught = [p for p in fixture_problems() if p.category == category]
    assert caught, f"the {category} mistake went unnoticed"
    if category in UI_MISTAKES:
        assert all(any(name in p.message for name in UI_MISTAKES[category]) for p in caught)
        assert all(any(name in p.message for p in caught) for name in UI_MISTAKES[category])
    else:
        lines = {n for n, c in marked_mistakes().items() if c == category}
        assert {int(p.where.split(":")[1]) for p in caught} == lines, [str(p) for p in caught]


def test_the_fixture_reports_nothing_but_its_deliberate_mistakes():
    marked = marked_mistakes()
    for problem in fixture_problems():
        if problem.where.startswith(FIXTURE.name):
            assert marked.get(int(problem.where.split(":")[1])) == problem.category, str(problem)
        else:
            assert problem.category in UI_MISTAKES, str(problem)
    assert set(marked.values()) | set(UI_MISTAKES) == set(conformance.CATEGORIES)


# One-word slips in the real files, each of which Slicer would only reveal at run time.
MUTATIONS = [
    ("XrayToDRR", "composite.SetForegroundOpacity(", "composite.SetForegroundOpacty(", "mrml-method"),
    ("XrayToDRR", "sddBox.setRange(", "sddBox.setRangee(", "qt-ctk"),
    ("XrayToDRR", '"timeout()"', '"timedOut()"', "signal"),
    ("XrayToDRR", "app.temporaryPath", "app.tempPath", "slicer-app"),
    ("XrayToDRR", "waitCursor=True", "busyCursor=True", "slicer-util"),
    ("XrayToDRR", "self.resourcePath(", "self.resourcesPath(", "scripted-module"),
    ("XrayToDRRRegistration", '"currentNodeChanged(vtkMRMLNode*)"', '"currentNodeChanged(vtkMRMLNode)"', "signal"),
    ("XrayToDRRRegistration", ".GetMatrixTransformToWorld(", ".GetMatrixTransformToWorlds(", "mrml-method"),
    ("XrayToDRRTranslation", "qt.QFileDialog.getExistingDirectory", "qt.QFileDialog.getDirectory", "qt-ctk"),
]


@pytest.mark.parametrize("module, text, slip, category", MUTATIONS, ids=[m[2].strip('."(') for m in MUTATIONS])
def test_a_one_word_slip_in_a_module_file_is_caught(tmp_path, module, text, slip, category):
    copy = tmp_path / module
    shutil.copytree(ROOT / module, copy, ignore=shutil.ignore_patterns("__pycache__", "*Lib"))
    source = (copy / f"{module}.py").read_text()
    assert text in source, f"{module}.py no longer contains {text}: update the mutation"
    (copy / f"{module}.py").write_text(source.replace(text, slip, 1))
    problems = conformance.check_module(copy / f"{module}.py", GLUE, module_classes())
    assert [p.category for p in problems] == [category], [str(p) for p in problems]
