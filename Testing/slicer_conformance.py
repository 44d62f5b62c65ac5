"""Does a Slicer module call only what Slicer has? A static check (ast + introspection), no Slicer application.

MRML and VTK names are looked up in slicer-core (Slicer's own MRML build) and vtk; the application side (slicer.util,
ScriptedLoadableModule, parameterNodeWrapper, SampleData, slicer.app, qt/ctk/qMRML widgets, designer plugins) in
the tables of Testing/slicer_api/ (facts taken from Slicer's source at a release, see extract.py, and Qt 5.15's).
Each problem names its category, so a test can prove that each kind of mistake is caught.
"""

from __future__ import annotations

import ast
import json
import unittest
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import slicer
import SimpleITK
import vtk

API_DIR = Path(__file__).resolve().parent / "slicer_api"
SLICER_TABLE = API_DIR / "slicer-5.10.0.json"

CATEGORIES = ("mrml-class", "mrml-method", "slicer-util", "scripted-module", "parameter-wrapper", "sample-data",
              "slicer-app", "qt-ctk", "signal", "parameter-type", "widget-binding", "ui-widget", "ui-property")
# Calls that return a node of the class named by their string argument.
NODE_FACTORIES = {"AddNewNodeByClass", "CreateNodeByClass", "GetFirstNodeByClass", "GetNthNodeByClass",
                  "GetSingletonNode", "_add"}
SLICER_MODULES = {"util", "app", "mrmlScene", "modules", "ScriptedLoadableModule", "parameterNodeWrapper"}
# Parameters named like this hold a node of this class or of a subclass (the modules' naming convention).
PARAMETER_SUFFIXES = {"VolumeNode": "vtkMRMLVolumeNode", "volumeNode": "vtkMRMLVolumeNode",
                      "TransformNode": "vtkMRMLTransformNode", "poseNode": "vtkMRMLTransformNode"}
ALWAYS = {"connect", "disconnect", "setProperty", "property", "className", "__class__"}  # PythonQt, any QObject
DYNAMIC_UI_PROPERTIES = {"SlicerParameterName", "SlicerPackParameterName"}  # read by parameterNodeWrapper


@dataclass(frozen=True)
class Problem:
    category: str
    where: str
    message: str

    def __str__(self):
        return f"{self.where}: [{self.category}] {self.message}"


@lru_cache(maxsize=None)
def slicer_table() -> dict:
    return json.loads(SLICER_TABLE.read_text())


@lru_cache(maxsize=None)
def qt_table() -> dict:
    return json.loads((API_DIR / "qt5.json").read_text())["classes"]


# --- what a Qt / CTK / Slicer widget class offers -------------------------------------------------------------------
def widget_chain(name: str) -> list[dict] | None:
    """The class and its bases as table entries (Slicer/CTK headers, then Qt), or None when unknown."""
    chain, cpp, qt = [], slicer_table()["cpp_classes"], qt_table()
    while name:
        entry = cpp.get(name) or qt.get(name)
        if entry is None:
            return chain or None
        chain.append(entry)
        name = entry.get("base")
    return chain


def widget_members(name: str) -> set[str] | None:
    chain = widget_chain(name)
    if chain is None:
        return None
    out = set(ALWAYS)
    for entry in chain:
        for key in ("properties", "slots", "invokable", "members"):
            out |= set(entry.get(key, []))
        out |= {s.split("(")[0] for s in entry.get("signals", [])}
    return out


def widget_signals(name: str) -> set[str]:
    return {s for entry in widget_chain(name) or [] for s in entry.get("signals", [])}


def widget_properties(name: str) -> set[str]:
    return {p for entry in widget_chain(name) or [] for p in entry.get("properties", [])}


# --- MRML / VTK classes from slicer-core ----------------------------------------------------------------------------
def vtk_class(name: str):
    return getattr(slicer, name, None) if name.startswith(("vtkMRML", "vtkSlicer")) else getattr(vtk, name, None)


def returned_class(cls, method: str):
    """The class a VTK method returns, from its docstring ('M(self) -> vtkX'); None when not a VTK object."""
    doc = getattr(getattr(cls, method, None), "__doc__", None) or ""
    first = " ".join(doc.split("C++:")[0].split())
    name = first.rsplit("->", 1)[-1].strip() if "->" in first else ""
    return vtk_class(name) if name.startswith("vtk") else None


def _split_top_level(params: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in params:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in parts + [current] if p.strip()]


def vtk_overloads(cls, method: str) -> list[tuple[int, int]] | None:
    """(required, most) positional arguments of each Python signature its docstring lists; None when unknown."""
    doc = getattr(getattr(cls, method, None), "__doc__", None) or ""
    found = []
    for block in doc.split("C++:")[:-1]:
        head = " ".join(line.strip() for line in block.splitlines())
        start = head.rfind(f"{method}(")  # the signature just above this C++ line
        if start < 0:
            continue
        depth, end = 0, None
        for i in range(start + len(method), len(head)):
            depth += head[i] == "("
            depth -= head[i] == ")"
            if depth == 0:
                end = i
                break
        if end is None:
            continue
        params = [p for p in _split_top_level(head[start + len(method) + 1:end]) if p not in ("self", "/")]
        if any(p.startswith("*") for p in params):
            return None
        found.append((sum("=" not in p for p in params), len(params)))
    return found or None


def check_vtk_call(cls, call: ast.Call, where: str) -> list[Problem]:
    """A call's positional argument count fits one of the method's signatures (VTK takes no keywords)."""
    method = call.func.attr
    overloads = vtk_overloads(cls, method)
    if overloads is None or any(isinstance(a, ast.Starred) for a in call.args):
        return []
    n = len(call.args)
    if call.keywords:
        return [Problem("mrml-method", where, f"{cls.__name__}.{method} takes no keyword arguments")]
    if not any(low <= n <= high for low, high in overloads):
        counts = sorted({f"{low}" if low == high else f"{low}-{high}" for low, high in overloads})
        return [Problem("mrml-method", where, f"{cls.__name__}.{method} takes {' or '.join(counts)} arguments, "
                                              f"not {n}")]
    return []


@lru_cache(maxsize=None)
def vtk_universe() -> frozenset[str]:
    """Every member of every MRML/Slicer class in slicer-core, of the VTK classes they hand out, and of a SimpleITK
    image: a method of a receiver whose class the check cannot tell must at least exist somewhere here."""
    names = set(dir(SimpleITK.Image))
    for attr in dir(slicer):
        cls = getattr(slicer, attr, None)
        if attr.startswith("vtk") and isinstance(cls, type):
            names |= set(dir(cls))
    for base in ("vtkImageData", "vtkMatrix4x4", "vtkTable", "vtkPoints", "vtkTransform", "vtkDoubleArray",
                 "vtkStringArray", "vtkCollection"):
        names |= set(dir(getattr(vtk, base)))
    return frozenset(names)


# --- Python signatures from the table -------------------------------------------------------------------------------
def check_call(call: ast.Call, sig: dict, name: str, category: str, where) -> list[Problem]:
    """`where(node)` says where a node is: a wrong keyword is reported on its own line."""
    out = []
    if not sig["varkw"]:
        out += [Problem(category, where(k), f"{name}() has no keyword '{k.arg}' (it takes {', '.join(sig['params'])})")
                for k in call.keywords if k.arg is not None and k.arg not in sig["params"]]
    if not sig["varargs"] and not any(isinstance(a, ast.Starred) for a in call.args) and \
            len(call.args) > len(sig["params"]):
        out.append(Problem(category, where(call), f"{name}() takes at most {len(sig['params'])} positional arguments"))
    given = set(sig["params"][:len(call.args)]) | {k.arg for k in call.keywords}
    missing = [p for p in sig["params"][:sig["required"]] if p not in given]
    if missing and not any(isinstance(a, ast.Starred) for a in call.args) and not any(
            k.arg is None for k in call.keywords):
        out.append(Problem(category, where(call), f"{name}() misses required {', '.join(missing)}"))
    return out


def python_class(module: str, name: str) -> dict | None:
    return slicer_table()["python"][module]["classes"].get(name)


def python_class_members(module: str, name: str) -> dict[str, dict | None]:
    """Methods (with signatures) and attributes of a table class and its table bases; unittest's for TestCase."""
    out: dict[str, dict | None] = {}
    pending = [name]
    while pending:
        current = pending.pop()
        if current == "unittest.TestCase":
            out.update({n: None for n in dir(unittest.TestCase)})
            continue
        entry = python_class(module, current)
        if entry is None:
            continue
        out.update({a: None for a in entry["attributes"]})
        out.update(entry["methods"])
        pending += entry["bases"]
    return out


# --- the Python checker ---------------------------------------------------------------------------------------------
class Types:
    """What a name stands for: ('vtk', class, exact) | ('widget', class name) | ('scene',) | ('app',)."""

    def __init__(self, parent: "Types | None" = None):
        self.names: dict[str, tuple] = {}
        self.parent = parent

    def get(self, key: str):
        return self.names.get(key) or (self.parent.get(key) if self.parent else None)


class ModuleChecker(ast.NodeVisitor):
    def __init__(self, path: Path, ui: dict[str, str], classes: dict[str, ast.ClassDef], glue_returns: dict):
        self.path, self.ui, self.classes, self.glue_returns = path, ui, classes, glue_returns
        self.problems: list[Problem] = []
        self.other_modules: set[str] = set()  # aliases of imports that are not Slicer (sitk, np, ...)
        self.fields: dict[str, str] = {}  # parameter-node fields that hold nodes: name -> class
        self.types = Types()
        self.loop_strings: dict[str, list[str]] = {}
        self.current_class: ast.ClassDef | None = None
        # functions of the file that return another module file's module (Registration loads XrayToDRR's so)
        self.module_loaders: set[str] = set()

    def where(self, node) -> str:
        return f"{self.path.name}:{getattr(node, 'lineno', 0)}"

    def report(self, category, node, message):
        self.problems.append(Problem(category, self.where(node), message))

    # imports
    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.split(".")[0] not in ("slicer", "vtk", "qt", "ctk", "SampleData"):
                self.other_modules.add((alias.asname or alias.name).split(".")[0])

    def visit_ImportFrom(self, node):
        module = node.module or ""
        for alias in node.names:
            name = alias.name
            if module == "slicer" and name.startswith("vtk") and vtk_class(name) is None:
                self.report("mrml-class", node, f"slicer has no {name}")
            elif module == "slicer.util" and name not in self._util_names():
                self.report("slicer-util", node, f"slicer.util has no {name}")
            elif module == "slicer.ScriptedLoadableModule" and python_class(module, name) is None:
                self.report("scripted-module", node, f"slicer.ScriptedLoadableModule has no {name}")
            elif module == "slicer.parameterNodeWrapper" and name not in \
                    slicer_table()["parameterNodeWrapper"]["names"]:
                self.report("parameter-wrapper", node, f"slicer.parameterNodeWrapper has no {name}")
            elif module.split(".")[0] not in ("slicer", "vtk", "qt", "ctk", "SampleData", "__future__") \
                    and node.level == 0:
                self.other_modules.add(alias.asname or name)

    @staticmethod
    def _util_names() -> set[str]:
        util = slicer_table()["python"]["slicer.util"]
        return set(util["functions"]) | set(util["classes"])

    # scopes
    def visit_ClassDef(self, node):
        outer, self.current_class = self.current_class, node
        decorators = [ast.unparse(d) for d in node.decorator_list]
        if any(d.split(".")[-1] == "parameterNodeWrapper" for d in decorators):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    cls = annotation_node_class(stmt.annotation)
                    if cls:
                        self.fields[stmt.target.id] = cls
        saved, self.types = self.types, Types(self.types)
        for stmt in ast.walk(node):  # self.x = <typed> anywhere in the class: known in every method
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Attribute) \
                    and ast.unparse(stmt.targets[0].value) == "self":
                t = self.infer(stmt.value)
                if t:
                    self.types.names[f"self.{stmt.targets[0].attr}"] = t
        self.generic_visit(node)
        self.types, self.current_class = saved, outer

    def visit_FunctionDef(self, node):
        saved, self.types = self.types, Types(self.types)
        for arg in node.args.args + node.args.kwonlyargs:
            if arg.arg in ("scene", "mrmlScene"):
                self.types.names[arg.arg] = ("scene",)
            suffix = next((s for s in PARAMETER_SUFFIXES if arg.arg.endswith(s)), None)
            if suffix:
                self.types.names[arg.arg] = ("vtk", vtk_class(PARAMETER_SUFFIXES[suffix]), False)
        self.generic_visit(node)
        self.types = saved

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node):
        self.generic_visit(node)
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Tuple) and isinstance(node.value, ast.Tuple) \
                and len(node.targets[0].elts) == len(node.value.elts):
            for target, value in zip(node.targets[0].elts, node.value.elts):
                self.visit_Assign(ast.Assign(targets=[target], value=value, lineno=node.lineno))
            return
        t = self.infer(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name):
                if t:
                    self.types.names[target.id] = t
                else:
                    self.types.names.pop(target.id, None)
            elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute) and \
                    ast.unparse(target.value) == "self.parent":
                self.check_parent(target)

    def visit_For(self, node):
        if isinstance(node.target, ast.Name) and isinstance(node.iter, (ast.Tuple, ast.List)) and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.iter.elts):
            self.loop_strings[node.target.id] = [e.value for e in node.iter.elts]
        self.generic_visit(node)

    # type inference
    def infer(self, expr):
        if isinstance(expr, ast.Name):
            return self.types.get(expr.id)
        text = ast.unparse(expr)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in self.module_loaders:
            return ("other",)
        if text in ("slicer.mrmlScene", "self.scene", "self.mrmlScene"):
            return ("scene",)
        if text in ("slicer.app", "getattr(slicer, 'app', None)", "getattr(slicer, 'app')"):
            return ("widget", "qSlicerApplication")
        if isinstance(expr, ast.Attribute):
            if ast.unparse(expr.value) == "self.ui":
                return ("widget", self.ui[expr.attr]) if expr.attr in self.ui else None
            if expr.attr in self.fields and ast.unparse(expr.value) in ("p", "self._parameterNode", "parameterNode"):
                return ("vtk", vtk_class(self.fields[expr.attr]), True)
            return self.types.get(text)
        if not isinstance(expr, ast.Call):
            return None
        func = expr.func
        ftext = ast.unparse(func)
        if ftext == "getattr" and len(expr.args) >= 2 and ast.unparse(expr.args[0]) == "self.ui" and \
                isinstance(expr.args[1], ast.Name) and expr.args[1].id in self.loop_strings:
            classes = {self.ui.get(n) for n in self.loop_strings[expr.args[1].id]}
            return ("widget", classes.pop()) if len(classes) == 1 and None not in classes else None
        if ftext == "slicer.util.loadUI" and self.ui:
            return ("widget", next(iter(self.ui.values())))  # the .ui's top widget
        if ftext in ("slicer.app.applicationLogic", "app.applicationLogic"):
            return ("vtk", slicer.vtkSlicerApplicationLogic, True)
        if ftext.startswith(("slicer.vtk", "vtk.vtk")):
            cls = vtk_class(ftext.split(".")[1])
            return ("vtk", cls, True) if cls else None
        if ftext.startswith(("qt.", "ctk.")) and ftext.count(".") == 1:
            return ("widget", ftext.split(".")[1])
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in NODE_FACTORIES:
            for arg in expr.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("vtk"):
                    cls = vtk_class(arg.value)
                    return ("vtk", cls, True) if cls else None
        if name in self.glue_returns and (isinstance(func, ast.Name) or ast.unparse(func.value) == "mrml"):
            cls = vtk_class(self.glue_returns[name])
            return ("vtk", cls, True) if cls else None
        if isinstance(func, ast.Attribute):
            receiver = self.infer(func.value)
            if receiver and receiver[0] in ("vtk", "scene"):
                owner = receiver[1] if receiver[0] == "vtk" else slicer.vtkMRMLScene
                cls = returned_class(owner, func.attr)
                return ("vtk", cls, False) if cls else None
        return None

    # checks
    def visit_Attribute(self, node):
        self.generic_visit(node)
        text = ast.unparse(node)
        parts = text.split(".")
        if parts[0] == "slicer" and len(parts) >= 2 and isinstance(node.value, ast.Name):
            self.check_slicer_name(node, parts[1])
        elif parts[0] == "slicer" and len(parts) >= 3 and ast.unparse(node.value).count(".") == 1 and \
                parts[1].startswith("vtk"):
            cls = vtk_class(parts[1])
            if cls is not None and not hasattr(cls, node.attr):
                self.report("mrml-method", node, f"{parts[1]} has no {node.attr}")
        elif parts[0] in ("qt", "ctk") and isinstance(node.value, ast.Name):
            if widget_chain(node.attr) is None:
                self.report("qt-ctk", node, f"{parts[0]}.{node.attr} is not a known class")
        elif parts[0] in ("qt", "ctk") and len(parts) == 3 and isinstance(node.value, ast.Attribute):
            members = widget_members(parts[1])
            if members is not None and node.attr not in members:
                self.report("qt-ctk", node, f"{parts[1]} has no {node.attr}")
        elif text.startswith("SampleData.SampleDataLogic.") and len(parts) == 3:
            if node.attr not in python_class_members("SampleData", "SampleDataLogic"):
                self.report("sample-data", node, f"SampleDataLogic has no {node.attr}")
        elif parts[0] == "self" and len(parts) == 3 and parts[1] == "parent" and not isinstance(node.ctx, ast.Store):
            self.check_parent(node)
        elif parts[0] == "self" and len(parts) == 2:
            self.check_self_member(node)
        if not (parts[0] == "slicer" and len(parts) == 2) and (
                isinstance(node.ctx, ast.Load) or (self.infer(node.value) or ("",))[0] == "widget"):
            self.check_member(node)  # a widget's property is set by name too

    def check_slicer_name(self, node, name):
        if name in SLICER_MODULES:
            return
        if name.startswith("vtk"):
            if vtk_class(name) is None:
                self.report("mrml-class", node, f"slicer-core has no slicer.{name}")
        elif name not in slicer_table()["cpp_classes"]:
            self.report("slicer-util", node, f"slicer has no {name}")

    def check_parent(self, node):
        """`self.parent.X`: the module's qSlicerScriptedLoadableModule, or the widget's module widget."""
        bases = [ast.unparse(b) for b in self.current_class.bases] if self.current_class else []
        if "ScriptedLoadableModule" in bases:
            owner = "qSlicerScriptedLoadableModule"
        elif any(b.endswith("ScriptedLoadableModuleWidget") for b in bases):
            owner = "qSlicerScriptedLoadableModuleWidget"
        else:
            return
        if node.attr not in widget_members(owner):
            self.report("scripted-module", node, f"{owner} (self.parent) has no {node.attr}")

    def check_self_member(self, node):
        """`self.X` in a class deriving from a ScriptedLoadableModule class: defined here or by Slicer's base."""
        if self.current_class is None or isinstance(node.ctx, ast.Store):
            return
        defined, slicer_bases = set(), []
        pending = [self.current_class]
        while pending:
            cls = pending.pop()
            defined |= {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            defined |= {t.id for n in cls.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                        for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
            defined |= {t.attr for n in ast.walk(cls) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
                        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                        if isinstance(t, ast.Attribute) and ast.unparse(t.value) == "self"}
            for base in (ast.unparse(b).split(".")[-1] for b in cls.bases):
                if base in self.classes:
                    pending.append(self.classes[base])
                elif base.startswith("ScriptedLoadableModule") or base == "VTKObservationMixin":
                    slicer_bases.append(base)
        if not slicer_bases or node.attr in defined:
            return
        offered = {}
        for base in slicer_bases:
            module = "slicer.util" if base == "VTKObservationMixin" else "slicer.ScriptedLoadableModule"
            offered.update(python_class_members(module, base))
        if node.attr not in offered and not node.attr.startswith("__"):
            self.report("scripted-module", node, f"self.{node.attr}: neither {self.current_class.name} nor "
                                                 f"{', '.join(slicer_bases)} define it")

    def check_member(self, node):
        """`x.M` where x's class is known (exactly, or as a base class VTK returns), else M must exist somewhere."""
        receiver = self.infer(node.value)
        if receiver is None:
            root = ast.unparse(node.value).split(".")[0].split("(")[0]
            if self.types.get(root) == ("other",):
                return
            if node.attr[:1].isupper() and not node.attr.isupper() and node.attr[1:2].islower() and \
                    root not in self.other_modules and root not in ("qt", "ctk", "slicer", "vtk", "SampleData") \
                    and node.attr not in vtk_universe() and not self._defined_in_file(node.attr):
                self.report("mrml-method", node, f"no MRML/VTK class has {node.attr} ({ast.unparse(node)})")
            return
        kind = receiver[0]
        if kind == "scene" and not hasattr(slicer.vtkMRMLScene, node.attr):
            self.report("mrml-method", node, f"vtkMRMLScene has no {node.attr}")
        elif kind == "vtk":
            cls, exact = receiver[1], receiver[2]
            if not hasattr(cls, node.attr) and (exact or not any(
                    hasattr(sub, node.attr) for sub in subclasses(cls))):
                self.report("mrml-method", node, f"{cls.__name__} has no {node.attr}")
        elif kind == "widget":
            members = widget_members(receiver[1])
            if members is None:
                self.report("qt-ctk", node, f"{receiver[1]} is not a known class")
            elif node.attr not in members:
                category = "slicer-app" if receiver[1] == "qSlicerApplication" else "qt-ctk"
                self.report(category, node, f"{receiver[1]} has no {node.attr} that Python can reach")

    def exact_vtk_class(self, expr):
        """The MRML/VTK class of an expression when known exactly (not a base class a method returns)."""
        text = ast.unparse(expr)
        if text.startswith(("slicer.vtk", "vtk.vtk")) and text.count(".") == 1:
            return vtk_class(text.split(".")[1])  # a static method called on the class
        t = self.infer(expr)
        if t and t[0] == "scene":
            return slicer.vtkMRMLScene
        return t[1] if t and t[0] == "vtk" and t[2] else None

    def _defined_in_file(self, name: str) -> bool:
        return any(name in {n.name for n in ast.walk(c) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
                   or name in {t.id for n in c.body if isinstance(n, ast.Assign) for t in n.targets
                               if isinstance(t, ast.Name)} for c in self.classes.values())

    def visit_Call(self, node):
        self.generic_visit(node)
        func = ast.unparse(node.func)
        if isinstance(node.func, ast.Attribute):
            owner = self.exact_vtk_class(node.func.value)
            if owner is not None and hasattr(owner, node.func.attr):
                self.problems += check_vtk_call(owner, node, self.where(node))
        if func.startswith("slicer.util.") and func.count(".") == 2:
            util = slicer_table()["python"]["slicer.util"]
            name = func.split(".")[2]
            if name in util["functions"]:
                self.problems += check_call(node, util["functions"][name], func, "slicer-util", self.where)
            elif name not in util["classes"]:
                self.report("slicer-util", node, f"slicer.util has no {name}")
        elif func.startswith("SampleData.SampleDataLogic.") and func.count(".") == 2:
            sig = python_class_members("SampleData", "SampleDataLogic").get(func.split(".")[2])
            if sig:
                self.problems += check_call(node, sig, func, "sample-data", self.where)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "connect" and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            self.check_signal(node, node.func.value, node.args[0].value)

    def check_signal(self, node, sender, signal_name):
        receiver = self.infer(sender)
        if receiver is None or receiver[0] != "widget":
            self.report("signal", node, f"cannot tell the class of {ast.unparse(sender)} to check '{signal_name}'")
        elif signal_name.replace(" ", "") not in widget_signals(receiver[1]):
            self.report("signal", node, f"{receiver[1]} has no signal {signal_name}")


@lru_cache(maxsize=None)
def _all_vtk_classes() -> tuple:
    return tuple(getattr(slicer, n) for n in dir(slicer) if n.startswith("vtk") and isinstance(getattr(slicer, n), type))


def subclasses(cls) -> list:
    return [c for c in _all_vtk_classes() if issubclass(c, cls)]


def annotation_node_class(annotation: ast.AST) -> str | None:
    """The MRML class a parameter-node field holds (not for unions: their members differ)."""
    text = ast.unparse(annotation)
    if text.startswith("Annotated["):
        return annotation_node_class(annotation.slice.elts[0])
    name = text.split(".")[-1].strip("'\"")
    return name if name.startswith("vtkMRML") else None


def glue_returns(glue: list[Path]) -> dict[str, str]:
    """Functions of the MRML glue whose return annotation names a node class: function -> class."""
    out = {}
    for path in glue:
        for fn in ast.parse(path.read_text()).body:
            if isinstance(fn, ast.FunctionDef) and fn.returns is not None:
                name = ast.unparse(fn.returns).strip("'\"").split(".")[-1]
                if name.startswith("vtkMRML"):
                    out[fn.name] = name
    return out


def check_python(path: Path, ui: dict[str, str] | None = None, classes: dict | None = None,
                 glue: list[Path] = ()) -> list[Problem]:
    tree = ast.parse(path.read_text())
    own = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
    checker = ModuleChecker(path, ui or {}, {**(classes or {}), **own}, glue_returns(list(glue) + [path]))
    checker.module_loaders = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)
                              and any(isinstance(n, ast.Call) and "module_from_spec" in ast.unparse(n.func)
                                      for n in ast.walk(f))}
    checker.visit(tree)
    return checker.problems


# --- parameter node and .ui -----------------------------------------------------------------------------------------
def _field_types(annotation: ast.AST) -> list[str]:
    """The plain types a field annotation allows: Annotated[T, ...] -> T; Union/Optional/| -> each; X[...] -> X."""
    if isinstance(annotation, ast.BinOp):
        return _field_types(annotation.left) + _field_types(annotation.right)
    if isinstance(annotation, ast.Subscript):
        outer = ast.unparse(annotation.value).split(".")[-1]
        items = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        if outer == "Annotated":
            return _field_types(items[0])
        if outer in ("Union", "Optional"):
            return [t for i in items for t in _field_types(i)] + (["None"] if outer == "Optional" else [])
        return [outer.lower() if outer in ("List", "Tuple", "Dict") else outer]
    text = ast.unparse(annotation).strip("'\"").split(".")[-1]
    return ["None" if text == "None" else text]


def _kind(type_name: str, enums: set[str]) -> str:
    """A field's type as the wrapper's tables name it: node classes -> vtkMRMLNode, Enum subclasses -> Enum."""
    cls = vtk_class(type_name) if type_name.startswith("vtkMRML") else None
    if cls is not None and issubclass(cls, slicer.vtkMRMLNode):
        return "vtkMRMLNode"
    return "Enum" if type_name in enums else type_name


def parameter_fields(path: Path) -> dict[str, tuple[ast.AST, int]]:
    tree = ast.parse(path.read_text())
    fields = {}
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        if any(ast.unparse(d).split(".")[-1] == "parameterNodeWrapper" for d in cls.decorator_list):
            fields.update({s.target.id: (s.annotation, s.lineno) for s in cls.body
                           if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)})
    return fields


def check_parameter_node(path: Path, ui_path: Path) -> list[Problem]:
    tree = ast.parse(path.read_text())
    enums = {c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
             and any(ast.unparse(b).split(".")[-1] in ("Enum", "IntEnum", "StrEnum") for b in c.bases)}
    wrapper = slicer_table()["parameterNodeWrapper"]
    serializable = set(wrapper["serializable"])
    bound = ui_bindings(ui_path)
    problems = []
    for field, (annotation, line) in parameter_fields(path).items():
        where = f"{path.name}:{line}"
        kinds = [_kind(t, enums) for t in _field_types(annotation)]
        bad = [k for k in kinds if k not in serializable and k.lower() not in serializable]
        if bad:
            problems.append(Problem("parameter-type", where, f"{field}: parameterNodeWrapper cannot serialise "
                                                             f"{', '.join(bad)}"))
            continue
        if field not in bound:
            continue
        widget, cls = bound[field]
        value_kinds = {k for k in kinds if k != "None"}
        if not any(cls in c["widgets"] and value_kinds <= set(c["types"]) for c in wrapper["connectors"]):
            problems.append(Problem("widget-binding", where, f"{field} ({ast.unparse(annotation)}) is bound to "
                                                             f"{widget}, a {cls}: no GUI connector binds that"))
        held = [vtk_class(t) for t in _field_types(annotation) if t.startswith("vtkMRML")]
        offered = [vtk_class(t) for t in node_types(ui_path).get(widget, [])]
        wrong = [c.__name__ for c in offered if c is not None and not any(issubclass(c, h) for h in held if h)]
        if wrong:
            problems.append(Problem("widget-binding", where, f"{widget} offers {', '.join(wrong)}, which {field} "
                                                             f"({ast.unparse(annotation)}) cannot hold"))
    return problems


def node_types(ui_path: Path) -> dict[str, list[str]]:
    """The nodeTypes each node selector of a .ui offers: widget name -> class names."""
    return {w.get("name"): [s.text for p in w.findall("property") if p.get("name") == "nodeTypes"
                            for s in p.iter("string")]
            for w in ET.parse(ui_path).getroot().iter("widget") if w.get("class") == "qMRMLNodeComboBox"}


def ui_bindings(ui_path: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for w in ET.parse(ui_path).getroot().iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[prop.findtext("string")] = (w.get("name"), w.get("class"))
    return out


def check_ui(ui_path: Path) -> list[Problem]:
    """Every class is Qt's or has a Slicer/CTK designer plugin; every property it sets exists on that class; every
    connection joins a signal of its sender to a slot of its receiver."""
    root = ET.parse(ui_path).getroot()
    plugins, qt = set(slicer_table()["designer_plugins"]), qt_table()
    problems, classes = [], {}
    for w in root.iter("widget"):
        cls, name = w.get("class"), w.get("name")
        classes[name] = cls
        where = f"{ui_path.name}:{name}"
        if cls not in qt and cls not in plugins:
            problems.append(Problem("ui-widget", where, f"{cls} is not a Qt widget nor one of Slicer's designer "
                                                        f"plugins"))
            continue
        allowed = widget_properties(cls) | DYNAMIC_UI_PROPERTIES
        for prop in w.findall("property"):
            if prop.get("name") not in allowed:
                problems.append(Problem("ui-property", where, f"{cls} has no property {prop.get('name')}"))
    for name, offered in node_types(ui_path).items():
        problems += [Problem("ui-property", f"{ui_path.name}:{name}", f"nodeTypes names {c}, not an MRML class")
                     for c in offered if vtk_class(c) is None or not issubclass(vtk_class(c), slicer.vtkMRMLNode)]
    for declared in root.iter("customwidget"):
        cls = declared.findtext("class")
        if cls not in plugins:
            problems.append(Problem("ui-widget", f"{ui_path.name}:customwidgets", f"{cls} has no designer plugin"))
    for c in root.iter("connection"):
        sender, receiver = classes.get(c.findtext("sender")), classes.get(c.findtext("receiver"))
        signal, slot = c.findtext("signal"), c.findtext("slot")
        where = f"{ui_path.name}:connection {c.findtext('sender')}->{c.findtext('receiver')}"
        if sender and signal not in widget_signals(sender):
            problems.append(Problem("signal", where, f"{sender} has no signal {signal}"))
        if receiver and slot.split("(")[0] not in widget_members(receiver) - ALWAYS:
            problems.append(Problem("signal", where, f"{receiver} has no slot {slot}"))
    return problems


def check_module(module: Path, glue: list[Path], classes: dict[str, ast.ClassDef]) -> list[Problem]:
    """A module file (with its .ui) and the problems of everything it uses."""
    ui_path = module.parent / "Resources" / "UI" / f"{module.stem}.ui"
    ui = {w.get("name"): w.get("class") for w in ET.parse(ui_path).getroot().iter("widget")}
    return (check_python(module, ui, classes, glue) + check_parameter_node(module, ui_path) + check_ui(ui_path))

