"""The Slicer modules' Logic on slicer-core, as the panel drives it: background steps are real `python -m
XrayToDRRLib` children polled like the panel's QTimer does, cancelled like its Cancel button does (no process or
half-written output left), and a failing child's message is the error dialog's text. Quick steps run in-process.
Every module file of the repository is loaded (application-only parts stood in by slicer_module_stubs)."""

from __future__ import annotations

import json
import time

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from conftest import CPU_BACKEND  # noqa: E402
from job_fixtures import CHILD_ENV, alive, temporary_files, write_tiny_ct  # noqa: E402
from slicer_module_stubs import load_module_file, module_files  # noqa: E402

from XrayToDRRLib import mrml  # noqa: E402
from XrayToDRRLib.dicom import write_xray_dicom  # noqa: E402
from XrayToDRRLib.jobs import JobError  # noqa: E402
from XrayToDRRLib.pose import look_at  # noqa: E402
from XrayToDRRLib.xray import Xray  # noqa: E402

MODULES = module_files()
POLL_S = 0.2  # the panel's QTimer interval


@pytest.fixture(scope="module")
def modules() -> dict:
    return {path.stem: load_module_file(path) for path in MODULES}


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    slicer.mrmlScene = s
    yield s
    s.Clear(1)


@pytest.fixture
def logic(modules, tmp_path, monkeypatch):
    for key, value in CHILD_ENV.items():  # children inherit the environment: one thread each on a shared machine
        monkeypatch.setenv(key, value)
    logic = modules["XrayToDRR"].XrayToDRRLogic()
    logic.workFolder = tmp_path / "work"
    logic.device = "cpu"
    return logic


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    ct = sitk.ReadImage(str(write_tiny_ct(root / "ct.nii.gz", n=32, spacing=3.0)))
    labels = sitk.Cast(sitk.BinaryThreshold(ct, 0.0, 5000.0, 1, 0) + sitk.BinaryThreshold(ct, 500.0, 5000.0, 1, 0),
                       sitk.sitkUInt8)
    return {"ct": ct, "labels": labels}


def add_tiny(scene, tiny, shift=(0.0, 0.0, 0.0)):
    ct = sitk.Image(tiny["ct"])
    ct.SetOrigin(list(np.array(ct.GetOrigin()) + shift))
    labels = sitk.Image(tiny["labels"])
    labels.CopyInformation(ct)
    return mrml.sitk_to_volume_node(ct, scene, "tiny CT"), mrml.sitk_to_volume_node(labels, scene, "tiny labels", True)


def follow(task, until=None, timeout=180.0) -> list[dict]:
    """Poll the task as the panel's timer does, until it ends (or `until(events)` is true); return the events."""
    events, deadline = [], time.monotonic() + timeout
    while task.running and time.monotonic() < deadline:
        events += task.poll()
        if until is not None and until(events):
            return events
        time.sleep(POLL_S)
    assert not task.running, f"{task.title} still running after {timeout} s"
    task.job.wait(10)
    return events + task.poll()


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_every_module_file_loads_and_its_logic_needs_no_widgets(modules, path, scene):
    module = modules[path.stem]
    for suffix in ("", "Widget", "Logic", "Test"):
        assert hasattr(module, f"{path.stem}{suffix}"), f"{path.name} lacks class {path.stem}{suffix}"
    logic = getattr(module, f"{path.stem}Logic")()
    assert not hasattr(logic, "ui")
    assert scene.GetNumberOfNodes() == 0  # creating the Logic adds nothing to the scene


def test_the_engine_requirements_are_installed_here(logic):
    assert logic.dependencies.missing() == []


def test_a_background_step_reports_progress_and_its_outputs_become_nodes(logic, scene, tiny):
    ct, labels = add_tiny(scene, tiny, shift=(40.0, -25.0, 10.0))
    before = scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode")
    task = logic.center(ct, spacing=6.0, segmentationNode=labels, wait=False)
    assert task.job.command[1:4] == ["-m", "XrayToDRRLib", "center"] and task.running

    events = follow(task)
    assert task.job.state == "done", task.job.stderr
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1]["event"] == "done" and len(events[-1]["outputs"]) == 2
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == before  # nothing loaded before finish()

    centred, centred_labels = task.finish()
    assert task.finish() == (centred, centred_labels)  # loaded once
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == before + 2
    assert centred.GetName() == "tiny CT centred" and centred_labels.IsA("vtkMRMLLabelMapVolumeNode")
    image = mrml.volume_node_to_sitk(centred)
    assert image.GetSpacing() == (6.0, 6.0, 6.0)
    bounds = [0.0] * 6
    centred.GetRASBounds(bounds)
    assert np.allclose([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2], 0,
                       atol=1e-3)
    assert set(np.unique(slicer.util.arrayFromVolume(centred_labels))) <= {0, 1, 2}


def test_cancel_stops_the_process_tree_and_keeps_no_output(logic, scene, tiny):
    ct, labels = add_tiny(scene, tiny)
    reference, _ = add_tiny(scene, tiny, shift=(6.0, -4.0, 3.0))
    nodes = scene.GetNumberOfNodes()
    task = logic.prepareAll(ct, labels, reference, spacing=1.0, affine=True, wait=False)
    out = task.job.declared_outputs[0]

    events = follow(task, until=lambda ev: any(e["event"] == "progress" for e in ev))
    assert task.running, f"finished before it could be cancelled: {events}"
    pids = set(task.job.pids)
    task.cancel()  # the panel's Cancel button
    assert task.job.wait(30) == "cancelled"
    task.job.cancel(wait=True)
    assert not [pid for pid in set(task.job.pids) | pids if alive(pid)]
    assert not out.exists() and not temporary_files(out.parent)
    assert task.errorText() == "Preparing: cancelled."
    with pytest.raises(JobError, match="cancelled"):
        task.finish()
    assert scene.GetNumberOfNodes() == nodes


def test_a_failing_child_s_message_is_what_the_error_dialog_shows(logic, scene, tiny):
    ct, labels = add_tiny(scene, tiny)
    task = logic.prepareAll(ct, labels, labels="7", wait=False)
    follow(task)

    assert task.job.state == "failed" and task.job.returncode == 2
    text = task.errorText()
    assert text == f"Preparing failed:\n{task.job.error}"
    assert "label(s) [7] not in segmentation; present: [1, 2]" in text and "Fix: choose labels" in text
    assert "Traceback" not in text
    with pytest.raises(JobError) as err:  # what the console (wait=True) raises
        task.wait()
    assert str(err.value) == text and err.value.returncode == 2
    assert not task.job.declared_outputs[0].exists()


def test_console_render_returns_a_drr_node_on_the_detector_over_the_xray(logic, scene, tiny):
    ct, _ = add_tiny(scene, tiny)
    pose = look_at([0.0, 450.0, 30.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 900.0, 24, 32, 6.0)
    pose_node = mrml.pose_to_transform_node(pose, scene, "pose")
    xray = mrml.xray_to_volume_node(Xray(np.zeros((24, 32), np.float32), 900.0, 6.0, 6.0), scene, "X-ray")

    drr = logic.renderDrr(ct, pose_node, xrayNode=xray, opacity=0.3)  # siddon, a background job; waits
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (xray.GetID(), drr.GetID())
    assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    logic.setOverlayOpacity(0.8)
    assert composite.GetForegroundOpacity() == pytest.approx(0.8)
    assert np.allclose(ijk_to_ras(xray), ijk_to_ras(drr))  # the X-ray moved onto the same detector plane

    fast = logic.renderDrr(ct, pose_node, renderer="fast", mode="full", name="fast DRR")  # in-process, no X-ray
    assert composite.GetBackgroundVolumeID() == fast.GetID() and not composite.GetForegroundVolumeID()
    for node in (drr, fast):
        assert node.GetAttribute("XrayToDRR.kind") == "drr"
        assert np.allclose((ijk_to_ras(node) @ [31, 23, 0, 1])[:3], pose.detector_corners()[2], atol=1e-6)
    rendering = {n: json.loads(node.GetAttribute("XrayToDRR.rendering")) for n, node in (("job", drr), ("fast", fast))}
    assert rendering["job"]["renderer"] == "siddon" and rendering["job"]["device"] == "cpu"
    assert (rendering["fast"]["renderer"], rendering["fast"]["mode"], rendering["fast"]["backend"]) == \
        ("fast", "full", CPU_BACKEND)
    a, b = slicer.util.arrayFromVolume(drr)[0], slicer.util.arrayFromVolume(fast)[0]
    assert a.max() > 0.5 and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98
    source = pose_node.GetNodeReference("XrayToDRR.source")
    assert np.allclose(slicer.util.arrayFromMarkupsControlPoints(source, world=True)[0], pose.source)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 1  # replaced, not added again


def test_quick_steps_clean_crop_import_and_set_sdd_run_in_process(logic, scene, tiny, tmp_path):
    ct, labels = add_tiny(scene, tiny)
    stray = slicer.util.arrayFromVolume(labels)
    stray[0, 0, 0] = 2  # an island of label 2
    slicer.util.arrayFromVolumeModified(labels)
    cleaned = logic.cleanSegmentation(labels)
    assert slicer.util.arrayFromVolume(cleaned)[0, 0, 0] == 0
    assert '"2": 1' in cleaned.GetAttribute("XrayToDRR.removedVoxels")
    cropped_ct, cropped_labels = logic.crop(ct, cleaned, labels="2", padding=0.0)
    assert slicer.util.arrayFromVolume(cropped_ct).shape == slicer.util.arrayFromVolume(cropped_labels).shape
    assert slicer.util.arrayFromVolume(cropped_ct).size < slicer.util.arrayFromVolume(ct).size

    pixels = (np.arange(24 * 32).reshape(24, 32) * 5).astype(np.uint16)
    path = write_xray_dicom(pixels, tmp_path / "x.dcm", sdd=1000.0, delx=0.5)
    ds = pydicom.dcmread(path)
    del ds.DistanceSourceToDetector
    ds.save_as(path)
    assert logic.missingGeometry(path) == ["sdd"]
    with pytest.raises(Exception, match="DistanceSourceToDetector"):
        logic.importXray(path)
    node = logic.importXray(path, sdd=980.0)
    assert float(node.GetAttribute("XrayToDRR.sdd")) == 980.0
    fixed = logic.setSdd(path, 1010.0)
    assert fixed.name == "x_sdd.dcm" and logic.missingGeometry(fixed) == []
    assert float(logic.importXray(fixed).GetAttribute("XrayToDRR.sdd")) == 1010.0

    preview = logic.centerPreview(ct)
    assert ct.GetParentTransformNode() is preview
    logic.removeCenterPreview(ct, preview)
    assert ct.GetParentTransformNode() is None and scene.GetNodeByID(preview.GetID()) is None


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)
