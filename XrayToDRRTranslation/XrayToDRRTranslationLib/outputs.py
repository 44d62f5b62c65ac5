"""Where a verb may write: an output folder that is replaced as a whole must not hold or lie inside its inputs."""

from __future__ import annotations

from pathlib import Path

from XrayToDRRLib.errors import InputError


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(output: str | Path, inputs: list[str | Path], flag: str = "-o") -> Path:
    """`output` (resolved) unless it equals, contains or lies inside one of `inputs` (InputError naming both)."""
    out = Path(output).resolve()
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is a file", out, f"give a folder name for {flag}")
    for item in inputs:
        if item is None:
            continue
        src = Path(item).resolve()
        if _inside(out, src):
            raise InputError(f"output folder lies inside the input {src}", out,
                             f"write {flag} outside the input (for example beside it)")
        if _inside(src, out):
            raise InputError(f"output folder would replace the input {src} it contains", out,
                             f"choose a new folder for {flag}")
    return out
