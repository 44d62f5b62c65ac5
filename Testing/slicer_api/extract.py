"""Write the table of Slicer's application-side API (slicer-<release>.json) from Slicer's and CTK's git history.

    python Testing/slicer_api/extract.py SLICER_GIT_DIR CTK_GIT_DIR [--release v5.10.0]

Reads files at the release tag (Slicer) and at the CTK commit that release pins (SuperBuild/External_CTK.cmake),
with `git show`, and records facts only: names, parameter names, signal signatures, properties, base classes,
designer plugins, which types the parameter node wrapper serialises and which widgets its GUI connectors bind.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent

PYTHON_MODULES = {
    "slicer.util": "Base/Python/slicer/util.py",
    "slicer.ScriptedLoadableModule": "Base/Python/slicer/ScriptedLoadableModule.py",
    "SampleData": "Modules/Scripted/SampleData/SampleData.py",
}
WRAPPER_PACKAGE = "Base/Python/slicer/parameterNodeWrapper"
# C++ classes Python reaches through PythonQt: slicer.app, the module's `parent`, and the widgets the .ui files use.
CPP_CLASSES = ["qSlicerApplication", "qSlicerScriptedLoadableModule", "qSlicerScriptedLoadableModuleWidget"]


def git_show(git_dir: str, rev: str, path: str) -> str:
    return subprocess.run(["git", "-C", git_dir, "show", f"{rev}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def git_files(git_dir: str, rev: str) -> list[str]:
    out = subprocess.run(["git", "-C", git_dir, "ls-tree", "-r", "--name-only", rev], check=True,
                         capture_output=True, text=True).stdout
    return out.splitlines()


# --- Python sources -------------------------------------------------------------------------------------------------
def signature(fn: ast.FunctionDef) -> dict:
    a = fn.args
    positional = [p.arg for p in a.posonlyargs + a.args]
    if positional and positional[0] in ("self", "cls") and not any(
            isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list):
        positional = positional[1:]
    return {"params": positional + [p.arg for p in a.kwonlyargs],
            "required": len(positional) - len(a.defaults) + sum(d is None for d in a.kw_defaults),
            "varargs": a.vararg is not None, "varkw": a.kwarg is not None}


def python_module(source: str) -> dict:
    """Public functions and classes (methods, attributes set on self, bases) at module level."""
    tree = ast.parse(source)
    functions, classes = {}, {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("__"):
            functions[node.name] = signature(node)
        elif isinstance(node, ast.ClassDef):
            methods = {m.name: signature(m) for m in node.body if isinstance(m, ast.FunctionDef)}
            attributes = sorted({t.attr for m in ast.walk(node) if isinstance(m, (ast.Assign, ast.AnnAssign))
                                 for t in (m.targets if isinstance(m, ast.Assign) else [m.target])
                                 if isinstance(t, ast.Attribute) and ast.unparse(t.value) == "self"}
                                | {t.id for m in node.body if isinstance(m, ast.Assign) for t in m.targets
                                   if isinstance(t, ast.Name)})
            classes[node.name] = {"bases": [ast.unparse(b) for b in node.bases], "methods": methods,
                                  "attributes": attributes}
    return {"functions": functions, "classes": classes}


def exported_names(source: str) -> list[str]:
    """What `from module import *` gives: __all__ when the module sets it, else its public top-level names."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return sorted(ast.literal_eval(node.value))
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    return sorted(n for n in names if not n.startswith("_"))


def _type_names(node: ast.AST) -> list[str]:
    """Names in a comparison's right side: `int`, `(float, int)`, `pathlib.Path`, `qt.QColor` -> short names."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [ast.unparse(i).split(".")[-1] for i in items]


def connectors(source: str) -> list[dict]:
    """Each GuiConnector's canRepresent: the widget classes (type(widget) ...) and value types it accepts."""
    out = []
    for cls in (n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)):
        method = next((m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == "canRepresent"), None)
        if method is None or not any(isinstance(n, ast.Return) for n in ast.walk(method)):
            continue
        widgets, types = [], []
        for node in ast.walk(method):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Call):
                called = ast.unparse(node.left.func)
                target = widgets if called == "type" else types if called == "unannotatedType" else None
                if target is not None:
                    for comparator in node.comparators:
                        target.extend(_type_names(comparator))
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "issubclass":
                types.append(ast.unparse(node.args[1]).split(".")[-1])
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "isNodeOrUnionOfNodes":
                types.append("vtkMRMLNode")
        if widgets:
            out.append({"connector": cls.name, "widgets": sorted(set(widgets)), "types": sorted(set(types))})
    return out


def serializable(source: str) -> list[str]:
    """Each Serializer's canSerialize: the types (or type origins: list, Union...) it accepts."""
    found = set()
    for cls in (n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)):
        method = next((m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == "canSerialize"), None)
        if method is None or cls.name == "ValidatedSerializer":
            continue
        for node in ast.walk(method):
            if isinstance(node, ast.Compare):
                for comparator in node.comparators:
                    found.update(n for n in _type_names(comparator) if n not in ("type_", "type"))
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "issubclass":
                found.add(ast.unparse(node.args[1]).split(".")[-1])
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "isinstance" and \
                    ast.unparse(node.args[0]) == "None":
                found.add("None")
    return sorted(n for n in found - {"UnionType"} if n.isidentifier())


# --- C++ headers ----------------------------------------------------------------------------------------------------
def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def _normalized(params: str) -> list[str]:
    """Qt's normalized signatures of a declaration's parameter list, one per number of defaulted parameters."""
    types, defaults = [], 0
    for p in (p.strip() for p in params.split(",") if p.strip() and p.strip() != "void"):
        has_default = "=" in p
        p = re.sub(r"\bconst\b", "", p.split("=")[0]).replace("&", " ")
        tokens = re.findall(r"[\w:<>]+|\*", p)
        if len([t for t in tokens if t != "*"]) > 1 and tokens[-1] != "*":
            tokens = tokens[:-1]  # the parameter's name
        types.append(re.sub(r"\s*\*", "*", " ".join(tokens)))
        defaults += has_default
    return [",".join(types[:n]) for n in range(len(types) - defaults, len(types) + 1)]


def cpp_class(header: str, name: str) -> dict | None:
    """Base class, Q_PROPERTY names, signals, and what PythonQt exposes: public slots and Q_INVOKABLE methods."""
    text = _strip_comments(header)
    declared = re.search(rf"class\s+(?:\w+\s+)?{name}\s*:\s*public\s+([\w:]+)", text)
    if declared is None:
        return None
    body = text[declared.end():]
    properties = re.findall(r"Q_PROPERTY\s*\(\s*[\w:<>]+\s*\*?\s+(\w+)", body)
    signals, slots, invokable = set(), set(), set()
    section = None
    for chunk in re.split(r"(\b(?:public|protected|private)?\s*(?:Q_SLOTS|slots|Q_SIGNALS|signals)?\s*:(?!:))",
                          body):
        head = chunk.strip()
        if re.fullmatch(r"(?:public|protected|private)?\s*(?:Q_SLOTS|slots|Q_SIGNALS|signals)?\s*:", head):
            section = ("signals" if re.search(r"signals|Q_SIGNALS", head)
                       else "slots" if re.search(r"slots|Q_SLOTS", head) and head.startswith("public")
                       else "public" if head.startswith("public") else "hidden")
            continue
        for statement in chunk.split(";"):
            match = re.search(r"(~?\w+)\s*\(([^()]*)\)", statement)
            if match is None or "Q_PROPERTY" in statement or "operator" in statement:
                continue
            method, params = match.groups()
            if re.fullmatch(r"Q[A-Z]\w*", method):
                continue  # a Qt type's constructor in a default value, not a member
            if section == "signals":
                signals.update(f"{method}({p})" for p in _normalized(params))
            elif section == "slots":
                slots.add(method)
            elif section == "public" and "Q_INVOKABLE" in statement:
                invokable.add(method)
    return {"base": declared.group(1), "properties": sorted(set(properties)), "signals": sorted(signals),
            "slots": sorted(slots), "invokable": sorted(invokable)}


def designer_plugins(files: list[str]) -> list[str]:
    """Widget classes with a Qt Designer plugin (<Class>Plugin.h under a plugins folder), collections excluded."""
    names = {Path(f).name.removesuffix("Plugin.h") for f in files
             if f.endswith("Plugin.h") and re.search(r"(DesignerPlugins|Widgets/Plugins)/", f)}
    return sorted(n for n in names if "Abstract" not in n and not re.search(r"Widgets$", n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slicer_git")
    parser.add_argument("ctk_git")
    parser.add_argument("--release", default="v5.10.0")
    args = parser.parse_args()
    slicer = lambda path: git_show(args.slicer_git, args.release, path)  # noqa: E731
    commit = subprocess.run(["git", "-C", args.slicer_git, "rev-parse", f"{args.release}^{{commit}}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    ctk_commit = re.search(r'GIT_TAG\s*\n\s*"([0-9a-f]{40})"', slicer("SuperBuild/External_CTK.cmake")).group(1)
    ctk = lambda path: git_show(args.ctk_git, ctk_commit, path)  # noqa: E731
    slicer_files, ctk_files = git_files(args.slicer_git, args.release), git_files(args.ctk_git, ctk_commit)

    package = [f for f in slicer_files if f.startswith(WRAPPER_PACKAGE + "/") and f.endswith(".py")]
    plugins = designer_plugins(slicer_files) + designer_plugins(ctk_files)
    headers = {Path(f).name: ("slicer", f) for f in slicer_files if f.endswith(".h")}
    headers.update({Path(f).name: ("ctk", f) for f in ctk_files if f.endswith(".h")})

    cpp = {}
    pending = list(CPP_CLASSES) + plugins
    while pending:
        name = pending.pop()
        if name in cpp or f"{name}.h" not in headers:
            continue
        where, path = headers[f"{name}.h"]
        found = cpp_class((slicer if where == "slicer" else ctk)(path), name)
        if found is not None:
            found["header"] = f"{'Slicer' if where == 'slicer' else 'CTK'}:{path}"
            cpp[name] = found
            pending.append(found["base"])

    table = {
        "release": args.release, "commit": commit, "ctk_commit": ctk_commit,
        "python": {module: python_module(slicer(path)) for module, path in PYTHON_MODULES.items()},
        "parameterNodeWrapper": {
            "names": sorted({n for f in package if not f.endswith("__init__.py") for n in exported_names(slicer(f))}
                            | set(exported_names(slicer(f"{WRAPPER_PACKAGE}/__init__.py")))),
            "serializable": serializable(slicer(f"{WRAPPER_PACKAGE}/serializers.py")),
            "connectors": connectors(slicer(f"{WRAPPER_PACKAGE}/guiConnectors.py")),
        },
        "designer_plugins": plugins,
        "cpp_classes": dict(sorted(cpp.items())),
    }
    out = HERE / f"slicer-{args.release.lstrip('v')}.json"
    out.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
    print(f"wrote {out.name}: {len(cpp)} C++ classes, {len(plugins)} designer plugins")


if __name__ == "__main__":
    main()
