"""The XrayToDRRTranslation module's Logic on slicer-core, as its panel drives it: a `translate predict` job on a
tiny checkpoint gives a volume node on the X-ray's own grid with the engine's values; `pairs` from fabricated
registration folders writes the expected files, honours review decisions (rejected folders left out, an accepted
pose used) and the accepted list kept in the scene by the Registration module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from job_fixtures import CHILD_ENV, write_tiny_ct  # noqa: E402
from slicer_module_stubs import ROOT, load_module_file  # noqa: E402
from translation_fixtures import make_pairs, make_registration_folder, read_png  # noqa: E402

from XrayToDRRLib import mrml  # noqa: E402
from XrayToDRRLib.images import read_metadata  # noqa: E402
from XrayToDRRLib.pose import look_at, perturb  # noqa: E402
from XrayToDRRLib.xray import Xray  # noqa: E402
from XrayToDRRRegistrationLib import mrml as review  # noqa: E402


@pytest.fixture(scope="module")
def module():
    return load_module_file(ROOT / "XrayToDRRTranslation" / "XrayToDRRTranslation.py")


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    slicer.mrmlScene = s
    yield s
    s.Clear(1)


@pytest.fixture
def logic(module, tmp_path, monkeypatch):
    for key, value in CHILD_ENV.items():  # children render and translate on one thread
        monkeypatch.setenv(key, value)
    logic = module.XrayToDRRTranslationLogic()
    logic.workFolder = tmp_path / "work"
    logic.device = "cpu"
    return logic


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny pix2pix checkpoint: one epoch at 32 px, 8 base channels."""
    from XrayToDRRTranslationLib.train import train

    root = tmp_path_factory.mktemp("tiny-run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(make_pairs(root / "data", n=4, size=32, seed=3), root / "run", epochs=1, image_size=32, ngf=8,
                       ndf=8, val_fraction=0.25, device="cpu")
    finally:
        torch.set_num_threads(before)
    return result.checkpoint


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def test_predict_gives_a_node_on_the_xray_grid_with_the_engine_values(logic, scene, checkpoint):
    from XrayToDRRTranslationLib.predict import load_generator, translate_image

    pose = look_at([30.0, 500.0, 40.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 1000.0, 24, 40, 0.5, 0.7)
    pixels = np.random.default_rng(0).random((24, 40)).astype(np.float32) * 900 + 100
    xray = mrml.xray_to_volume_node(Xray(pixels, 1000.0, 0.5, 0.7), scene, "X-ray", pose)

    node = logic.predict(xray, checkpoint, opacity=0.3)  # a background job; waits

    assert node.GetName() == "X-ray translated" and node.GetAttribute("XrayToDRR.kind") == "translated"
    assert node.GetSpacing() == xray.GetSpacing() and node.GetSpacing()[:2] == pytest.approx((0.5, 0.7))
    assert node.GetOrigin() == xray.GetOrigin()
    assert np.allclose(ijk_to_ras(node), ijk_to_ras(xray))
    assert node.GetAttribute("XrayToDRR.translatedFrom") == xray.GetID()
    assert node.GetAttribute("XrayToDRR.sdd") == xray.GetAttribute("XrayToDRR.sdd")
    values = slicer.util.arrayFromVolume(node)
    assert values.shape == (1, 24, 40)
    gen, config, dev = load_generator(checkpoint, "cpu")
    assert np.allclose(values[0], translate_image(gen, config, pixels, dev), atol=1e-5)
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (xray.GetID(), node.GetID())
    assert composite.GetForegroundOpacity() == pytest.approx(0.3)

    from XrayToDRRTranslationLib.mrml import show_translation  # the panel's "beside"

    show_translation(scene, xray, node, "beside")
    views = {c.GetLayoutName(): c for c in
             (scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
              for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")))}
    assert views["Red"].GetBackgroundVolumeID() == xray.GetID() and not views["Red"].GetForegroundVolumeID()
    assert views["Yellow"].GetBackgroundVolumeID() == node.GetID()


@pytest.fixture(scope="module")
def registrations(tmp_path_factory):
    """Four fabricated registration folders of a tiny CT: 'good' (NCC 0.9), 'poor' (0.7), 'moved' (0.8), 'low'
    (0.5)."""
    root = tmp_path_factory.mktemp("registrations")
    ct = write_tiny_ct(root / "ct.nii.gz", n=32, spacing=3.0)
    folders = {}
    for n, (name, ncc) in enumerate((("good", 0.9), ("poor", 0.7), ("moved", 0.8), ("low", 0.5))):
        pose = look_at([400.0 * np.cos(n), 400.0 * np.sin(n), 20.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 800.0, 24,
                       32, 4.0)
        folders[name] = make_registration_folder(root / "cases" / name, ct, pose, ncc, seed=n)
    return root, folders


def test_pairs_from_registration_folders_follow_reviews_and_min_ncc(logic, scene, registrations, tmp_path):
    from XrayToDRRLib.pose import load_pose
    from XrayToDRRLib.render import DRRRenderer
    from XrayToDRRLib.volumes import read_volume

    root, folders = registrations
    cases = {name: tmp_path / "cases" / name for name in folders}
    for name, source in folders.items():  # private copies: reviews are written into the folders
        cases[name].mkdir(parents=True)
        for f in source.iterdir():
            (cases[name] / f.name).write_bytes(f.read_bytes())
    registered = load_pose(cases["moved"] / "pose.json")
    moved = perturb(registered, [0.0, 0.0, 8.0], [12.0, 0.0, -6.0], [0.0, 0.0, 0.0])
    review.write_review(cases["good"], "accept", load_pose(cases["good"] / "pose.json"))
    review.write_review(cases["moved"], "accept", moved, registered, [0, 0, 8, 12, 0, -6], 0.8)
    review.write_review(cases["poor"], "reject", load_pose(cases["poor"] / "pose.json"))
    for name in ("good", "moved", "poor"):
        review.record_review(scene, cases[name], "reject" if name == "poor" else "accept")

    accepted = logic.acceptedRegistrations()
    assert accepted == [cases["good"].resolve(), cases["moved"].resolve()]
    out = tmp_path / "pairs"
    folder, table = logic.buildPairs(f"{cases['good'].parent}; {cases['good']}", out, minNcc=0.6)  # all four

    assert folder == out and table.GetAttribute("XrayToDRR.folder") == str(out)
    assert sorted(p.name for p in (out / "xray").iterdir()) == ["good.png", "moved.png"]
    assert sorted(p.name for p in (out / "drr").iterdir()) == ["good.png", "moved.png"]
    assert (out / "xray" / "good.png").read_bytes() == (folders["good"] / "gt.png").read_bytes()
    image = sitk.ReadImage(str(out / "drr" / "good.png"))
    assert image.GetSize() == (32, 24) and image.GetPixelID() == sitk.sitkUInt16
    assert sitk.GetArrayFromImage(image).max() > 0
    assert read_metadata(out / "drr" / "good.png")["renderer"] == "fast"  # the panel's and the verb's default
    rows = {table.GetCellText(r, 0): table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())}
    assert rows == {"good": "kept", "moved": "kept", "low": "dropped"}  # poor: rejected in review, not a case
    assert (cases["moved"] / "pose.json").read_text() == (folders["moved"] / "pose.json").read_text()  # untouched
    ct = read_volume(root / "ct.nii.gz")
    drr = read_png(folder / "drr" / "moved.png")
    at_review = DRRRenderer(ct, renderer="siddon", device="cpu").render(moved)
    at_registration = DRRRenderer(ct, renderer="siddon", device="cpu").render(registered)
    assert np.corrcoef(drr.ravel(), at_review.ravel())[0, 1] > 0.99
    assert np.corrcoef(drr.ravel(), at_registration.ravel())[0, 1] < 0.95
    row = next(r for r in range(table.GetNumberOfRows()) if table.GetCellText(r, 0) == "moved")
    column = table.GetTable().GetColumnByName("world_from_camera")
    assert np.allclose(json.loads(column.GetValue(row)), moved.world_from_camera, atol=1e-6)
    assert set(logic.splitFolders(f"{accepted[0]};{accepted[1]}")) == {str(a) for a in accepted}


def test_training_history_and_samples_are_read_from_the_run_folder(logic, scene, checkpoint):
    run = checkpoint.parent
    assert logic.latestSample(run) == run / "samples" / "epoch_0001.png"
    history = logic.trainingHistory(run)
    assert [row["epoch"] for row in history] == [1.0] and history[0]["loss_G"] > 0
    table = logic.trainingTable(run)
    assert table.GetNumberOfRows() == 1 and table.GetTable().GetColumnByName("loss_L1") is not None
    assert logic.checkpointOf(run) == run / "latest.pth.tar"
    assert logic.latestSample(run.parent / "nothing") is None
