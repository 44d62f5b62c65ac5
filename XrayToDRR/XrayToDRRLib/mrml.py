"""Qt-free MRML glue: the only engine file that knows Slicer nodes (imports slicer and vtk; runs under slicer-core).

Frames
- World = Slicer RAS millimetres, the frame of the CT as Slicer shows it. SimpleITK stores LPS: (x, y) negated.
- Pose (pose.py) = OpenCV pinhole camera at the X-ray source, `world_from_camera` in RAS. A pose is stored as a
  vtkMRMLLinearTransformNode whose *to-parent* matrix is `world_from_camera` (so anything placed under the node in
  camera coordinates appears where the C-arm sees it) and whose attributes hold the detector intrinsics:
  XrayToDRR.sdd, .height, .width, .delx, .dely, .x0, .y0 (exact `repr` of the numbers). The node alone round-trips.
- Volume nodes: IJK = (column, row, slice) of the image array (arrayFromVolume is [k, j, i]); IJK->RAS is the
  node's own geometry. An X-ray or DRR on a detector is a one-slice volume with voxel (col j, row i, 0) at
  `pose.pixel_to_world(j, i)`: I along camera +x (delx), J along camera +y (dely), K along the principal ray (the
  SlicerRT DRR Generator idea), so it shows in 3D where the detector is. An X-ray without a pose lies in the axial
  plane with IJK->RAS = diag(-delx, -dely, 1), upright in the Red view, as Slicer shows any 2D image.
- X-ray/DRR nodes carry attributes XrayToDRR.kind ('xray' | 'drr'), XrayToDRR.sdd, .delx, .dely (detector mm) and
  XrayToDRR.source (the file it came from); a DRR also keeps its pose as XrayToDRR.pose (JSON).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import slicer
import vtk

from .errors import InputError
from .pose import Pose

if TYPE_CHECKING:
    from .xray import Xray

PREFIX = "XrayToDRR."
INTRINSICS = ("sdd", "height", "width", "delx", "dely", "x0", "y0")
LPS_RAS = np.diag([-1.0, -1.0, 1.0])
SLICE_THICKNESS_MM = 1.0  # K spacing of one-slice X-ray/DRR volumes


# --- small helpers --------------------------------------------------------------------------------------------------
def _matrix(array) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r][c]))
    return m


def _array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _set(node, key: str, value) -> None:
    node.SetAttribute(PREFIX + key, repr(float(value)) if isinstance(value, (float, np.floating)) else str(value))


def _get(node, key: str, cast=float, default=None):
    value = node.GetAttribute(PREFIX + key)
    return default if value is None else cast(value)


def _add(scene, class_name: str, name: str):
    node = scene.AddNewNodeByClass(class_name, name)
    if node is None:
        raise InputError(f"the scene cannot create a {class_name}", None, "use a scene with Slicer's node classes")
    return node


def matrix_to_transform_node(matrix, scene, name: str) -> "slicer.vtkMRMLLinearTransformNode":
    """A linear transform node whose to-parent matrix is the 4x4 `matrix` (RAS)."""
    node = _add(scene, "vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(_matrix(np.asarray(matrix, dtype=np.float64)))
    return node


# --- poses ----------------------------------------------------------------------------------------------------------
def pose_to_transform_node(pose: Pose, scene, name: str = "pose") -> "slicer.vtkMRMLLinearTransformNode":
    """The pose as a transform node: matrix = world_from_camera, intrinsics as attributes."""
    node = matrix_to_transform_node(pose.world_from_camera, scene, name)
    for key in INTRINSICS:
        _set(node, key, getattr(pose, key))
    node.SetAttribute(PREFIX + "kind", "pose")
    return node


def pose_from_transform_node(node) -> Pose:
    """The canonical pose held by a transform node written by `pose_to_transform_node`. The matrix is the node's
    transform to world (parent transforms included: the C-arm as shown)."""
    name = node.GetName() if node is not None else None
    if node is None or not node.IsA("vtkMRMLTransformNode") or not node.IsLinear():
        raise InputError("not a linear transform node", name, "select the pose transform of an X-ray or a registration")
    missing = [k for k in INTRINSICS[:5] if node.GetAttribute(PREFIX + k) is None]
    if missing:
        raise InputError(f"transform has no detector intrinsics (attributes {', '.join(PREFIX + k for k in missing)})",
                         name, "use a pose created by XrayToDRR (import an X-ray with its pose.json, or register)")
    world = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToWorld(world)
    pose = Pose(_array(world), _get(node, "sdd"), _get(node, "height", lambda v: int(float(v))),
                _get(node, "width", lambda v: int(float(v))), _get(node, "delx"), _get(node, "dely"),
                _get(node, "x0", default=0.0), _get(node, "y0", default=0.0))
    return pose.validate(name)


# --- volumes <-> SimpleITK ------------------------------------------------------------------------------------------
def volume_node_to_sitk(node):
    """A SimpleITK image (LPS) with the node's voxels and geometry. A linear parent transform is included (the volume
    as shown); a non-linear one is refused."""
    import SimpleITK as sitk

    if node is None or node.GetImageData() is None:
        raise InputError("volume node has no image data", node.GetName() if node else None, "select a loaded volume")
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise InputError("volume has several components per voxel", node.GetName(), "select a scalar volume")
    arr = np.array(slicer.util.arrayFromVolume(node), copy=True)
    img = sitk.GetImageFromArray(arr)
    parent = node.GetParentTransformNode()
    if parent is None:
        directions = np.zeros((3, 3))
        node.GetIJKToRASDirections(directions)
        spacing, origin = np.array(node.GetSpacing()), np.array(node.GetOrigin())
    else:
        if not parent.IsTransformToWorldLinear():
            raise InputError("volume is under a non-linear transform", node.GetName(), "harden the transform first")
        to_world, ijk = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        node.GetIJKToRASMatrix(ijk)
        m = _array(to_world) @ _array(ijk)
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        directions, origin = m[:3, :3] / spacing, m[:3, 3]
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin((LPS_RAS @ origin).tolist())
    img.SetDirection((LPS_RAS @ directions).ravel().tolist())
    return img


def sitk_to_volume_node(img, scene, name: str, labelmap: bool = False):
    """A scalar (or label map) volume node with the image's voxels, pixel type and exact geometry (LPS -> RAS)."""
    import SimpleITK as sitk

    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"expected a 3D scalar image, got {img.GetDimension()}D with "
                         f"{img.GetNumberOfComponentsPerPixel()} components", name, "give a 3D scalar volume")
    node = _add(scene, "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(img))
    node.SetSpacing(img.GetSpacing())
    node.SetOrigin((LPS_RAS @ np.array(img.GetOrigin())).tolist())
    node.SetIJKToRASDirections(LPS_RAS @ np.array(img.GetDirection()).reshape(3, 3))
    node.CreateDefaultDisplayNodes()
    return node


def segmentation_to_labelmap_node(segmentation, reference, scene, name: str | None = None):
    """Visible segments of a segmentation node as a label map on the `reference` volume's grid (values 1..N)."""
    labelmap = _add(scene, "vtkMRMLLabelMapVolumeNode", name or f"{segmentation.GetName()} labels")
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(segmentation, labelmap, reference)
    if not ok or labelmap.GetImageData() is None:
        scene.RemoveNode(labelmap)
        raise InputError("cannot export the segmentation to a label map", segmentation.GetName(),
                         "check that it has visible, non-empty segments")
    return labelmap


# --- X-rays and DRRs on the detector plane ----------------------------------------------------------------------------
def set_detector_geometry(node, pose: Pose) -> None:
    """Place a one-slice volume on the detector plane: voxel (col j, row i, 0) at pose.pixel_to_world(j, i)."""
    dims = node.GetImageData().GetDimensions() if node.GetImageData() is not None else None
    if dims is not None and (dims[0], dims[1]) != (pose.width, pose.height):
        raise InputError(f"image is {dims[1]}x{dims[0]} pixels but the pose's detector is {pose.height}x{pose.width}",
                         node.GetName(), "use the pose made for this X-ray (same detector size)")
    node.SetSpacing(pose.delx, pose.dely, SLICE_THICKNESS_MM)
    node.SetOrigin(pose.pixel_to_world(0.0, 0.0).tolist())
    node.SetIJKToRASDirections(pose.rotation)


def _image_node(pixels: np.ndarray, scene, name: str):
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise InputError(f"expected a 2D image, got shape {pixels.shape}", name, "give one (H, W) image")
    node = _add(scene, "vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(pixels[None]))
    node.CreateDefaultDisplayNodes()
    return node


def xray_to_volume_node(xray: "Xray", scene, name: str = "X-ray", pose: Pose | None = None):
    """A one-slice volume holding the X-ray, its SDD and pixel spacing as attributes; on the detector plane when
    `pose` is given, else in the axial plane (diag(-delx, -dely, 1))."""
    node = _image_node(xray.pixels, scene, name)
    if pose is not None:
        set_detector_geometry(node, pose)
    else:
        node.SetSpacing(xray.delx or 1.0, xray.dely or 1.0, SLICE_THICKNESS_MM)
        node.SetIJKToRASDirections(np.diag([-1.0, -1.0, 1.0]))
    node.SetAttribute(PREFIX + "kind", "xray")
    for key in ("sdd", "delx", "dely"):
        if getattr(xray, key) is not None:
            _set(node, key, float(getattr(xray, key)))
    if xray.path is not None:
        node.SetAttribute(PREFIX + "source", str(xray.path))
    node.SetAttribute(PREFIX + "photometric", xray.photometric)
    return node


def xray_from_volume_node(node) -> "Xray":
    """The X-ray held by a one-slice volume node; geometry from its XrayToDRR attributes (None where absent)."""
    from .xray import Xray

    if node is None or node.GetImageData() is None:
        raise InputError("X-ray node has no image", node.GetName() if node else None, "select an imported X-ray")
    arr = slicer.util.arrayFromVolume(node)
    if arr.shape[0] != 1:
        raise InputError(f"is a volume of {arr.shape[0]} slices, not a 2D X-ray", node.GetName(),
                         "select an X-ray imported with XrayToDRR")
    source = node.GetAttribute(PREFIX + "source")
    xray = Xray(np.array(arr[0], dtype=np.float32), _get(node, "sdd"), _get(node, "delx"), _get(node, "dely"),
                Path(source) if source else None, node.GetAttribute(PREFIX + "photometric") or "MONOCHROME2",
                metadata={"format": "MRML", "node": node.GetName()})
    xray.sdd_source = "node attribute" if xray.sdd is not None else None
    xray.spacing_source = "node attribute" if xray.delx is not None else None
    return xray


def drr_to_volume_node(image: np.ndarray, pose: Pose, scene, name: str = "DRR", metadata: dict | None = None):
    """A DRR (H, W) as a one-slice volume on the pose's detector plane, keeping the pose and the metadata of the
    renderer that made it (renderer, mode, backend, device: as `xraytodrr drr` writes them) as attributes."""
    node = _image_node(image, scene, name)
    set_detector_geometry(node, pose)
    node.SetAttribute(PREFIX + "kind", "drr")
    for key in ("sdd", "delx", "dely"):
        _set(node, key, getattr(pose, key))
    node.SetAttribute(PREFIX + "pose", json.dumps(pose.to_dict()))
    if metadata:
        node.SetAttribute(PREFIX + "rendering", json.dumps(metadata))
    return node


# --- display helpers ------------------------------------------------------------------------------------------------
def add_source_and_detector_markups(pose: Pose, scene, name: str = "C-arm"):
    """A fiducial at the X-ray source and a closed linear curve around the detector's outer edge (pixel edges).
    Returns (fiducial node, curve node)."""
    source = _add(scene, "vtkMRMLMarkupsFiducialNode", f"{name} source")
    source.AddControlPoint(vtk.vtkVector3d(*pose.source), "source")
    h, w = pose.height, pose.width
    corners = pose.pixel_to_world([-0.5, w - 0.5, w - 0.5, -0.5], [-0.5, -0.5, h - 0.5, h - 0.5])
    detector = _add(scene, "vtkMRMLMarkupsClosedCurveNode", f"{name} detector")
    detector.SetCurveTypeToLinear()
    for n, corner in enumerate(corners):
        detector.AddControlPoint(vtk.vtkVector3d(*corner), f"detector {n + 1}")
    for node in (source, detector):
        node.SetLocked(True)
    return source, detector


def metrics_to_table_node(metrics, scene, name: str = "metrics"):
    """A table node: a dict -> columns 'metric' and 'value' (one row per key); a list of dicts -> one row per dict,
    one column per key. Columns of numbers are stored as doubles, any other column as text."""
    if isinstance(metrics, dict):
        rows = [{"metric": k, "value": v} for k, v in metrics.items()]
    else:
        rows = [dict(r) for r in metrics]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    node = _add(scene, "vtkMRMLTableNode", name)
    table = node.GetTable()
    for key in columns:
        values = [r.get(key) for r in rows]
        numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                      for v in values)
        array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        array.SetName(str(key))
        for v in values:
            array.InsertNextValue(float(v) if numeric else ("" if v is None else str(v)))
        table.AddColumn(array)
    node.Modified()
    return node


def show_overlay(scene, background, foreground=None, opacity: float = 0.5, view: str = "Red"):
    """Show `foreground` over `background` in one slice view (by its layout name) through its slice composite node,
    and turn that view to the background's plane (a detector plane for X-rays). Returns the composite node
    (created when the scene has none for that view, as in a scene without a layout)."""
    composite = None
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        candidate = scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
        if candidate.GetLayoutName() == view:
            composite = candidate
    if composite is None:
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(view)
    composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
    composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
    composite.SetForegroundOpacity(float(min(max(opacity, 0.0), 1.0)))
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        slice_node = scene.GetNthNodeByClass(n, "vtkMRMLSliceNode")
        if slice_node.GetLayoutName() == view and background is not None:
            slice_node.RotateToVolumePlane(background)
            if _is_one_slice(background):
                face_image_plane(slice_node, background)
    return composite


def _is_one_slice(node) -> bool:
    image = node.GetImageData()
    return image is not None and image.GetDimensions()[2] == 1


def face_image_plane(slice_node, node) -> None:
    """Show a one-slice volume (X-ray, DRR) as its file shows it: first row at the top, first column at the left.
    RotateToVolumePlane finds the plane but may turn it upside down (it did for an AP X-ray on its detector)."""
    directions = np.zeros((3, 3))
    node.GetIJKToRASDirections(directions)
    axes = np.column_stack([directions[:, 0], -directions[:, 1], directions[:, 2]])  # view y is up, rows go down
    slice_to_ras = slice_node.GetSliceToRAS()
    for r in range(3):
        for c in range(3):
            slice_to_ras.SetElement(r, c, float(axes[r, c]))
    slice_node.UpdateMatrices()


def sitk_transform_to_transform_node(transform, scene, name: str):
    """A linear SimpleITK transform (ITK convention: maps fixed/reference LPS points to moving points, as written by
    `coregister`) as the transform node that moves the moving volume onto the reference in Slicer (RAS)."""
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    fixed_to_moving = np.eye(4)
    for axis in range(3):
        unit = np.zeros(3)
        unit[axis] = 1.0
        fixed_to_moving[:3, axis] = np.array(transform.TransformPoint(unit.tolist())) - origin
    fixed_to_moving[:3, 3] = origin
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return matrix_to_transform_node(np.linalg.inv(flip @ fixed_to_moving @ flip), scene, name)
