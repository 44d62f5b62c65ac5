"""Load a Slicer module file (XrayToDRR/XrayToDRR.py, ...) under plain pytest.

slicer-core has MRML but not the application: no qt, ctk, slicer.ScriptedLoadableModule or
slicer.parameterNodeWrapper. These stand-ins are just enough for a module file to import, so its Logic - the
console API, which never touches widgets - runs on a real MRML scene and starts real child processes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
import unittest
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


def module_files() -> list[Path]:
    """Every Slicer module of the repository: <Name>/<Name>.py beside <Name>/Resources/UI/<Name>.ui."""
    return sorted(ui.parents[2] / f"{ui.stem}.py" for ui in ROOT.glob("*/Resources/UI/*.ui")
                  if ui.parents[2].name == ui.stem and (ui.parents[2] / f"{ui.stem}.py").is_file())


class _Anything(types.ModuleType):
    """A module whose every attribute is a MagicMock (qt, ctk)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = mock.MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


def _scripted_loadable_module() -> types.ModuleType:
    m = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

        def getParameterNode(self):
            import slicer

            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
            node.SetModuleName(type(self).__name__.removesuffix("Logic"))
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=0):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(m, cls.__name__, cls)
    m.__all__ = [c for c in vars(m) if c.startswith("Scripted")]
    return m


def _parameter_node_wrapper() -> types.ModuleType:
    m = types.ModuleType("slicer.parameterNodeWrapper")

    def parameterNodeWrapper(cls):
        def __init__(self, parameterNode):
            self.parameterNode = parameterNode

        cls.__init__ = __init__
        return cls

    class _Validator:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    m.parameterNodeWrapper = parameterNodeWrapper
    for name in ("WithinRange", "Choice", "Minimum", "Maximum", "Default", "NotNone", "Decimals", "SingleStep"):
        setattr(m, name, type(name, (_Validator,), {}))
    return m


@contextlib.contextmanager
def slicer_application_stand_ins():
    """sys.modules holds the stand-ins inside the block and what it held before after it."""
    import slicer

    stand_ins = {"qt": _Anything("qt"), "ctk": _Anything("ctk"),
                 "slicer.ScriptedLoadableModule": _scripted_loadable_module(),
                 "slicer.parameterNodeWrapper": _parameter_node_wrapper()}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    saved_attrs = {name: getattr(slicer, name.split(".")[1], None) for name in stand_ins if "." in name}
    sys.modules.update(stand_ins)
    for name, module in stand_ins.items():
        if "." in name:
            setattr(slicer, name.split(".")[1], module)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for attr, value in saved_attrs.items():
            if value is None:
                if hasattr(slicer, attr):
                    delattr(slicer, attr)
            else:
                setattr(slicer, attr, value)


def load_module_file(path: Path) -> types.ModuleType:
    """Import a module file with the stand-ins in place (its classes keep them after the block)."""
    with slicer_application_stand_ins():
        spec = importlib.util.spec_from_file_location(f"slicer_module_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module
