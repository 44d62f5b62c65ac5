"""The Extensions Index description file (Resources/ExtensionsIndex/XrayToDRR.json) satisfies the index's schema and
checks (facts in Testing/slicer_api/extensions-index.json) and agrees with the top-level CMakeLists.txt."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slicer_module_stubs import ROOT

INDEX = json.loads((Path(__file__).parent / "slicer_api" / "extensions-index.json").read_text())
DESCRIPTION = ROOT / "Resources" / "ExtensionsIndex" / "XrayToDRR.json"
UNSET = "UNSET"  # how scm_url starts until the project has a public repository
JSON_TYPES = {"string": str, "array": list, "boolean": bool, "integer": int}


def cmake_settings(text: str | None = None) -> dict[str, str]:
    """set(EXTENSION_X "value") of the top-level CMakeLists.txt, and the project() name as PROJECT."""
    text = text if text is not None else (ROOT / "CMakeLists.txt").read_text()
    text = re.sub(r"#[^\n]*", "", text)
    out = dict(re.findall(r'set\s*\(\s*(EXTENSION_\w+)\s+"([^"]*)"\s*\)', text))
    out["PROJECT"] = re.search(r"project\s*\(\s*([^\s)]+)", text, re.I).group(1)
    return out


def schema_problems(entry: dict) -> list[str]:
    """What the catalog entry schema rejects in a description file."""
    problems = [f"missing {key}" for key in INDEX["required"] if key not in entry]
    for key, value in entry.items():
        spec = INDEX["properties"].get(key)
        if spec is None:
            problems.append(f"{key} is not a field of the schema")
            continue
        expected = JSON_TYPES[spec["type"]]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            problems.append(f"{key} must be a JSON {spec['type']}")
            continue
        if "enum" in spec and value not in spec["enum"]:
            problems.append(f"{key} must be one of {spec['enum']}")
        if spec["type"] == "integer" and not spec["minimum"] <= value <= spec["maximum"]:
            problems.append(f"{key} must lie in {spec['minimum']}..{spec['maximum']}")
        if spec["type"] == "array" and not all(isinstance(v, str) for v in value):
            problems.append(f"{key} must list strings")
    if entry.get("$schema") != INDEX["schema_url"]:
        problems.append(f"$schema must be {INDEX['schema_url']}")
    return problems


def test_the_description_file_validates_against_the_catalog_entry_schema():
    assert schema_problems(json.loads(DESCRIPTION.read_text())) == []


def test_the_schema_check_rejects_what_the_schema_rejects():
    good = json.loads(DESCRIPTION.read_text())
    assert schema_problems({k: v for k, v in good.items() if k != "category"}) == ["missing category"]
    assert schema_problems({**good, "homepage": "x"}) == ["homepage is not a field of the schema"]
    assert schema_problems({**good, "tier": 7}) == ["tier must lie in 1..5"]
    assert schema_problems({**good, "tier": True}) == ["tier must be a JSON integer"]
    assert schema_problems({**good, "scm_type": "svn"}) == ["scm_type must be one of ['git', 'local']"]
    assert schema_problems({**good, "build_dependencies": "PyTorch"}) == ["build_dependencies must be a JSON array"]


def test_the_description_file_passes_the_index_checks_that_need_no_network():
    checks = INDEX["index_checks"]
    raw = DESCRIPTION.read_bytes()
    entry = json.loads(raw)
    assert b"\r" not in raw  # LF line endings only
    assert not DESCRIPTION.stem.lower().startswith(checks["extension_name_must_not_start_with"].lower())
    assert entry["category"] in checks["accepted_categories"]
    assert set(entry["build_dependencies"]) <= set(INDEX["index_extensions_used"])


def test_cmake_metadata_agrees_with_the_description_file():
    cmake, entry = cmake_settings(), json.loads(DESCRIPTION.read_text())
    assert cmake["PROJECT"] == DESCRIPTION.stem  # the index compares project() with the file name
    assert cmake["EXTENSION_CATEGORY"] == entry["category"]
    depends = [] if cmake["EXTENSION_DEPENDS"] == "NA" else cmake["EXTENSION_DEPENDS"].split()
    assert depends == entry.get("build_dependencies", [])
    home = cmake["EXTENSION_HOMEPAGE"]
    if entry["scm_url"].startswith(UNSET):
        assert home == cmake["EXTENSION_ICONURL"] == cmake["EXTENSION_SCREENSHOTURLS"] == "", \
            "set scm_url in XrayToDRR.json together with the URLs of CMakeLists.txt"
    else:
        assert entry["scm_url"].removesuffix(".git") == home


def test_the_cmake_urls_point_at_files_of_this_repository():
    cmake = cmake_settings()
    home = cmake["EXTENSION_HOMEPAGE"]
    urls = [cmake["EXTENSION_ICONURL"]] + cmake["EXTENSION_SCREENSHOTURLS"].split()
    if not home:
        assert urls == [""]
        return
    assert urls[0].endswith("/Resources/Icons/XrayToDRR.png") and len(urls) > 1
    for url in urls:
        assert url.startswith(("https://", "http://")) and url.lower().endswith((".png", ".jpg", ".jpeg", ".gif"))
        path = re.sub(r"^.*?/(raw/)?(main|master)/", "", url)
        assert (ROOT / path).is_file(), f"{url}: no {path} in the repository"


def test_the_cmake_parser_reads_settings_and_ignores_comments():
    text = 'project(Demo)\n# set(EXTENSION_HOMEPAGE "old")\nset(EXTENSION_HOMEPAGE "https://x.org/SlicerDemo")\n'
    assert cmake_settings(text) == {"EXTENSION_HOMEPAGE": "https://x.org/SlicerDemo", "PROJECT": "Demo"}


def test_the_extension_is_ready_to_submit():
    """What only the maintainer can do (Resources/ExtensionsIndex/README.md); skipped with the list until done."""
    checks, entry = INDEX["index_checks"], json.loads(DESCRIPTION.read_text())
    todo = []
    if entry["scm_url"].startswith(UNSET):
        todo.append("set scm_url (XrayToDRR.json) and EXTENSION_HOMEPAGE/ICONURL/SCREENSHOTURLS (CMakeLists.txt)")
    else:
        scheme = entry["scm_url"].split("://")[0]
        assert scheme in checks["scm_url_schemes"], f"scm_url scheme {scheme}"
        name = entry["scm_url"].rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
        assert name.startswith(tuple(checks["repository_name_prefixes"])), f"repository name {name}"
    if not any((ROOT / n).is_file() for n in checks["license_file_in_repository_root"]):
        todo.append("add a license file at the repository root")
    if todo:
        pytest.skip("maintainer: " + "; ".join(todo))
