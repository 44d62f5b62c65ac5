"""The XrayToDRRRegistration module on slicer-core: the pose-review math (six values <-> pose <-> transform node),
the live review session (preview DRR over the X-ray, NCC, reset), Accept/Reject (review.json and the accepted list),
the --init-landmarks JSON from two markups nodes, the comparison images, and the command lines the Logic builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from job_fixtures import CHILD_ENV, write_tiny_ct  # noqa: E402
from slicer_module_stubs import ROOT, load_module_file  # noqa: E402

from XrayToDRRLib import mrml  # noqa: E402
from XrayToDRRLib.fast_render import FastRenderer  # noqa: E402
from XrayToDRRLib.pose import look_at  # noqa: E402
from XrayToDRRLib.volumes import center_ras  # noqa: E402
from XrayToDRRLib.xray import Xray  # noqa: E402
from XrayToDRRRegistrationLib import mrml as review  # noqa: E402

CENTER = np.array([5.0, -3.0, 2.0])


@pytest.fixture(scope="module")
def module():
    return load_module_file(ROOT / "XrayToDRRRegistration" / "XrayToDRRRegistration.py")


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    slicer.mrmlScene = s
    yield s
    s.Clear(1)


@pytest.fixture
def logic(module, tmp_path, monkeypatch):
    for key, value in CHILD_ENV.items():
        monkeypatch.setenv(key, value)
    logic = module.XrayToDRRRegistrationLogic()
    logic.workFolder = tmp_path / "work"
    logic.device = "cpu"
    return logic


@pytest.fixture(scope="module")
def ct_image(tmp_path_factory) -> sitk.Image:
    return sitk.ReadImage(str(write_tiny_ct(tmp_path_factory.mktemp("ct") / "ct.nii.gz", n=32, spacing=3.0)))


def oblique_pose(height=48, width=64):
    return look_at([120.0, 420.0, 60.0], [0.0, 0.0, 0.0], [0.0, 0.2, 1.0], 900.0, height, width, 3.0, 2.5)


def matrix(node) -> np.ndarray:
    return slicer.util.arrayFromTransformMatrix(node, toWorld=True)


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


# --- the math -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values", [[0, 0, 0, 0, 0, 0], [10, -5, 20, 30, -12, 7.5], [-40, 30, -44, -150, 150, 0],
                                    [0, 89.0, 0, 1, 2, 3]])
def test_values_to_pose_to_transform_node_and_back(scene, values):
    base = oblique_pose()
    node = mrml.pose_to_transform_node(base, scene, "pose")
    moved = review.review_pose(base, values, CENTER)

    review.set_pose_matrix(node, moved)

    assert np.allclose(matrix(node), moved.world_from_camera, atol=1e-9)
    again = mrml.pose_from_transform_node(node)  # the detector is the node's, untouched
    assert (again.height, again.width, again.sdd, again.delx, again.dely) == (48, 64, 900.0, 3.0, 2.5)
    assert np.allclose(review.review_values(base, again.world_from_camera, CENTER), values, atol=1e-6)
    # the rotation turns about the volume centre: the centre moves by the translation only
    c = np.append(CENTER, 1.0)
    move = moved.world_from_camera @ np.linalg.inv(base.world_from_camera)
    assert np.allclose((move @ c)[:3], CENTER + np.asarray(values[3:], float), atol=1e-9)


def test_set_pose_matrix_respects_a_parent_transform(scene):
    base = oblique_pose()
    parent = mrml.matrix_to_transform_node(np.array([[0, -1, 0, 10], [1, 0, 0, -4], [0, 0, 1, 3], [0, 0, 0, 1.0]]),
                                           scene, "table")
    node = mrml.pose_to_transform_node(base, scene, "pose")
    node.SetAndObserveTransformNodeID(parent.GetID())
    moved = review.review_pose(base, [1, 2, 3, 4, 5, 6], CENTER)
    review.set_pose_matrix(node, moved)
    assert np.allclose(matrix(node), moved.world_from_camera, atol=1e-9)


def test_ncc_and_area_resize():
    rng = np.random.default_rng(0)
    a = rng.random((12, 20))
    assert review.ncc(a, 3 * a + 2) == pytest.approx(1.0)
    assert review.ncc(a, -a) == pytest.approx(-1.0)
    assert review.ncc(a, np.ones_like(a)) == 0.0
    mask = np.zeros(a.shape, bool)
    mask[2:8, 3:15] = True
    b = np.where(mask, 2 * a, rng.random(a.shape))  # related inside the mask only
    assert review.ncc(a, b, mask) == pytest.approx(1.0) and review.ncc(a, b) < 0.9
    big = np.kron(a, np.ones((4, 4)))  # each pixel a 4x4 block
    assert np.allclose(review.resize_area(big, 12, 20), a, atol=1e-6)
    assert review.resize_area(a, 7, 9).mean() == pytest.approx(a.mean())


# --- the review session ---------------------------------------------------------------------------------------------
@pytest.fixture
def registered(scene, ct_image, tmp_path):
    """A CT node, an X-ray node (the CT's DRR at a known pose, on its detector) and a registration folder."""
    ct = mrml.sitk_to_volume_node(ct_image, scene, "CT")
    pose = look_at([40.0, 500.0, 30.0], center_ras(ct_image), [0.0, 0.0, 1.0], 900.0, 48, 64, 2.0)
    image = FastRenderer(ct_image, device="cpu").render(pose, "full")
    xray = mrml.xray_to_volume_node(Xray(image, 900.0, 2.0, 2.0), scene, "X-ray")
    folder = tmp_path / "registration"
    folder.mkdir()
    pose.save(folder / "pose.json")
    (folder / "metrics.json").write_text(json.dumps({"ncc": 0.97, "stages": [1, 2]}))
    return ct, xray, pose, folder


def test_a_loaded_registration_is_nodes_on_the_detector_plane(logic, scene, registered):
    ct, xray, pose, folder = registered
    pose_node, drr, table = logic.loadRegistration(folder, xray, ct)

    assert np.allclose(matrix(pose_node), pose.world_from_camera)
    assert pose_node.GetAttribute("XrayToDRR.registrationFolder") == str(folder)
    assert np.allclose(ijk_to_ras(xray), ijk_to_ras(drr))  # the X-ray moved onto the pose's detector plane
    assert np.allclose((ijk_to_ras(drr) @ [63, 47, 0, 1])[:3], pose.detector_corners()[2])
    assert review.ncc(slicer.util.arrayFromVolume(drr)[0], slicer.util.arrayFromVolume(xray)[0]) > 0.99
    assert {table.GetCellText(r, 0): table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())} == \
        {"ncc": "0.97", "stages": "[1, 2]"}
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (xray.GetID(), drr.GetID())
    source = pose_node.GetNodeReference("XrayToDRR.source")
    assert np.allclose(slicer.util.arrayFromMarkupsControlPoints(source, world=True)[0], pose.source)
    for role, node in (("XrayToDRR.drr", drr), ("XrayToDRR.xray", xray), ("XrayToDRR.metrics", table)):
        assert pose_node.GetNodeReference(role) is node


def test_review_moves_the_node_renders_a_preview_and_reset_returns_the_result(logic, scene, registered):
    ct, xray, pose, folder = registered
    pose_node, drr, _ = logic.loadRegistration(folder, xray, ct)
    session = logic.startReview(pose_node, ct, size=32)
    assert logic.renderer(ct) is session.renderer  # prepared once per CT
    center = logic.volumeCenter(ct)
    assert np.allclose(center, center_ras(mrml.volume_node_to_sitk(ct)))

    at_result = session.update(np.zeros(6))
    values = [2.0, -3.0, 6.0, 12.0, -5.0, 8.0]
    moved = session.update(values)

    assert at_result > 0.98 and moved < at_result - 0.05
    assert np.allclose(matrix(pose_node), review.review_pose(pose, values, center).world_from_camera)
    preview = slicer.util.arrayFromVolume(session.node)
    assert preview.shape == (1, 24, 32) and preview.max() > 0
    # the preview covers the X-ray's field of view: same plane, twice the pixel size, same centre
    assert session.node.GetSpacing()[:2] == pytest.approx((4.0, 4.0))
    assert np.allclose(ijk_to_ras(session.node) @ [15.5, 11.5, 0, 1], ijk_to_ras(xray) @ [31.5, 23.5, 0, 1])

    field = np.zeros((48, 64), np.uint8)  # registration's exposed field: NCC measured inside it
    field[8:40, 8:56] = 1
    from XrayToDRRLib.images import save_image

    save_image(field.astype(float), folder / "field.png")
    masked = logic.startReview(pose_node, ct, size=32)
    assert masked.mask.shape == (24, 32) and masked.mask.sum() == 16 * 24
    masked.close()

    edited = review.review_pose(pose, [1, 2, 3, 4, 5, 6], center)  # a direct edit of the transform
    review.set_pose_matrix(pose_node, edited)
    assert np.allclose(session.valuesFromNode(), [1, 2, 3, 4, 5, 6], atol=1e-6)

    assert session.reset() == pytest.approx(at_result)
    assert np.allclose(matrix(pose_node), pose.world_from_camera, atol=1e-9)
    review.set_pose_matrix(pose_node, edited)
    logic.resetPose(pose_node)  # without a session: the result kept on the node
    assert np.allclose(matrix(pose_node), pose.world_from_camera, atol=1e-9)
    session.close()
    assert scene.GetNodeByID(session.node.GetID() if session.node else "") is None


def test_accept_writes_review_json_and_keeps_the_accepted_list(logic, scene, registered, tmp_path):
    ct, xray, pose, folder = registered
    pose_node, _, _ = logic.loadRegistration(folder, xray, ct)
    session = logic.startReview(pose_node, ct, size=32)
    session.update([0, 0, 1.5, 3, 0, 0])

    path = logic.accept(pose_node, session)

    assert path == folder / "review.json"
    written = json.loads(path.read_text())
    assert written["decision"] == "accept"
    assert np.allclose(written["pose"]["world_from_camera"], matrix(pose_node))
    assert np.allclose(written["registered_pose"]["world_from_camera"], pose.world_from_camera)
    assert written["values"] == pytest.approx({"rx": 0, "ry": 0, "rz": 1.5, "tx": 3, "ty": 0, "tz": 0}, abs=1e-6)
    assert written["ncc"] == pytest.approx(session.ncc)
    assert np.allclose(review.reviewed_pose(folder).world_from_camera, matrix(pose_node))
    assert logic.acceptedRegistrations() == [folder.resolve()]

    other = tmp_path / "other"
    other.mkdir()
    pose.save(other / "pose.json")
    node2, _, _ = logic.loadRegistration(other, xray, ct, name="other")
    logic.reject(node2)
    assert json.loads((other / "review.json").read_text())["decision"] == "reject"
    assert review.reviewed_pose(other) is None
    assert logic.acceptedRegistrations() == [folder.resolve()]
    logic.recordDecision(pose_node, "reject")  # a later decision replaces the earlier one
    assert logic.acceptedRegistrations() == []
    assert review.reviews(scene) == {str(folder.resolve()): "reject", str(other.resolve()): "reject"}


# --- landmarks ------------------------------------------------------------------------------------------------------
def landmark_nodes(scene, pose, pixels, ras):
    """Markups pairs as a user clicks them: each pixel on the X-ray's detector plane, its RAS point on the CT."""
    on_xray = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "X-ray points")
    on_ct = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "CT points")
    for p, r in zip(pose.pixel_to_world(pixels[:, 0], pixels[:, 1]), ras):
        on_xray.AddControlPoint(vtk.vtkVector3d(*p))
        on_ct.AddControlPoint(vtk.vtkVector3d(*r))
    return on_xray, on_ct


def test_landmarks_json_pairs_xray_pixels_with_ct_points_as_the_pose_projects_them(scene, tmp_path):
    pose = oblique_pose()
    xray = mrml.xray_to_volume_node(Xray(np.zeros((48, 64), np.float32), 900.0, 3.0, 2.5), scene, "X-ray", pose)
    rng = np.random.default_rng(1)
    ras = rng.uniform(-60, 60, (5, 3))
    pixels = pose.project(ras)
    on_xray, on_ct = landmark_nodes(scene, pose, pixels, ras)

    path = review.write_landmarks(tmp_path / "landmarks.json", xray, on_xray, on_ct)

    points = json.loads(path.read_text())["points"]
    assert len(points) == 5
    assert np.allclose([p["pixel"] for p in points], pixels, atol=1e-6)
    assert np.allclose([p["ras"] for p in points], ras)

    shift = mrml.matrix_to_transform_node(np.array([[1, 0, 0, 25.0], [0, 1, 0, 0], [0, 0, 1, -8], [0, 0, 0, 1]]),
                                          scene, "moved")
    xray.SetAndObserveTransformNodeID(shift.GetID())  # the X-ray shown elsewhere, its points with it
    on_xray.SetAndObserveTransformNodeID(shift.GetID())
    moved = review.landmark_pairs(xray, on_xray, on_ct)
    assert np.allclose([p["pixel"] for p in moved], pixels, atol=1e-6)

    on_ct.RemoveNthControlPoint(4)
    with pytest.raises(Exception, match="5 X-ray landmarks but 4 CT landmarks"):
        review.landmark_pairs(xray, on_xray, on_ct)


# --- comparison images ----------------------------------------------------------------------------------------------
def test_difference_and_checkerboard_nodes_lie_on_the_drr_plane(logic, scene, registered):
    ct, xray, pose, folder = registered
    pose_node, drr, _ = logic.loadRegistration(folder, xray, ct)
    difference, checker = logic.compare(xray, drr, tiles=4)

    for node in (difference, checker):
        assert np.allclose(ijk_to_ras(node), ijk_to_ras(drr))
        assert slicer.util.arrayFromVolume(node).shape == (1, 48, 64)
    d = slicer.util.arrayFromVolume(difference)[0]
    assert np.abs(d).max() < 0.2  # the X-ray is this DRR
    c = slicer.util.arrayFromVolume(checker)[0]
    a = review.unit_image(slicer.util.arrayFromVolume(xray)[0])
    b = review.unit_image(slicer.util.arrayFromVolume(drr)[0])
    assert np.array_equal(c[:16, :16], a[:16, :16]) and np.array_equal(c[:16, 16:32], b[:16, 16:32])
    composite = logic.showComparison(xray, drr, "checkerboard", comparison=(difference, checker))
    assert composite.GetBackgroundVolumeID() == checker.GetID() and not composite.GetForegroundVolumeID()
    composite = logic.showComparison(xray, drr, "overlay", 0.25)
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (xray.GetID(), drr.GetID())


# --- command lines --------------------------------------------------------------------------------------------------
def test_the_logic_builds_the_verbs_command_lines(logic, scene, registered, tmp_path):
    ct, xray, pose, folder = registered
    pose_node = mrml.pose_to_transform_node(pose, scene, "start")
    on_xray = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "X-ray points")
    on_ct = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "CT points")
    for n in range(4):
        on_xray.AddControlPoint(vtk.vtkVector3d(*(ijk_to_ras(xray) @ [10.0 * n, 5.0 * n, 0.0, 1.0])[:3]))
        on_ct.AddControlPoint(vtk.vtkVector3d(n, 2.0 * n, 0.0))
    labels = mrml.sitk_to_volume_node(sitk.Cast(mrml.volume_node_to_sitk(ct) > 0, sitk.sitkUInt8), scene, "labels",
                                      labelmap=True)
    tasks = []
    try:
        tasks.append(logic.register(xray, ct, initPose=pose_node, segmentationNode=labels, labels="1", crop=4,
                                    similarity="ncc", saveImages=True, extraArgs="--seed 3", wait=False))
        tasks.append(logic.register(xray, ct, landmarks=(on_xray, on_ct), outputFolder=tmp_path / "out",
                                    devices="cpu,cpu", wait=False))
        tasks.append(logic.train(ct, tmp_path / "run", 1020.0, 64, 4.0, nEpochs=1, ranges={"r1": (-5.0, 5.0)},
                                 wait=False))
        tasks.append(logic.finetune(ct, tmp_path / "model.pth", tmp_path / "fine", nEpochs=2, wait=False))
    finally:
        for task in tasks:
            task.cancel()
    first, second, train, finetune = (t.job.command[3:] for t in tasks)
    cwd = tasks[0].job.declared_outputs[0].parent
    assert first[:2] == ["register", str(cwd / "xray.dcm")]
    assert first[first.index("--volume") + 1] == str(cwd / "ct.nrrd") and (cwd / "ct.nrrd").is_file()  # absolute:
    # parameters.pt records it for `pairs` and `evaluate`, run elsewhere
    assert first[first.index("--init-pose") + 1] == "init_pose.json"
    assert np.allclose(json.loads((cwd / "init_pose.json").read_text())["world_from_camera"], pose.world_from_camera)
    assert first[first.index("--mask") + 1] == str(cwd / "mask.nrrd") and first[first.index("--labels") + 1] == "1"
    assert first[first.index("--crop") + 1] == "4" and first[first.index("--similarity") + 1] == "ncc"
    assert "--save-images" in first and first[-4:-2] == ["--seed", "3"]
    for default in ("--lr-rot", "--lr-xyz", "--patience", "--max-n-itrs", "--renderer", "--scales", "--collimator"):
        assert default not in first and default not in second  # the verb's defaults are left to the verb
    assert first[first.index("--device") + 1] == "cpu" and second[second.index("--device") + 1] == "cpu,cpu"
    assert "--model" not in first and "--init-landmarks" not in first
    assert second[second.index("-o") + 1] == str(tmp_path / "out")
    assert second[second.index("--init-landmarks") + 1] == "landmarks.json"
    written = list(tmp_path.glob("work/register-*/landmarks.json"))
    assert len(written) == 1  # the job's folder
    points = json.loads(written[0].read_text())["points"]
    assert [p["ras"] for p in points] == [[n, 2.0 * n, 0.0] for n in range(4)]
    assert np.allclose([p["pixel"] for p in points], [[10.0 * n, 5.0 * n] for n in range(4)])
    assert train[:4] == ["train", "-o", str(tmp_path / "run"), "-i"] and Path(train[4]).is_absolute()
    for flag, value in (("--sdd", "1020.0"), ("--height", "64"), ("--delx", "4.0"), ("--n-epochs", "1")):
        assert train[train.index(flag) + 1] == value
    assert train[train.index("--r1") + 1: train.index("--r1") + 3] == ["-5.0", "5.0"]
    assert "--batch-size" not in train  # None: the verb's default
    assert finetune[0:2] == ["finetune", "-i"] and Path(finetune[2]).name == "ct.nrrd"
    assert finetune[3:7] == ["-c", str(tmp_path / "model.pth"), "-o", str(tmp_path / "fine")]
    (folder / "metrics.json").write_text(json.dumps({"ncc": 0.9, "evaluation": {"final": {"ssim": 0.8}}}))
    loaded, _, _ = logic.loadRegistration(folder, xray, ct)
    task = logic.evaluate(loaded, pose_node, wait=False)
    task.cancel()
    evaluate = task.job.command[3:]
    assert evaluate[:3] == ["evaluate", "--data-dir", str(folder)]
    assert evaluate[evaluate.index("--gt-pose") + 1] == "true_pose.json"
    pictures = [logic.view3d(loaded, ct, wait=False), logic.animate(folder, ct, frames=5, wait=False)]
    for task in pictures:
        task.cancel()
    view3d, animate = (task.job.command[3:] for task in pictures)
    assert view3d[view3d.index("--pose") + 1] == str(folder / "pose.json")
    assert view3d[view3d.index("-o") + 1] == str(folder)
    assert animate[animate.index("--parameters") + 1] == str(folder / "parameters.pt")
    assert animate[animate.index("-o") + 1] == str(folder / "registration.gif") and "--frames" in animate
    table = logic.metricsTable(folder, "metrics")
    assert {table.GetCellText(r, 0): table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())} == \
        {"ncc": "0.9", "evaluation.final.ssim": "0.8"}
    with pytest.raises(Exception, match="no registration output folder"):
        logic.evaluate(pose_node, wait=False)
    with pytest.raises(Exception, match="exactly one initialisation"):
        logic.register(xray, ct, wait=False)
    assert logic.parseRanges("r1 -20 20; tx -30, 30") == {"r1": (-20.0, 20.0), "tx": (-30.0, 30.0)}
    with pytest.raises(Exception, match="cannot read pose range"):
        logic.parseRanges("r9 1 2")


def test_result_folders_load_the_verbs_drr_and_a_folder_run_loads_every_registered_xray(logic, scene, registered,
                                                                                       tmp_path):
    from XrayToDRRLib.images import save_image

    ct, xray, pose, folder = registered
    hq = np.outer(np.arange(48), np.ones(64)).astype(np.float32)
    save_image(hq, folder / "hq_drr.png")  # the verb's final DRR wins over a re-rendered one
    pose_node, drr, _ = logic.loadRegistration(folder, xray, ct)
    assert np.allclose(slicer.util.arrayFromVolume(drr)[0], hq / hq.max(), atol=1e-4)
    assert logic.registrationFigure(folder) is None
    save_image(hq, folder / "registration.png")
    assert logic.registrationFigure(folder) == folder / "registration.png"

    run = tmp_path / "batch"
    for name in ("a", "b"):
        (run / name).mkdir(parents=True)
        pose.save(run / name / "pose.json")
        save_image(slicer.util.arrayFromVolume(xray)[0], run / name / "gt.png")
    (run / "summary.csv").write_text("xray,folder,status,error\n"
                                     f"{tmp_path / 'missing-a.dcm'},{run / 'a'},ok,\n"
                                     f"{tmp_path / 'missing-b.dcm'},b,ok,\n"
                                     f"{tmp_path / 'c.dcm'},{run / 'c'},failed,no geometry\n")
    results = logic.loadRegistrations(run, ct)
    assert [r[1].GetAttribute("XrayToDRR.registrationFolder") for r in results] == [str(run / "a"), str(run / "b")]
    for shown, pose_node, drr, table in results:  # the X-ray files are gone: their gt.png on the detector
        assert shown.GetAttribute("XrayToDRR.kind") == "xray" and np.allclose(ijk_to_ras(shown), ijk_to_ras(drr))


def test_landmark_points_placed_on_the_xray_and_ct_initialise_the_engine_at_the_true_pose(logic, scene, ct_image):
    """The landmarks JSON the panel writes, read by `register --init-landmarks --init-only` (PnP, no optimisation):
    exact correspondences give back the pose the X-ray was taken at."""
    ct = mrml.sitk_to_volume_node(ct_image, scene, "CT")
    pose = look_at([60.0, 480.0, -40.0], center_ras(ct_image), [0.1, 0.0, 1.0], 900.0, 48, 64, 2.0)
    image = FastRenderer(ct_image, device="cpu").render(pose, "full")
    xray = mrml.xray_to_volume_node(Xray(image, 900.0, 2.0, 2.0), scene, "X-ray", pose)  # on its detector
    rng = np.random.default_rng(4)
    ras = center_ras(ct_image) + rng.uniform(-30, 30, (8, 3))
    pixels = pose.project(ras)
    on_xray, on_ct = landmark_nodes(scene, pose, pixels, ras)

    pose_node, drr, table = logic.register(xray, ct, landmarks=(on_xray, on_ct), renderer="fast",
                                           extraArgs="--init-only")

    found = mrml.pose_from_transform_node(pose_node)
    assert np.allclose(found.world_from_camera, pose.world_from_camera, atol=1e-3)
    assert np.allclose(found.project(ras), pixels, atol=1e-3)
    assert review.ncc(slicer.util.arrayFromVolume(drr)[0], image) > 0.99
    assert pose_node.GetAttribute("XrayToDRR.registrationFolder").endswith("X-ray")
