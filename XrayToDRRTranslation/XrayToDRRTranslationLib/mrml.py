"""Qt-free MRML glue of the translation engine (imports slicer and vtk; runs under slicer-core).

- A translated X-ray (a DRR-like image predicted by `translate predict`) is a one-slice volume node with exactly the
  geometry of the X-ray node it came from (spacing, origin, directions, parent transform), so it lies on the same
  detector plane and can be shown over or beside it. Attributes: XrayToDRR.kind = 'translated',
  XrayToDRR.translatedFrom (the X-ray node's ID), XrayToDRR.checkpoint, and the X-ray's XrayToDRR.sdd/.delx/.dely.
- CSV reports (pairs.csv, metrics.csv, log.csv) become table nodes: numeric columns as doubles, others as text.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import slicer

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.mrml import PREFIX, metrics_to_table_node, show_overlay

TRANSLATED = "translated"


def translated_to_volume_node(pixels: np.ndarray, xray_node, scene, name: str, checkpoint=None):
    """A volume node holding `pixels` (H, W) on the X-ray node's grid (same size required)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if xray_node is None or xray_node.GetImageData() is None:
        raise InputError("X-ray node has no image", xray_node.GetName() if xray_node else None,
                         "select an imported X-ray")
    dims = xray_node.GetImageData().GetDimensions()
    if pixels.ndim != 2 or (pixels.shape[1], pixels.shape[0]) != (dims[0], dims[1]) or dims[2] != 1:
        raise InputError(f"translated image has shape {pixels.shape}, the X-ray is {dims[1]}x{dims[0]}x{dims[2]}",
                         xray_node.GetName(), "translate this X-ray (a one-slice volume) with `translate predict`")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(pixels[None]))
    directions = np.zeros((3, 3))
    xray_node.GetIJKToRASDirections(directions)
    node.SetIJKToRASDirections(directions)  # copied field by field: exactly the X-ray's numbers
    node.SetSpacing(xray_node.GetSpacing())
    node.SetOrigin(xray_node.GetOrigin())
    parent = xray_node.GetParentTransformNode()
    node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)
    node.CreateDefaultDisplayNodes()
    node.SetAttribute(PREFIX + "kind", TRANSLATED)
    node.SetAttribute(PREFIX + "translatedFrom", xray_node.GetID())
    for key in ("sdd", "delx", "dely"):
        value = xray_node.GetAttribute(PREFIX + key)
        if value is not None:
            node.SetAttribute(PREFIX + key, value)
    if checkpoint is not None:
        node.SetAttribute(PREFIX + "checkpoint", str(checkpoint))
    return node


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def read_csv_rows(path) -> list[dict]:
    """The rows of a CSV report, numbers parsed (empty cells stay text)."""
    with open(path, newline="") as f:
        return [{k: _number(v) if v not in ("", None) else "" for k, v in row.items()} for row in csv.DictReader(f)]


def csv_to_table_node(path, scene, name: str | None = None):
    """A CSV report as a table node (one row per line); its file is kept as attribute XrayToDRR.source."""
    path = Path(path)
    if not path.is_file():
        raise InputError("report not found", path, "run the step that writes it first")
    rows = read_csv_rows(path)
    if not rows:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        rows = [{k: "" for k in header}] if header else [{"empty": ""}]
        node = metrics_to_table_node(rows, scene, name or path.stem)
        node.GetTable().SetNumberOfRows(0)
    else:
        node = metrics_to_table_node(rows, scene, name or path.stem)
    node.SetAttribute(PREFIX + "source", str(path))
    return node


def show_translation(scene, xray_node, translated_node, display: str = "over", opacity: float = 0.5):
    """'over': the translation over the X-ray in the Red view (opacity); 'beside': the X-ray in Red and the
    translation in Yellow, both views turned to the detector plane. Returns the slice composite node(s) used."""
    if display == "beside":
        return (show_overlay(scene, xray_node, None, 0.0, "Red"),
                show_overlay(scene, translated_node, None, 0.0, "Yellow"))
    if display != "over":
        raise InputError(f"unknown display '{display}'", None, "use 'over' or 'beside'")
    return (show_overlay(scene, xray_node, translated_node, opacity, "Red"),)
