"""mrml.py over slicer-core (Qt-free MRML): X-ray and DRR nodes keep their geometry, poses round-trip through
transform nodes, a CT keeps its exact geometry through a volume node, and a saved scene keeps all of it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import phantom
from scipy import ndimage
from scipy.spatial.transform import Rotation

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from XrayToDRRLib import mrml  # noqa: E402
from XrayToDRRLib.dicom import write_xray_dicom  # noqa: E402
from XrayToDRRLib.errors import InputError  # noqa: E402
from XrayToDRRLib.pose import Pose, load_pose, look_at, perturb  # noqa: E402
from XrayToDRRLib.render import DRRRenderer  # noqa: E402
from XrayToDRRLib.volumes import ras_affine  # noqa: E402
from XrayToDRRLib.xray import read_xray  # noqa: E402


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    slicer.mrmlScene = s  # slicer.util helpers look for it
    yield s
    s.Clear(1)


def odd_pose(height=24, width=32) -> Pose:
    """An oblique pose with unequal pixel spacing, an off-centre principal point and unround numbers."""
    pose = look_at([310.123456789, -402.5, 77.7], [1.5, -2.25, 3.125], [0.1, 0.2, 1.0], 1017.3333333,
                   height, width, 1.234567891, 1.4142135623, x0=2.7182818, y0=-3.1415926)
    return perturb(pose, [3.3, -1.7, 2.9], [0.3, -0.7, 1.1], [0.0, 0.0, 0.0])


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def ramp(height=24, width=32) -> np.ndarray:
    return (np.arange(height * width).reshape(height, width) * 7 % 4000).astype(np.uint16)


def test_xray_import_keeps_pixels_spacing_and_sdd_as_attributes(scene, tmp_path):
    path = write_xray_dicom(ramp(), tmp_path / "x.dcm", sdd=1020.5, delx=0.3, dely=0.25)
    xray = read_xray(path)
    node = mrml.xray_to_volume_node(xray, scene, "X-ray")

    assert node.GetAttribute("XrayToDRR.kind") == "xray"
    assert float(node.GetAttribute("XrayToDRR.sdd")) == 1020.5
    assert float(node.GetAttribute("XrayToDRR.delx")) == 0.3 and float(node.GetAttribute("XrayToDRR.dely")) == 0.25
    assert node.GetAttribute("XrayToDRR.source") == str(path)
    assert np.array_equal(slicer.util.arrayFromVolume(node)[0], ramp())
    assert np.allclose(node.GetSpacing(), [0.3, 0.25, 1.0])
    # Without a pose: axial plane, upright in the Red view (columns run to patient left, rows to posterior).
    assert np.allclose(ijk_to_ras(node)[:3, :3], np.diag([-0.3, -0.25, 1.0]))

    back = mrml.xray_from_volume_node(node)
    assert np.array_equal(back.pixels, xray.pixels) and back.pixels.dtype == np.float32
    assert (back.sdd, back.delx, back.dely, back.path) == (1020.5, 0.3, 0.25, path)


def test_xray_without_geometry_comes_back_without_it(scene):
    node = mrml.xray_to_volume_node(read_xray_like(ramp()), scene, "plain")
    back = mrml.xray_from_volume_node(node)
    assert back.sdd is None and back.delx is None and back.missing_geometry()
    assert node.GetAttribute("XrayToDRR.sdd") is None


def read_xray_like(pixels):
    from XrayToDRRLib.xray import Xray

    return Xray(pixels.astype(np.float32))


def test_pose_json_to_transform_node_and_back_is_exact(scene, tmp_path):
    pose = load_pose(odd_pose().save(tmp_path / "pose.json"))
    node = mrml.pose_to_transform_node(pose, scene, "pose")

    assert np.array_equal(slicer.util.arrayFromTransformMatrix(node), pose.world_from_camera)
    back = mrml.pose_from_transform_node(node)
    assert back.to_dict() == pose.to_dict()
    assert json.loads(json.dumps(back.to_dict())) == json.loads((tmp_path / "pose.json").read_text())


def test_a_transform_without_intrinsics_or_not_rigid_is_refused(scene):
    plain = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "plain")
    with pytest.raises(InputError, match="XrayToDRR.sdd"):
        mrml.pose_from_transform_node(plain)
    node = mrml.pose_to_transform_node(odd_pose(), scene, "scaled")
    slicer.util.updateTransformMatrixFromArray(node, np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(InputError, match="not rigid"):
        mrml.pose_from_transform_node(node)


def test_drr_and_xray_nodes_lie_on_the_detector_plane(scene):
    pose = odd_pose()
    image = np.random.default_rng(0).random((pose.height, pose.width)).astype(np.float32)
    drr = mrml.drr_to_volume_node(image, pose, scene, "DRR")
    xray = mrml.xray_to_volume_node(read_xray_like(image), scene, "X-ray", pose=pose)

    for node in (drr, xray):
        m = ijk_to_ras(node)
        h, w = pose.height - 1, pose.width - 1
        corners = np.array([m @ [j, i, 0, 1] for j, i in [(0, 0), (w, 0), (w, h), (0, h)]])[:, :3]
        assert np.allclose(corners, pose.detector_corners(), atol=1e-9)
        assert np.allclose((m @ [7, 5, 0, 1])[:3], pose.pixel_to_world(7, 5), atol=1e-9)
        # voxel (col j, row i) holds image[i, j]; the slice normal is the principal ray
        assert np.array_equal(slicer.util.arrayFromVolume(node)[0], image)
        assert np.allclose(m[:3, 2], pose.principal_ray)
    assert mrml.drr_to_volume_node(image, pose, scene, "again").GetAttribute("XrayToDRR.kind") == "drr"
    assert Pose.from_dict(json.loads(drr.GetAttribute("XrayToDRR.pose"))).to_dict() == pose.to_dict()
    with pytest.raises(InputError, match="detector is 24x32"):
        mrml.drr_to_volume_node(image[:, :-1], pose, scene, "wrong size")


def bead_ct() -> tuple[sitk.Image, np.ndarray]:
    """An oblique-grid air volume with one dense 3-voxel bead; returns it and the bead's RAS centre."""
    direction = Rotation.from_euler("xyz", [12, -25, 35], degrees=True).as_matrix()
    img = phantom(size=(24, 26, 22), spacing=(3.0, 3.2, 3.5), direction=direction)
    arr = np.full(sitk.GetArrayFromImage(img).shape, -1000.0, np.float32)
    i, j, k = 9, 15, 12
    arr[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2] = 4000.0
    ct = sitk.GetImageFromArray(arr)
    ct.CopyInformation(img)
    return ct, (ras_affine(ct) @ [i, j, k, 1.0])[:3]


def test_a_bead_projects_onto_the_same_pixel_through_the_mrml_path(scene):
    ct, bead = bead_ct()
    node = mrml.sitk_to_volume_node(ct, scene, "CT")
    back = mrml.volume_node_to_sitk(node)

    assert back.GetSize() == ct.GetSize() and back.GetPixelID() == ct.GetPixelID()
    assert back.GetSpacing() == ct.GetSpacing() and back.GetOrigin() == ct.GetOrigin()
    assert np.allclose(back.GetDirection(), ct.GetDirection(), atol=1e-15)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(ct))

    pose = look_at(bead + [300.0, 420.0, 90.0], bead + [5.0, -3.0, 2.0], [0, 0, 1], 900.0, 40, 48, 2.0)
    engine = DRRRenderer(ct, renderer="siddon", device="cpu").render(pose)
    through_mrml = DRRRenderer(back, renderer="siddon", device="cpu").render(pose)
    assert np.allclose(through_mrml, engine, rtol=1e-6, atol=1e-7)
    blob = np.where(through_mrml > 0.25 * through_mrml.max(), through_mrml, 0.0)
    row, col = ndimage.center_of_mass(blob)
    assert np.linalg.norm(np.array([col, row]) - pose.project(bead)[0]) < 1.0

    # A linear parent transform is part of the volume as shown: the bead moves with it.
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    slicer.util.updateTransformMatrixFromArray(shift, np.array([[1, 0, 0, 10.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    node.SetAndObserveTransformNodeID(shift.GetID())
    moved = mrml.volume_node_to_sitk(node)
    assert np.allclose(ras_affine(moved) @ [0, 0, 0, 1], ras_affine(ct) @ [0, 0, 0, 1] + [10, 0, 0, 0])


def test_label_map_and_segmentation_nodes_round_trip(scene, phantom_ct):
    labels = sitk.Cast(sitk.BinaryThreshold(phantom_ct, 0.0, 5000.0, 1, 0) + sitk.BinaryThreshold(
        phantom_ct, 1000.0, 5000.0, 1, 0), sitk.sitkUInt8)
    ct = mrml.sitk_to_volume_node(phantom_ct, scene, "CT")
    label_node = mrml.sitk_to_volume_node(labels, scene, "labels", labelmap=True)
    assert label_node.IsA("vtkMRMLLabelMapVolumeNode")
    assert np.array_equal(sitk.GetArrayViewFromImage(mrml.volume_node_to_sitk(label_node)),
                          sitk.GetArrayViewFromImage(labels))

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segments")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, segmentation)
    exported = mrml.volume_node_to_sitk(mrml.segmentation_to_labelmap_node(segmentation, ct, scene))
    assert exported.GetSize() == labels.GetSize()
    assert np.array_equal(sitk.GetArrayViewFromImage(exported), sitk.GetArrayViewFromImage(labels))


def test_coregistration_transform_moves_the_ct_onto_the_reference(scene):
    itk = sitk.Euler3DTransform((4.0, -2.0, 7.0), 0.1, -0.2, 0.3, (5.0, 6.0, -7.0))  # fixed LPS -> moving LPS
    node = mrml.sitk_transform_to_transform_node(itk, scene, "coreg")
    fixed_lps = np.array([12.0, -30.0, 44.0])
    moving_lps = np.array(itk.TransformPoint(fixed_lps.tolist()))
    flip = np.array([-1.0, -1.0, 1.0])
    to_parent = slicer.util.arrayFromTransformMatrix(node)
    assert np.allclose((to_parent @ np.append(moving_lps * flip, 1))[:3], fixed_lps * flip, atol=1e-9)


def test_markups_metrics_table_and_overlay(scene):
    pose = odd_pose()
    source, detector = mrml.add_source_and_detector_markups(pose, scene, "view 1")
    assert np.allclose(slicer.util.arrayFromMarkupsControlPoints(source, world=True)[0], pose.source)
    outline = slicer.util.arrayFromMarkupsControlPoints(detector, world=True)
    assert outline.shape == (4, 3) and np.allclose(pose.depth(outline), pose.sdd)
    assert np.allclose(pose.project(outline), [[-0.5, -0.5], [31.5, -0.5], [31.5, 23.5], [-0.5, 23.5]], atol=1e-6)

    table = mrml.metrics_to_table_node({"ncc": 0.93, "iterations": 12, "stop": "converged"}, scene, "metrics")
    t = table.GetTable()
    assert (t.GetNumberOfRows(), t.GetNumberOfColumns()) == (3, 2)
    assert t.GetValueByName(0, "metric").ToString() == "ncc" and t.GetValueByName(0, "value").ToString() == "0.93"
    rows = mrml.metrics_to_table_node([{"name": "a", "ncc": 0.5}, {"name": "b", "ncc": 0.25}], scene, "per X-ray")
    assert rows.GetTable().GetColumnByName("ncc").IsA("vtkDoubleArray")
    assert rows.GetTable().GetValueByName(1, "ncc").ToDouble() == 0.25

    xray = mrml.xray_to_volume_node(read_xray_like(ramp()), scene, "X-ray", pose=pose)
    drr = mrml.drr_to_volume_node(ramp().astype(np.float32), pose, scene, "DRR")
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    composite = mrml.show_overlay(scene, xray, drr, opacity=0.4)
    assert composite.GetLayoutName() == "Red"
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (xray.GetID(), drr.GetID())
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    normal = slicer.util.arrayFromVTKMatrix(red.GetSliceToRAS())[:3, 2]
    assert abs(normal @ pose.principal_ray) == pytest.approx(1.0)
    assert mrml.show_overlay(scene, xray, drr, opacity=0.7) is composite


def test_a_saved_scene_keeps_nodes_attributes_and_matrices(scene, tmp_path):
    pose = odd_pose()
    mrml.pose_to_transform_node(pose, scene, "true pose")
    xray = mrml.xray_to_volume_node(read_xray_like(ramp()), scene, "X-ray", pose=pose)
    xray.SetAttribute("XrayToDRR.sdd", repr(pose.sdd))
    drr = mrml.drr_to_volume_node(ramp().astype(np.float32) / 7, pose, scene, "DRR")
    ct, _ = bead_ct()
    ct_node = mrml.sitk_to_volume_node(ct, scene, "CT")
    mrml.add_source_and_detector_markups(pose, scene, "C-arm")
    mrml.metrics_to_table_node({"ncc": 0.93}, scene, "metrics")
    slicer.vtkSlicerMarkupsLogic().SetMRMLScene(scene)  # registers the markups storage node classes
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):  # as Slicer's Save does
        scene.GetNthNodeByClass(n, "vtkMRMLStorableNode").AddDefaultStorageNode()
    mrb = tmp_path / "scene.mrb"
    assert scene.WriteToMRB(str(mrb))

    loaded = read_mrb(mrb, tmp_path / "cache")
    get = lambda name: loaded.GetFirstNodeByName(name)  # noqa: E731
    back = mrml.pose_from_transform_node(get("true pose"))
    assert np.allclose(back.world_from_camera, pose.world_from_camera, atol=1e-9)
    assert {k: v for k, v in back.to_dict().items() if k != "world_from_camera"} == \
        {k: v for k, v in pose.to_dict().items() if k != "world_from_camera"}
    for name, original in (("X-ray", xray), ("DRR", drr), ("CT", ct_node)):
        node = get(name)
        assert node is not None, name
        assert np.allclose(ijk_to_ras(node), ijk_to_ras(original), atol=1e-6), name
        assert np.array_equal(slicer.util.arrayFromVolume(node), slicer.util.arrayFromVolume(original)), name
        for key in ("kind", "sdd", "delx", "dely", "pose"):
            assert node.GetAttribute(f"XrayToDRR.{key}") == original.GetAttribute(f"XrayToDRR.{key}"), (name, key)
    assert mrml.xray_from_volume_node(get("X-ray")).sdd == pose.sdd
    assert np.allclose(slicer.util.arrayFromMarkupsControlPoints(get("C-arm source"), world=True)[0], pose.source)
    assert get("metrics").GetTable().GetValueByName(0, "value").ToDouble() == 0.93


def read_mrb(path, cache) -> "slicer.vtkMRMLScene":
    cache.mkdir()
    manager = slicer.vtkCacheManager()
    manager.SetRemoteCacheDirectory(str(cache))
    io = slicer.vtkDataIOManager()
    io.SetCacheManager(manager)
    loaded = slicer.vtkMRMLScene()
    loaded.SetCacheManager(manager)
    loaded.SetDataIOManager(io)
    slicer.vtkSlicerMarkupsLogic().SetMRMLScene(loaded)  # registers the markups storage readers
    assert loaded.ReadFromMRB(str(path))
    return loaded
