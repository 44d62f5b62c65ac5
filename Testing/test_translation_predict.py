"""`xraytodrr translate predict` and `evaluate`: sizes, spacing and DICOM geometry kept, values equal to the engine's,
metrics equal to scikit-image's, reports written, bad input exits 2 with nothing written."""

import csv
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from cli_helpers import run_cli
from translation_fixtures import make_pairs, read_png, write_png16

from XrayToDRRLib.dicom import write_xray_dicom
from XrayToDRRTranslationLib.dataset import normalize, read_gray, to_unit
from XrayToDRRTranslationLib.predict import load_generator, translate_image
from XrayToDRRTranslationLib.train import train


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data folder, checkpoint) after two epochs on 8 tiny pairs."""
    root = tmp_path_factory.mktemp("trained")
    data = make_pairs(root / "data", n=8, size=32, seed=2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(data, root / "run", epochs=2, image_size=32, ngf=8, ndf=8, val_fraction=0.25, device="cpu")
    finally:
        torch.set_num_threads(before)
    return data, root / "run" / "latest.pth.tar"


def _engine(checkpoint, pixels):
    gen, config, dev = load_generator(checkpoint, "cpu")
    return translate_image(gen, config, pixels, dev)


def test_predict_png_folder_keeps_names_and_sizes(tmp_path, trained):
    _, ckpt = trained
    rng = np.random.default_rng(0)
    src = tmp_path / "xrays"
    write_png16(src / "a.png", rng.random((40, 52)))
    write_png16(src / "b.png", rng.random((32, 32)))
    (src / "notes.txt").write_text("not an image")
    result = run_cli("translate", "predict", "-i", src, "--checkpoint", ckpt, "-o", tmp_path / "out", "--device", "cpu",
                     "--progress", "none")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    out = sitk.ReadImage(str(tmp_path / "out" / "a.png"))
    assert out.GetSize() == (52, 40) and out.GetPixelID() == sitk.sitkUInt16
    expected = _engine(ckpt, read_gray(src / "a.png"))
    assert np.array_equal(sitk.GetArrayFromImage(out), np.round(expected * 65535).astype(np.uint16))


def test_predict_nifti_keeps_spacing_origin_and_direction(tmp_path, trained):
    _, ckpt = trained
    img = sitk.GetImageFromArray(np.random.default_rng(1).random((36, 44)).astype(np.float32))
    img.SetSpacing((0.3, 0.7))
    img.SetOrigin((-5.0, 12.5))
    img.SetDirection((0.0, 1.0, 1.0, 0.0))
    sitk.WriteImage(img, str(tmp_path / "x.nii.gz"))
    result = run_cli("translate", "predict", "-i", tmp_path / "x.nii.gz", "--checkpoint", ckpt, "-o", tmp_path / "o",
                     "--device", "cpu", "--progress", "none")
    assert result.exit_code == 0, result.output
    out = sitk.ReadImage(str(tmp_path / "o" / "x.nii.gz"))
    assert out.GetSize() == (44, 36)
    assert out.GetSpacing() == pytest.approx((0.3, 0.7)) and out.GetOrigin() == pytest.approx((-5.0, 12.5))
    assert out.GetDirection() == pytest.approx((0.0, 1.0, 1.0, 0.0))
    values = sitk.GetArrayFromImage(out)
    assert 0.0 <= values.min() and values.max() <= 1.0
    assert np.allclose(values, _engine(ckpt, sitk.GetArrayFromImage(img)), atol=1e-6)


def test_predict_dicom_keeps_geometry_tags_with_a_new_instance_uid(tmp_path, trained):
    _, ckpt = trained
    pixels = np.round(np.random.default_rng(2).random((48, 40)) * 4000).astype(np.uint16)
    src = write_xray_dicom(pixels, tmp_path / "in" / "x.dcm", sdd=1020.0, delx=0.2, dely=0.25, KVP=90.0,
                           PositionerPrimaryAngle=12.5, PositionerSecondaryAngle=-3.0, DistanceSourceToPatient=700.0,
                           ViewPosition="AP")
    result = run_cli("translate", "predict", "-i", src, "--checkpoint", ckpt, "-o", tmp_path / "out", "--device",
                     "cpu", "--progress", "none")
    assert result.exit_code == 0, result.output
    before, after = pydicom.dcmread(src), pydicom.dcmread(tmp_path / "out" / "x.dcm")
    for keyword in ("DistanceSourceToDetector", "ImagerPixelSpacing", "PixelSpacing", "PositionerPrimaryAngle",
                    "PositionerSecondaryAngle", "DistanceSourceToPatient", "ViewPosition", "KVP", "Rows", "Columns",
                    "StudyInstanceUID", "FrameOfReferenceUID", "Modality"):
        assert after[keyword].value == before[keyword].value, keyword
    assert after.SOPInstanceUID != before.SOPInstanceUID
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
    assert after.SeriesInstanceUID != before.SeriesInstanceUID and "DERIVED" in after.ImageType
    expected = _engine(ckpt, pixels.astype(np.float32))
    assert np.array_equal(after.pixel_array, np.round(expected * 65535).astype(np.uint16))


@pytest.mark.parametrize("case, message", [
    ("corrupt checkpoint", "bad.pth.tar: cannot read as a torch checkpoint"),
    ("empty folder", "folder holds no X-ray images"),
    ("unreadable image", "cannot read"),
])
def test_predict_bad_input_exits_2_and_writes_nothing(tmp_path, trained, case, message):
    _, ckpt = trained
    src = tmp_path / "in"
    write_png16(src / "a.png", np.random.default_rng(0).random((32, 32)))
    if case == "corrupt checkpoint":
        ckpt = tmp_path / "bad.pth.tar"
        ckpt.write_bytes(b"\x80\x02 truncated")
    elif case == "empty folder":
        src = tmp_path / "nothing"
        src.mkdir()
    else:
        (src / "z.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    result = run_cli("translate", "predict", "-i", src, "--checkpoint", ckpt, "-o", out, "--device", "cpu")
    assert result.exit_code == 2 and message in result.output and result.output.count("error:") == 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_evaluate_reports_skimage_metrics_per_pair_with_bone_dice(tmp_path, trained):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    data, ckpt = trained
    masks = tmp_path / "masks"
    for p in sorted((data / "drr").iterdir()):
        write_png16(masks / p.name, (read_png(p) > 0.4 * 65535).astype(float))
    out = tmp_path / "eval"
    result = run_cli("translate", "evaluate", "--pairs", data, "--checkpoint", ckpt, "-o", out, "--masks", masks,
                     "--bone-threshold", "0.5", "--device", "cpu", "--progress", "none")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["best.png", "median.png", "metrics.csv", "summary.json",
                                                     "worst.png"]
    rows = {r["name"]: r for r in csv.DictReader(open(out / "metrics.csv"))}
    assert len(rows) == 8
    for name in ("case_00", "case_05"):
        # float64 (skimage computes float32 images in float32; our metrics always run in float64)
        pred = _engine(ckpt, read_gray(data / "xray" / f"{name}.png")).astype(np.float64)
        target = to_unit(normalize(read_gray(data / "drr" / f"{name}.png"))).astype(np.float64)
        assert float(rows[name]["psnr"]) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=1.0),
                                                          abs=1e-9)
        assert float(rows[name]["ssim"]) == pytest.approx(structural_similarity(target, pred, data_range=1.0),
                                                          abs=1e-9)
        assert float(rows[name]["mae"]) == pytest.approx(np.abs(pred - target).mean(), abs=1e-9)
        bone = read_png(masks / f"{name}.png") > 0
        t = target > 0.5
        assert float(rows[name]["dice_target"]) == pytest.approx(2 * (t & bone).sum() / (t.sum() + bone.sum()))
    summary = json.loads((out / "summary.json").read_text())
    psnrs = [float(r["psnr"]) for r in rows.values()]
    assert summary["n_pairs"] == 8 and summary["metrics"]["psnr"]["mean"] == pytest.approx(np.mean(psnrs))
    assert summary["best_case"] == max(rows, key=lambda n: float(rows[n]["psnr"]))
    assert summary["worst_case"] == min(rows, key=lambda n: float(rows[n]["psnr"]))
    assert "PSNR" in result.output and "bone Dice" in result.output


def test_evaluate_bad_input_exits_2_and_writes_nothing(tmp_path, trained):
    data, ckpt = trained
    masks = tmp_path / "masks"
    write_png16(masks / "case_00.png", np.ones((32, 32)))
    result = run_cli("translate", "evaluate", "--pairs", data, "--checkpoint", ckpt, "-o", tmp_path / "e",
                     "--masks", masks, "--device", "cpu")
    assert result.exit_code == 2 and "7 pair(s) have no mask: case_01" in result.output
    foreign = tmp_path / "weights.pt"
    torch.save({"model": {"w": torch.ones(1)}}, foreign)
    result = run_cli("translate", "evaluate", "--pairs", data, "--checkpoint", foreign, "-o", tmp_path / "e")
    assert result.exit_code == 2 and "weights.pt: is not an XrayToDRR pix2pix checkpoint" in result.output
    assert not (tmp_path / "e").exists()
