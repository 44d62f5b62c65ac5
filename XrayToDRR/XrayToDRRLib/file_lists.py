"""Many input files from a few paths: what a verb taking several poses or CTs accepts besides explicit files.

A folder stands for the files in it (not recursive), so `--pose poses/` = `--pose poses/*.json`. Explicit files
keep their order; a folder's files come sorted by name.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError, require_file
from .volumes import VOLUME_SUFFIXES

POSE_FILE = "pose.json"  # what a registration result folder holds (beside parameters.pt)


def pose_files(paths: list[str | Path]) -> list[Path]:
    """Pose files: a file as is; a registration result folder (holding pose.json): its pose.json; any other folder:
    its *.json files, or else the pose.json of each result folder in it (a batch registration's output)."""
    out = []
    for path in (require_file(p, "pose file or folder") for p in paths):
        if not path.is_dir():
            out.append(path)
        elif (path / POSE_FILE).is_file():
            out.append(path / POSE_FILE)
        else:
            found = sorted(p for p in path.glob("*.json") if p.is_file()) or sorted(
                p / POSE_FILE for p in path.iterdir() if (p / POSE_FILE).is_file())
            if not found:
                raise InputError("no pose files in this folder", path,
                                 "give pose .json files, or a folder holding them or registration results")
            out.extend(found)
    return out


def volume_files(paths: list[str | Path]) -> list[Path]:
    """CT volumes: a file as is; a folder of NIfTI/NRRD/MetaImage files: each of them; any other folder (a DICOM
    series) stays one volume."""
    out = []
    for path in (require_file(p, "CT volume or folder") for p in paths):
        inside = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)) \
            if path.is_dir() else []
        out.extend(inside or [path])
    return out
