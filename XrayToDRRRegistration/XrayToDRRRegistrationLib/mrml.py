"""Qt-free MRML glue of the registration engine (imports slicer and vtk; runs under slicer-core): pose review,
landmark initialisation, review decisions, and X-ray/DRR comparison images.

Pose review: six values (rx, ry, rz, tx, ty, tz) move the C-arm of a base pose (the registration result) rigidly:
a rotation about the CT's volume centre by rx about R, then ry about A, then rz about S (degrees, fixed RAS axes;
`XrayToDRRLib.pose.rotation_about`), then a translation by (tx, ty, tz) RAS mm (`XrayToDRRLib.pose.perturb`).
`review_values` is the inverse: the values that give a transform node's current matrix (after a direct edit).

Landmarks (`--init-landmarks`): {"points": [{"pixel": [col, row], "ras": [x, y, z]}, ...]}, the n-th control point
of the X-ray markups paired with the n-th of the CT markups. `pixel` is the X-ray node's IJK (I = column, J = row)
of the point, through its RAS->IJK matrix and parent transforms; `ras` is the CT point in world RAS mm.

Several views (`register --multiview`): the views' poses as a transform hierarchy, the parent holding view 1's
world_from_camera (the patient pose) and one child per view holding first_camera_from_camera, so each child's
transform to world is its view's world_from_camera and moving the parent moves every view; each view's X-ray with
its DRR over it in its own slice view of a side-by-side layout (`show_multiview_layout`, `show_views`).

Review decisions: `review.json` in the registration output folder ({"decision": "accept" | "reject", "pose" (the
reviewed pose), "registered_pose", "values", "ncc", "time"}) and, in the scene, the parameter XrayToDRR.reviews of
the XrayToDRRRegistration module's parameter node (JSON {folder: decision}), which the Translation module reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import slicer
import vtk

from XrayToDRRLib.atomic import write_text
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.mrml import PREFIX, show_overlay
from XrayToDRRLib.pose import Pose, perturb

MODULE = "XrayToDRRRegistration"
REVIEWS_PARAMETER = "XrayToDRR.reviews"
REVIEW_FILE = "review.json"
DECISIONS = ("accept", "reject")
VALUES = ("rx", "ry", "rz", "tx", "ty", "tz")
PREVIEW_SIZE = 128


# --- pose review ----------------------------------------------------------------------------------------------------
def review_pose(base: Pose, values, center) -> Pose:
    """`base` moved by the six review values (degrees, mm) about `center` (RAS mm): the pose being reviewed."""
    values = np.asarray(values, dtype=np.float64).reshape(6)
    return perturb(base, values[:3], values[3:], center)


def review_values(base: Pose, world_from_camera, center) -> np.ndarray:
    """The six review values that move `base` to `world_from_camera` (inverse of `review_pose`)."""
    move = np.asarray(world_from_camera, dtype=np.float64) @ np.linalg.inv(base.world_from_camera)
    r = move[:3, :3]
    # rotation_about is scipy's extrinsic "xyz": R = Rz(c) Ry(b) Rx(a)
    b = -math.asin(float(np.clip(r[2, 0], -1.0, 1.0)))
    if abs(math.cos(b)) > 1e-9:
        a, c = math.atan2(r[2, 1], r[2, 2]), math.atan2(r[1, 0], r[0, 0])
    else:  # gimbal lock: put everything in a
        a, c = math.atan2(-r[1, 2], r[1, 1]), 0.0
    center = np.asarray(center, dtype=np.float64)
    translation = move[:3, 3] - (center - r @ center)
    return np.concatenate([np.degrees([a, b, c]), translation])


def set_pose_matrix(node, pose: Pose) -> None:
    """Give a pose transform node the pose's world_from_camera (the node's parents taken into account); its
    detector attributes are left as they are."""
    world = np.asarray(pose.world_from_camera, dtype=np.float64)
    parent = node.GetParentTransformNode()
    if parent is not None:
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        world = np.linalg.inv(slicer.util.arrayFromVTKMatrix(to_world)) @ world
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(world))


def preview_pose(pose: Pose, size: int = PREVIEW_SIZE) -> Pose:
    """The same camera and field of view sampled with `size` pixels along the detector's longer side."""
    scale = size / max(pose.height, pose.width)
    if scale >= 1.0:
        return pose
    return pose.with_detector(height=max(1, round(pose.height * scale)), width=max(1, round(pose.width * scale)))


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights averaging the source pixels that each target pixel covers (same extent)."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    k = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, k + 1) - np.maximum(lo, k), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resize_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average resize of a 2D image to (height, width), covering the same field of view."""
    image = np.asarray(image, dtype=np.float64)
    if image.shape == (height, width):
        return image.astype(np.float32)
    return (_area_matrix(image.shape[0], height) @ image @ _area_matrix(image.shape[1], width).T).astype(np.float32)


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two images of one size over `mask` (default: every pixel); 0 when either
    is constant there. Elementwise sums, not BLAS: a threaded dot product can stall for tens of ms on a busy
    machine, longer than the live render."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        a, b = a[mask], b[mask]
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denominator = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
    return float(np.sum(a * b) / denominator) if denominator > 0 else 0.0


def set_grid_like(node, reference, height: int, width: int) -> None:
    """Put a one-slice node of (height, width) pixels on the reference one-slice node's plane, covering the same
    field of view (pixel centres placed as an area resize places them)."""
    dims = reference.GetImageData().GetDimensions()
    ijk = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(ijk)
    sx, sy = dims[0] / width, dims[1] / height
    scale = np.array([[sx, 0, 0, 0.5 * sx - 0.5], [0, sy, 0, 0.5 * sy - 0.5], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(slicer.util.arrayFromVTKMatrix(ijk) @ scale))
    parent = reference.GetParentTransformNode()
    node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)


def image_node(scene, name: str, pixels: np.ndarray, reference, node=None, kind: str = "drr"):
    """Create (or update) a one-slice volume node holding `pixels` on the reference node's plane."""
    pixels = np.ascontiguousarray(np.asarray(pixels, dtype=np.float32)[None])
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, pixels)
        node.CreateDefaultDisplayNodes()
        node.SetAttribute(PREFIX + "kind", kind)
    else:
        slicer.util.updateVolumeFromArray(node, pixels)
    set_grid_like(node, reference, pixels.shape[1], pixels.shape[2])
    return node


# --- landmarks ------------------------------------------------------------------------------------------------------
def _world_to_ijk(node) -> np.ndarray:
    ras_to_ijk = vtk.vtkMatrix4x4()
    node.GetRASToIJKMatrix(ras_to_ijk)
    m = slicer.util.arrayFromVTKMatrix(ras_to_ijk)
    parent = node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise InputError("X-ray is under a non-linear transform", node.GetName(), "harden the transform first")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        m = m @ np.linalg.inv(slicer.util.arrayFromVTKMatrix(to_world))
    return m


def _points(markups) -> np.ndarray:
    n = markups.GetNumberOfControlPoints()
    out = np.zeros((n, 3))
    for i in range(n):
        markups.GetNthControlPointPositionWorld(i, out[i])
    return out


def landmark_pairs(xray_node, xray_points, ct_points) -> list[dict]:
    """[{"pixel": [col, row], "ras": [x, y, z]}, ...]: the n-th X-ray point with the n-th CT point."""
    if xray_node is None or xray_node.GetImageData() is None:
        raise InputError("no X-ray node for the landmarks", None, "select the X-ray the points were placed on")
    for what, markups in (("X-ray", xray_points), ("CT", ct_points)):
        if markups is None or markups.GetNumberOfControlPoints() == 0:
            raise InputError(f"no {what} landmarks", markups.GetName() if markups else None,
                             f"place points on the {what} (the same anatomy, in the same order)")
    on_xray, on_ct = _points(xray_points), _points(ct_points)
    if len(on_xray) != len(on_ct):
        raise InputError(f"{len(on_xray)} X-ray landmarks but {len(on_ct)} CT landmarks", xray_points.GetName(),
                         "place one CT point for each X-ray point, in the same order")
    ijk = np.c_[on_xray, np.ones(len(on_xray))] @ _world_to_ijk(xray_node).T
    return [{"pixel": [float(p[0]), float(p[1])], "ras": [float(v) for v in r]} for p, r in zip(ijk, on_ct)]


def landmarks_json(xray_node, xray_points, ct_points) -> dict:
    return {"points": landmark_pairs(xray_node, xray_points, ct_points)}


def write_landmarks(path, xray_node, xray_points, ct_points) -> Path:
    return write_text(path, json.dumps(landmarks_json(xray_node, xray_points, ct_points), indent=2) + "\n")


# --- review decisions -----------------------------------------------------------------------------------------------
def write_review(folder, decision: str, pose: Pose, registered_pose: Pose | None = None, values=None,
                 ncc_value: float | None = None) -> Path:
    """Write FOLDER/review.json (atomically): the decision and the reviewed pose."""
    if decision not in DECISIONS:
        raise InputError(f"unknown decision '{decision}'", None, f"use one of {', '.join(DECISIONS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("registration output folder not found", folder, "register first (or choose its folder)")
    review = {"decision": decision, "pose": pose.to_dict(),
              "registered_pose": registered_pose.to_dict() if registered_pose is not None else None,
              "values": dict(zip(VALUES, (float(v) for v in values))) if values is not None else None,
              "ncc": float(ncc_value) if ncc_value is not None else None,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return write_text(folder / REVIEW_FILE, json.dumps(review, indent=2) + "\n")


def read_review(folder) -> dict | None:
    """FOLDER/review.json, or None when there is none (or it is unreadable)."""
    path = Path(folder) / REVIEW_FILE
    try:
        review = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return review if isinstance(review, dict) and review.get("decision") in DECISIONS else None


def reviewed_pose(folder) -> Pose | None:
    """The pose a reviewer accepted (review.json), None when the folder is not accepted."""
    review = read_review(folder)
    if review is None or review["decision"] != "accept" or not isinstance(review.get("pose"), dict):
        return None
    return Pose.from_dict(review["pose"], Path(folder) / REVIEW_FILE)


def registration_parameter_node(scene, create: bool = True):
    """The XrayToDRRRegistration module's parameter node (the singleton Slicer's Logic creates)."""
    node = scene.GetSingletonNode(MODULE, "vtkMRMLScriptedModuleNode")
    if node is None:
        for n in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            candidate = scene.GetNthNodeByClass(n, "vtkMRMLScriptedModuleNode")
            if candidate.GetModuleName() == MODULE:
                return candidate
    if node is None and create:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(MODULE)
        node.SetModuleName(MODULE)
        node = scene.AddNode(node)
    return node


def reviews(scene) -> dict:
    """{folder: decision} recorded in the scene."""
    node = registration_parameter_node(scene, create=False)
    text = node.GetParameter(REVIEWS_PARAMETER) if node is not None else ""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {}
    return {str(k): v for k, v in data.items() if v in DECISIONS} if isinstance(data, dict) else {}


def record_review(scene, folder, decision: str) -> dict:
    """Keep the decision on the module's parameter node (the latest decision per folder); returns all of them."""
    if decision not in DECISIONS:
        raise InputError(f"unknown decision '{decision}'", None, f"use one of {', '.join(DECISIONS)}")
    data = reviews(scene)
    data[str(Path(folder).resolve())] = decision
    registration_parameter_node(scene).SetParameter(REVIEWS_PARAMETER, json.dumps(data))
    return data


def accepted_registrations(scene) -> list[Path]:
    """Registration folders accepted in this scene, in the order they were first reviewed."""
    return [Path(folder) for folder, decision in reviews(scene).items() if decision == "accept"]


# --- comparison images ----------------------------------------------------------------------------------------------
def unit_image(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Percentile window [low, high] onto [0, 1] (0 everywhere for a constant image)."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(image, [low, high])
    if not hi > lo:
        return np.zeros(image.shape, np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def difference_image(xray: np.ndarray, drr: np.ndarray) -> np.ndarray:
    """DRR minus X-ray, each windowed to [0, 1] first (the X-ray resized to the DRR's size): -1..1."""
    drr = np.asarray(drr)
    return unit_image(drr) - unit_image(resize_area(xray, *drr.shape))


def checkerboard_image(xray: np.ndarray, drr: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Tiles of the windowed X-ray and DRR alternating (`tiles` along the longer side); top-left is the X-ray."""
    drr = np.asarray(drr)
    h, w = drr.shape
    a, b = unit_image(resize_area(xray, h, w)), unit_image(drr)
    size = max(h, w) / max(1, int(tiles))
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    odd = ((rows // size).astype(int) + (cols // size).astype(int)) % 2 == 1
    return np.where(odd, b, a).astype(np.float32)


def comparison_nodes(scene, xray_node, drr_node, tiles: int = 8, nodes=(None, None)):
    """(difference node, checkerboard node) on the DRR node's plane, created or updated (`nodes`)."""
    xray = slicer.util.arrayFromVolume(xray_node)[0]
    drr = slicer.util.arrayFromVolume(drr_node)[0]
    name = drr_node.GetName()
    difference = image_node(scene, f"{name} difference", difference_image(xray, drr), drr_node, nodes[0],
                            kind="difference")
    checker = image_node(scene, f"{name} checkerboard", checkerboard_image(xray, drr, tiles), drr_node, nodes[1],
                         kind="checkerboard")
    for node, window, level in ((difference, 1.0, 0.0), (checker, 1.0, 0.5)):
        display = node.GetDisplayNode()
        if display is not None:
            display.AutoWindowLevelOff()
            display.SetWindowLevel(window, level)
    return difference, checker


def show_comparison(scene, xray_node, drr_node, mode: str = "overlay", opacity: float = 0.5, comparison=None,
                    view: str = "Red"):
    """overlay: the DRR over the X-ray (opacity); difference / checkerboard: that image (`comparison` = the pair
    from `comparison_nodes`). Returns the slice composite node."""
    if mode == "overlay":
        return show_overlay(scene, xray_node, drr_node, opacity, view)
    if mode not in ("difference", "checkerboard") or comparison is None:
        raise InputError(f"unknown view '{mode}'", None, "use overlay, difference or checkerboard")
    return show_overlay(scene, comparison[0] if mode == "difference" else comparison[1], None, 0.0, view)


# --- global pose search candidates ----------------------------------------------------------------------------------
CANDIDATE_FILE = "candidates.json"
CANDIDATE_COLUMNS = ("rank", "view", "tilt_y_deg", "tilt_x_deg", "spin_deg", "distance_mm", "score", "refined_score")


def read_candidates(folder) -> list[dict]:
    """The search's candidates of a registration folder (candidates.json), best first."""
    path = Path(folder) / CANDIDATE_FILE
    if not path.is_file():
        raise InputError("has no candidates.json (the pose search did not run)", Path(folder),
                         "register with --init-view or --init-dicom (with the search on)")
    try:
        candidates = json.loads(path.read_text())["candidates"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise InputError(f"is not a candidates file ({e})", path, "run the pose search again") from None
    return candidates


def candidates_to_nodes(candidates: list[dict], scene, name: str) -> tuple[list, object]:
    """One transform node per candidate (canonical pose, named with its rank, view and refined score) and a table
    node listing them best first. The nodes carry their rank as attribute XrayToDRR.candidateRank."""
    from XrayToDRRLib import mrml as base

    nodes, rows = [], []
    for rank, cand in enumerate(candidates, start=1):
        pose = Pose.from_dict(cand["pose"])
        score = cand.get("refined_score")
        label = f"{name} candidate {rank} ({cand.get('view')}, {score:.3f})" if score is not None else \
            f"{name} candidate {rank} ({cand.get('view')})"
        node = base.pose_to_transform_node(pose, scene, label)
        node.SetAttribute(PREFIX + "candidateRank", str(rank))
        nodes.append(node)
        tilt = cand.get("tilt_deg") or [0.0, 0.0]
        rows.append({"rank": rank, "view": cand.get("view", ""), "tilt_y_deg": float(tilt[0]),
                     "tilt_x_deg": float(tilt[1]), "spin_deg": float(cand.get("spin_deg", 0.0)),
                     "distance_mm": float(cand.get("distance_mm", 0.0)), "score": float(cand.get("score", 0.0)),
                     "refined_score": float(score) if score is not None else float("nan")})
    table = base.metrics_to_table_node(rows or [{c: "" for c in CANDIDATE_COLUMNS}], scene, f"{name} candidates")
    return nodes, table


def confidence_of(folder) -> tuple[float | None, str]:
    """(confidence, warning) recorded in a registration folder's metrics.json ((None, "") when it has none). A
    multi-view result: its weakest view's confidence and every warning (per view, patient motion, mixed views)."""
    path = Path(folder) / "metrics.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        entry = data.get("confidence")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        data, entry = {}, None
    if "multiview" in data:
        value = entry if isinstance(entry, (int, float)) and not isinstance(entry, bool) else None
        return (float(value) if value is not None else None), str(data.get("warning") or "")
    if not isinstance(entry, dict):
        return None, ""
    value = entry.get("confidence")
    return (float(value) if isinstance(value, (int, float)) else None), str(entry.get("warning") or "")


# --- several views of one patient (register --multiview) ---------------------------------------------------------
MULTIVIEW = PREFIX + "multiview"   # parent transform attribute: the mode (rigid-rig | independent)
VIEW_ROLE = PREFIX + "view"        # parent -> its views' transforms, in view order (node references)
VIEW_INDEX = PREFIX + "viewIndex"  # child transform attribute: 1, 2, ...
COMPARISONS = (PREFIX + "difference", PREFIX + "checkerboard")  # DRR -> its comparison nodes (references)
LAYOUT_ID = 5013                   # the N-view layout's id in the layout node (above Slicer's own layouts)
SLICE_VIEWS = (("Red", "#F34A33"), ("Yellow", "#EDD54C"), ("Green", "#6EB04B"))


def multiview_pose_nodes(poses: list[Pose], scene, name: str) -> tuple[object, list]:
    """(parent, children): the parent = view 1's pose (world_from_camera and detector: the patient pose); child k =
    first_camera_from_camera_k = inv(world_from_camera_1) @ world_from_camera_k with view k's detector, under the
    parent. In rigid-rig mode the children are the rig; in independent mode where each view's own registration put
    its camera relative to view 1's. Either way child k's transform to world is view k's world_from_camera."""
    from XrayToDRRLib import mrml as base

    if len(poses) < 2:
        raise InputError(f"a multi-view result needs at least two views, got {len(poses)}", name,
                         "load the folder of a register --multiview result")
    first_inverse = np.linalg.inv(poses[0].world_from_camera)
    parent = base.pose_to_transform_node(poses[0], scene, f"{name} patient pose")
    children = []
    for k, pose in enumerate(poses):
        local = dataclasses.replace(pose, world_from_camera=first_inverse @ pose.world_from_camera)
        child = base.pose_to_transform_node(local, scene, f"{name} view {k + 1}")
        child.SetAndObserveTransformNodeID(parent.GetID())
        child.SetAttribute(VIEW_INDEX, str(k + 1))
        parent.AddNodeReferenceID(VIEW_ROLE, child.GetID())
        children.append(child)
    return parent, children


def multiview_folders(folder) -> list[Path]:
    """The views' result folders of a multi-view result folder (metrics.json's multiview.views of view-1/, ...)."""
    folder = Path(folder)
    try:
        count = int(json.loads((folder / "metrics.json").read_text())["multiview"]["views"])
    except (OSError, ValueError, KeyError, TypeError):
        count = 0
    folders = [folder / f"view-{k + 1}" for k in range(count)]
    if count < 2 or not all((f / "pose.json").is_file() for f in folders):
        raise InputError("is not a multi-view registration result (metrics.json with 'multiview', view-1/pose.json, "
                         "view-2/pose.json, ...)", folder, "register the views with --multiview, or load a "
                                                           "single-view folder with loadRegistration")
    return folders


VIEW_COLUMNS = ("view", "folder", "xray", "ncc", "similarity", "confidence", "warning")


def view_metrics_rows(metrics: dict) -> list[dict]:
    """One row per view of a multi-view metrics.json (missing numbers as NaN, so the columns stay numeric)."""
    texts = ("folder", "xray", "warning")
    rows = [{key: str(row.get(key) or "") if key in texts else
             (float("nan") if row.get(key) is None else float(row[key])) for key in VIEW_COLUMNS}
            for row in metrics.get("per_view") or []]
    return rows or [{key: "" for key in VIEW_COLUMNS}]


def view_pose_nodes(parent) -> list:
    """The views' transform nodes of a multi-view parent, in view order ([] for any other node)."""
    if parent is None:
        return []
    return [parent.GetNthNodeReference(VIEW_ROLE, k) for k in range(parent.GetNumberOfNodeReferences(VIEW_ROLE))]


def view_names(count: int) -> list[str]:
    """The slice views the views are shown in: Red, Yellow, Green, then XrayView4, ..."""
    return [SLICE_VIEWS[k][0] if k < len(SLICE_VIEWS) else f"XrayView{k + 1}" for k in range(count)]


def multiview_layout_xml(count: int) -> str:
    """A layout of `count` slice views side by side, labelled 1, 2, ... (the view's number)."""
    items = []
    for k, view in enumerate(view_names(count)):
        color = SLICE_VIEWS[k][1] if k < len(SLICE_VIEWS) else "#8C8C8C"
        items.append(f'<item><view class="vtkMRMLSliceNode" singletontag="{view}">'
                     '<property name="orientation" action="default">Axial</property>'
                     f'<property name="viewlabel" action="default">{k + 1}</property>'
                     f'<property name="viewcolor" action="default">{color}</property></view></item>')
    return '<layout type="horizontal" split="true">' + "".join(items) + "</layout>"


def show_multiview_layout(scene, count: int) -> list[str]:
    """Register the `count`-view layout with the scene's layout node (made when the scene has none, as without the
    application) and switch to it. Returns the slice views' names, view 1 first."""
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is None:
        layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    xml = multiview_layout_xml(count)
    if not layout.IsLayoutDescription(LAYOUT_ID):
        layout.AddLayoutDescription(LAYOUT_ID, xml)
    elif layout.GetLayoutDescription(LAYOUT_ID) != xml:  # an unchanged one is left alone: no relayout
        layout.SetLayoutDescription(LAYOUT_ID, xml)
    if layout.GetViewArrangement() != LAYOUT_ID:
        layout.SetViewArrangement(LAYOUT_ID)
    return view_names(count)


def show_views(scene, views, mode: str = "overlay", opacity: float = 0.5, tiles: int = 8) -> list:
    """Each (X-ray node, DRR node) of `views` in its own slice view (view_names): the DRR over the X-ray, or their
    difference / checkerboard (made once per DRR node, kept as its references, updated after). Returns the slice
    composite nodes."""
    composites = []
    for (xray, drr), view in zip(views, view_names(len(views))):
        comparison = None
        if mode != "overlay" and drr is not None:
            comparison = comparison_nodes(scene, xray, drr, tiles, tuple(drr.GetNodeReference(r) for r in COMPARISONS))
            for role, node in zip(COMPARISONS, comparison):
                drr.SetNodeReferenceID(role, node.GetID())
        composites.append(show_comparison(scene, xray, drr, mode, opacity, comparison, view))
    return composites


def remove_with_comparisons(scene, node) -> None:
    """Remove an image node and the comparison nodes `show_views` made for it."""
    if node is None:
        return
    for role in COMPARISONS:
        other = node.GetNodeReference(role)
        if other is not None:
            scene.RemoveNode(other)
    if scene.GetNodeByID(node.GetID()) is not None:
        scene.RemoveNode(node)
