"""The Registration panel's "Several views" over slicer-core: the Logic registers two simulated views jointly as a
job (`register X1 X2 --multiview rigid-rig --rig rig.json`) and loads the result as a patient pose transform with a
child transform per view (world_from_camera of each view = parent @ child), each view's DRR over its X-ray in its
own slice view of a side-by-side layout, and the combined and per-view metrics; the live review moves the patient
pose and re-renders every view; bad input is refused before anything is written."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from registration_fixtures import carm_pose, listing, offset  # noqa: E402
from test_slicer_registration_panel import ct_image, ijk_to_ras, logic, matrix, module, scene  # noqa: E402,F401

from XrayToDRRLib import mrml  # noqa: E402
from XrayToDRRLib.errors import InputError  # noqa: E402
from XrayToDRRLib.pose import load_pose, look_at, perturb  # noqa: E402
from XrayToDRRLib.simulate import simulate_xray  # noqa: E402
from XrayToDRRLib.volumes import center_ras  # noqa: E402
from XrayToDRRLib.xray import Xray  # noqa: E402
from XrayToDRRRegistrationLib import mrml as review  # noqa: E402
from XrayToDRRRegistrationLib.evaluate import bone_points, pose_errors  # noqa: E402

PATIENT = ((3.0, -2.0, 2.0), (6.0, -4.0, 5.0))  # the patient's pose on the table (deg about RAS axes, mm)


def local(node) -> np.ndarray:
    return slicer.util.arrayFromTransformMatrix(node)  # to parent


def composite(scene, view: str):
    nodes = [scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
             for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    return next(c for c in nodes if c.GetLayoutName() == view)


@pytest.fixture(scope="module")
def views(tmp_path_factory, small_ct):
    """Two simulated 48-px views (AP; lateral at another SDD) of a patient moved on the table, the rig.json of the
    C-arm's nominal geometry, and a start 3 degrees and 8 mm off."""
    folder = tmp_path_factory.mktemp("views")
    c = center_ras(small_ct)
    nominal = [carm_pose(small_ct, "ap", 600.0, size=48), carm_pose(small_ct, "lateral", 650.0, size=48, sdd=1100.0)]
    true = [perturb(n, *PATIENT, c) for n in nominal]
    images = [simulate_xray(small_ct, t, seed=k + 1, device="cpu") for k, t in enumerate(true)]
    rig = [np.eye(4), np.linalg.inv(nominal[0].world_from_camera) @ nominal[1].world_from_camera]
    rig_path = folder / "rig.json"
    rig_path.write_text(json.dumps({"views": [{"file": name, "first_camera_from_camera": m.tolist()}
                                              for name, m in zip(("ap.dcm", "lat.dcm"), rig)]}))
    return {"true": true, "images": images, "rig": rig, "rig_path": rig_path,
            "start": offset(true[0], small_ct, 3.0, 8.0, seed=3), "points": bone_points(small_ct), "center": c}


def view_nodes(scene, views):
    return [mrml.xray_to_volume_node(Xray(image, t.sdd, t.delx, t.dely), scene, name)
            for image, t, name in zip(views["images"], views["true"], ("ap", "lat"))]


def test_two_views_register_as_a_patient_pose_with_a_child_per_view_and_the_review_moves_every_view(
        module, logic, scene, small_ct, views):
    ct = mrml.sitk_to_volume_node(small_ct, scene, "CT")
    xrays = view_nodes(scene, views)
    start = mrml.pose_to_transform_node(views["start"], scene, "start")

    parent, children, drrs, table = logic.registerViews(xrays, ct, rig=views["rig_path"], initPose=start,
                                                        renderer="fast", maxIterations=40)

    folder = parent.GetAttribute("XrayToDRR.registrationFolder")
    metrics = json.loads(open(f"{folder}/metrics.json").read())
    assert metrics["multiview"]["mode"] == "rigid-rig" and metrics["multiview"]["rig"]["source"] == \
        "rig file rig.json"  # the nodes went to the verb under their names, as rig.json's "file" says
    assert [c.GetAttribute("XrayToDRR.registrationFolder") for c in children] == \
        [f"{folder}/view-1", f"{folder}/view-2"]
    assert logic.isMultiView(parent) and review.view_pose_nodes(parent) == children
    for k, (child, drr, xray, truth) in enumerate(zip(children, drrs, xrays, views["true"])):
        pose = load_pose(f"{folder}/view-{k + 1}/pose.json")
        assert child.GetParentTransformNode() is parent
        assert np.allclose(matrix(child), pose.world_from_camera, atol=1e-6)  # world = parent @ child
        assert np.allclose(matrix(parent) @ local(child), pose.world_from_camera, atol=1e-6)
        assert np.allclose(local(child), views["rig"][k], atol=1e-6)  # rigid-rig: the children are the rig
        assert mrml.pose_from_transform_node(child).sdd == truth.sdd  # each view keeps its detector
        # the joint pose is closer to the truth than the start, in both views
        start_k = dataclasses.replace(truth, world_from_camera=views["start"].world_from_camera @ views["rig"][k])
        assert pose_errors(truth, pose, views["points"], views["center"])["mtre_mm"] < \
            0.5 * pose_errors(truth, start_k, views["points"], views["center"])["mtre_mm"]
        assert child.GetNodeReference("XrayToDRR.drr") is drr and child.GetNodeReference("XrayToDRR.xray") is xray
        assert np.allclose(ijk_to_ras(xray), ijk_to_ras(drr))  # the DRR lies over the X-ray on view k's detector
        view = composite(scene, review.view_names(2)[k])
        assert (view.GetBackgroundVolumeID(), view.GetForegroundVolumeID()) == (xray.GetID(), drr.GetID())
    assert scene.GetFirstNodeByClass("vtkMRMLLayoutNode").GetViewArrangement() == review.LAYOUT_ID
    rows = {table.GetCellText(r, 0): table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())}
    assert rows["multiview.mode"] == "rigid-rig" and float(rows["similarity"]) > 0.5 and "warning" in rows
    per_view = parent.GetNodeReference("XrayToDRR.viewMetrics")
    assert per_view.GetNumberOfRows() == 2 and per_view.GetCellText(1, 0) == "2"
    assert float(per_view.GetCellText(0, 3)) == pytest.approx(metrics["per_view"][0]["ncc"])
    confidence, warning = review.confidence_of(folder)
    assert confidence == pytest.approx(metrics["confidence"]) and warning == metrics["warning"]

    # the live review moves the shared pose: every view follows and re-renders
    session = logic.startReview(parent, ct, size=24)
    assert isinstance(session, module.XrayToDRRMultiViewReview) and len(session.views) == 2
    at_result = session.update(np.zeros(6))
    before = [slicer.util.arrayFromVolume(v.node)[0].copy() for v in session.views]
    values = [0.0, 0.0, 3.0, 5.0, 0.0, 0.0]
    moved = session.update(values)
    renderer = logic.renderer(ct)
    assert moved < at_result and session.ncc == pytest.approx(np.mean(session.nccs))
    for k, (view, child) in enumerate(zip(session.views, children)):
        world = session.pose().world_from_camera @ views["rig"][k]
        assert np.allclose(matrix(child), world, atol=1e-5)
        now = slicer.util.arrayFromVolume(view.node)[0]
        fresh = renderer.render(dataclasses.replace(view.small, world_from_camera=matrix(child)), "preview")
        assert now.shape == fresh.shape and not np.allclose(now, before[k], atol=1e-3)
        assert np.allclose(now, fresh, atol=1e-5)
        corner = 0.5 * 48 / view.small.width - 0.5  # the preview's first pixel centre in X-ray pixels
        assert np.allclose(ijk_to_ras(view.node) @ [0, 0, 0, 1], ijk_to_ras(xrays[k]) @ [corner, corner, 0, 1])
    assert np.allclose(session.valuesFromNode(), values, atol=1e-6)
    assert session.reset() == pytest.approx(at_result)
    previews = [v.node.GetID() for v in session.views]
    logic.showViews(parent, "difference", review=session)  # each view's preview compared with its X-ray
    session.close()
    assert all(scene.GetNodeByID(i) is None for i in previews)


def test_an_independent_result_loads_each_view_relative_to_the_first(logic, scene, ct_image, tmp_path):
    ct = mrml.sitk_to_volume_node(ct_image, scene, "CT")
    c = center_ras(ct_image)
    poses = [look_at([40.0, 500.0, 30.0], c, [0.0, 0.0, 1.0], 900.0, 24, 32, 4.0),
             look_at([520.0, 20.0, -10.0], c, [0.0, 0.1, 1.0], 1000.0, 20, 30, 4.0),
             look_at([-300.0, 380.0, 60.0], c, [0.0, 0.0, 1.0], 950.0, 24, 24, 4.0)]
    folder = tmp_path / "independent"
    for k, pose in enumerate(poses):
        (folder / f"view-{k + 1}").mkdir(parents=True)
        pose.save(folder / f"view-{k + 1}" / "pose.json")
        (folder / f"view-{k + 1}" / "metrics.json").write_text(json.dumps({"ncc": 0.9}))
    xrays = [mrml.xray_to_volume_node(Xray(np.ones((p.height, p.width), np.float32), p.sdd, p.delx, p.dely),
                                      scene, f"view {k + 1}") for k, p in enumerate(poses)]
    moved = "the views disagree by more than 2 deg / 5 mm: the patient probably moved between the views"
    (folder / "metrics.json").write_text(json.dumps({
        "multiview": {"mode": "independent", "views": 3, "rig": None}, "confidence": 0.8, "warning": moved,
        "consistency": {"moved": True, "max_ray_miss_mm": 9.5},
        "per_view": [{"view": k + 1, "folder": f"view-{k + 1}", "xray": f"x{k}.dcm", "ncc": 0.9, "similarity": None,
                      "confidence": 0.8, "warning": ""} for k in range(3)]}))

    parent, children, drrs, table = logic.loadMultiView(folder, xrays, ct)

    assert parent.GetAttribute("XrayToDRR.multiview") == "independent"
    assert np.allclose(matrix(parent), poses[0].world_from_camera)
    for child, pose, drr in zip(children, poses, drrs):
        assert np.allclose(local(child), np.linalg.inv(poses[0].world_from_camera) @ pose.world_from_camera)
        assert np.allclose(matrix(child), pose.world_from_camera, atol=1e-9)
        assert drr is not None and drr.GetImageData().GetDimensions()[:2] == (pose.width, pose.height)
    assert review.view_names(3) == ["Red", "Yellow", "Green"]
    xml = scene.GetFirstNodeByClass("vtkMRMLLayoutNode").GetLayoutDescription(review.LAYOUT_ID)
    assert [v.get("singletontag") for v in ET.fromstring(xml).iter("view")] == ["Red", "Yellow", "Green"]
    assert composite(scene, "Green").GetForegroundVolumeID() == drrs[2].GetID()
    assert review.confidence_of(folder) == (0.8, moved)  # what the panel's warning dialog shows
    rows = {table.GetCellText(r, 0): table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())}
    assert rows["consistency.max_ray_miss_mm"] == "9.5" and rows["warning"] == moved
    assert np.isnan(float(parent.GetNodeReference("XrayToDRR.viewMetrics").GetCellText(0, 4)))  # similarity
    # moving the patient pose by hand moves every view with it
    shift = np.eye(4)
    shift[:3, 3] = [5.0, 0.0, -3.0]
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift @ poses[0].world_from_camera))
    for child, pose in zip(children, poses):
        assert np.allclose(matrix(child), shift @ pose.world_from_camera, atol=1e-9)
    logic.showCArm(parent)
    assert all(child.GetNodeReference("XrayToDRR.source") is not None for child in children)
    with pytest.raises(InputError, match="not a multi-view registration result"):
        logic.loadMultiView(folder / "view-1")


def test_the_logic_runs_the_verbs_multiview_command_line(module, logic, scene, registered_views):
    ct, xrays, _ = registered_views
    task = logic.registerViews(xrays, ct, mode="independent", initView="ap", wait=False)
    task.cancel()
    command = task.job.command[3:]
    cwd = task.job.declared_outputs[0].parent
    assert command[:3] == ["register", str(cwd / "ap.dcm"), str(cwd / "lat.dcm")]
    assert command[command.index("--multiview") + 1] == "independent" and "--rig" not in command
    assert command[command.index("-o") + 1] == str(cwd / "multiview")
    assert command[command.index("--init-view") + 1] == "ap"
    for default in ("--lr-rot", "--patience", "--max-n-itrs", "--renderer", "--scales", "--collimator"):
        assert default not in command  # the verb's defaults are left to the verb
    xrays[1].SetName("ap")  # two nodes of one name still go to the verb as two files
    task = logic.registerViews(xrays, ct, initView="ap", wait=False)
    task.cancel()
    cwd = task.job.declared_outputs[0].parent
    assert task.job.command[4:6] == [str(cwd / "ap.dcm"), str(cwd / "ap-2.dcm")]
    assert task.job.command[task.job.command.index("--multiview") + 1] == "rigid-rig"  # the default
    from XrayToDRRRegistrationLib.multiview import MODES

    assert module.XrayToDRRRegistrationLogic.MULTIVIEW_MODES == MODES


@pytest.fixture
def registered_views(scene, ct_image):
    ct = mrml.sitk_to_volume_node(ct_image, scene, "CT")
    pose = look_at([40.0, 500.0, 30.0], center_ras(ct_image), [0.0, 0.0, 1.0], 900.0, 16, 16, 4.0)
    xrays = [mrml.xray_to_volume_node(Xray(np.ones((16, 16), np.float32), 900.0, 4.0, 4.0), scene, name)
             for name in ("ap", "lat")]
    return ct, xrays, pose


@pytest.mark.parametrize("problem", ["one view", "missing rig", "same twice", "unknown mode"])
def test_bad_input_raises_before_anything_is_written(logic, scene, registered_views, tmp_path, problem):
    ct, xrays, pose = registered_views
    start = mrml.pose_to_transform_node(pose, scene, "start")
    arguments = {"one view": dict(xrayNodes=xrays[:1]),
                 "missing rig": dict(xrayNodes=xrays, rig=tmp_path / "rig.json"),
                 "same twice": dict(xrayNodes=[xrays[0], xrays[0]]),
                 "unknown mode": dict(xrayNodes=xrays, mode="stereo")}[problem]
    message = {"one view": "at least two X-rays", "missing rig": "rig file not found",
               "same twice": "selected twice", "unknown mode": "unknown multi-view mode"}[problem]
    before = listing(tmp_path)
    with pytest.raises(InputError, match=message):
        logic.registerViews(volumeNode=ct, initPose=start, **arguments)
    assert listing(tmp_path) == before
