"""Simulated X-rays: reproducible, physically different from the DRR, vendor-processed unless raw, and written as
a DX DICOM (or image) with its true pose beside it."""

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from cli_helpers import run_cli
from xray_fixtures import bone_phantom, phantom_pose

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.pose import load_pose
from XrayToDRRLib.render import DRRRenderer
from XrayToDRRLib.simulate import (aec_factor, marker_letter_and_side, material_fractions, path_lengths,
                                   pose_path_for, sample_parameters, simulate_xray, spectrum, write_simulated_xray)
from XrayToDRRLib.xray import read_xray


@pytest.fixture(scope="module")
def ct():
    return bone_phantom()


@pytest.fixture(scope="module")
def pose(ct):
    return phantom_pose(ct)


@pytest.fixture(scope="module")
def drr(ct, pose):
    return DRRRenderer(ct, device="cpu").render(pose)


@pytest.fixture(scope="module")
def regions(ct, pose):
    """Pixel classes from the true material path lengths: rays through bone, through soft tissue only, air only."""
    lw, lb = path_lengths(ct, pose, 1750.0, "cpu")
    return {"bone": lb > 10, "soft": (lb == 0) & (lw > 40), "air": lw == 0}


@pytest.fixture(scope="module")
def sims(ct, pose):
    return {
        "p0": simulate_xray(ct, pose, seed=0, device="cpu"),
        "p0_again": simulate_xray(ct, pose, seed=0, device="cpu"),
        "p1": simulate_xray(ct, pose, seed=1, device="cpu"),
        "r0": simulate_xray(ct, pose, seed=0, raw=True, device="cpu"),
        "r0_again": simulate_xray(ct, pose, seed=0, raw=True, device="cpu"),
    }


def contrast(img, regions):
    """Bone contrast relative to soft-tissue contrast: (bone - soft) / (soft - air), medians."""
    med = {k: np.median(img[m]) for k, m in regions.items()}
    return (med["bone"] - med["soft"]) / (med["soft"] - med["air"])


def test_same_seed_same_image_and_another_seed_another_image(sims, pose):
    assert sims["p0"].shape == (pose.height, pose.width) and sims["p0"].dtype == np.float32
    assert np.array_equal(sims["p0"], sims["p0_again"]) and np.array_equal(sims["r0"], sims["r0_again"])
    assert np.abs(sims["p0"] - sims["p1"]).mean() > 0.01
    assert sample_parameters(0) == sample_parameters(0) and sample_parameters(0) != sample_parameters(1)


def test_presentation_image_is_dense_bright_in_unit_range_and_not_an_affine_drr(sims, drr, regions):
    img = sims["p0"]
    assert img.min() >= 0 and img.max() <= 1
    med = {k: np.median(img[m]) for k, m in regions.items()}
    assert med["bone"] > med["soft"] > med["air"]  # dense = bright
    inner = (slice(8, -8), slice(8, -8))  # inside the collimator blades
    r = np.corrcoef(img[inner].ravel(), drr[inner].ravel())[0, 1]
    assert 0.6 < r < 0.98  # the same anatomy (structured), but not the DRR
    assert 0.6 < np.corrcoef(sims["p1"][inner].ravel(), drr[inner].ravel())[0, 1] < 0.98


def test_raw_image_weights_bone_differently_from_the_drr(sims, drr, regions):
    raw = sims["r0"]
    med = {k: np.median(raw[m]) for k, m in regions.items()}
    assert med["bone"] > med["soft"] > med["air"]
    # polychromatic bone/water attenuation and scatter change bone contrast relative to soft tissue by > 30 %
    assert abs(contrast(raw, regions) / contrast(drr, regions) - 1) > 0.3
    # and no affine map of the DRR reproduces the raw image to within its noise
    a = np.c_[drr.ravel(), np.ones(drr.size)]
    fit = a @ np.linalg.lstsq(a, raw.ravel(), rcond=None)[0]
    residual = raw.ravel() - fit
    noise = np.std(np.diff(raw[regions["air"]]))  # pixel-to-pixel noise in air
    assert np.sqrt(np.mean(residual ** 2)) > 1.5 * noise / np.sqrt(2)


def test_raw_has_no_collimator_border_and_presentation_has_dark_blades(sims, regions, pose):
    params = sample_parameters(0)
    present, raw = sims["p0"], sims["r0"]
    for edge in (present[0], present[-1], present[:, 0], present[:, -1]):
        assert np.allclose(edge, params["collimator_level"], atol=1e-6)
    air = np.median(raw[regions["air"]])
    for edge in (raw[0], raw[-1], raw[:, 0], raw[:, -1]):
        assert edge.std() > 0 and abs(edge.mean() - air) < 0.1  # exposed air, like the rest of the background


def test_side_marker_is_burned_in_on_the_patients_right(sims, ct, pose):
    assert marker_letter_and_side(pose) == ("R", "left")  # AP: the patient's right appears on the image left
    assert marker_letter_and_side(phantom_pose(ct, "lateral"))[0] == "L"  # beam towards the left: left lateral
    img = sims["p0"]
    top_left, top_right = img[2:14, 2:20], img[2:14, -20:-2]
    assert top_left.max() > 0.9 and top_right.max() < 0.6  # a bright lead letter over dark air, one corner only


def test_physics_pieces_spectrum_and_decomposition():
    e, w = spectrum(80.0, 2.5)
    assert len(e) == 20 and e.min() > 18 and e.max() < 80 and np.isclose(w.sum(), 1.0)
    e2, w2 = spectrum(120.0, 2.5)
    assert (e2 * w2).sum() > (e * w).sum()  # higher kVp: harder beam
    water, bone = material_fractions(np.array([-1000.0, 0.0, 50.0, 1750.0, 5000.0]), 1750.0)
    assert np.allclose(water[:3], [0.0, 1.0, 1.05]) and np.allclose(bone[:3], 0.0)
    assert np.isclose(bone[3], 1.0) and water[3] == 0 and bone[4] == 2.5


def _central_noise(raw: np.ndarray) -> float:
    """Pixel-to-pixel noise of the log image over the central quarter, along the rows (S-I: along the phantom's
    rods, so across no edge)."""
    h, w = raw.shape
    c = raw[3 * h // 8:5 * h // 8, 3 * w // 8:5 * w // 8].astype(np.float64)
    return float(np.std(np.diff(c, axis=0)) / np.sqrt(2))


def test_automatic_exposure_control_keeps_the_detector_dose_of_thick_views():
    thin, thick = bone_phantom(spacing=2.5), bone_phantom(spacing=7.5)  # the same body, 3x as thick
    noise = {}
    for exposure in ("aec", "fixed"):
        for name, ct in (("thin", thin), ("thick", thick)):
            pose = phantom_pose(ct)  # the same detector pixels
            noise[exposure, name] = _central_noise(simulate_xray(ct, pose, seed=3, raw=True, device="cpu",
                                                                 exposure=exposure))
    # fixed output: the thick body lets far fewer photons through (quantum noise ~ 1/sqrt(counts) grows);
    # AEC raises the tube output until the detector behind the centre gets its dose, so the noise stays put
    assert noise["fixed", "thick"] > 1.5 * noise["fixed", "thin"]
    assert 0.8 < noise["aec", "thick"] / noise["aec", "thin"] < 1.25
    assert aec_factor(np.full((30, 30), 0.01)) == pytest.approx(100.0)
    with pytest.raises(InputError, match="unknown exposure"):
        simulate_xray(thin, phantom_pose(thin), exposure="manual", device="cpu")


def test_written_dicom_carries_geometry_and_the_true_pose_beside_it(tmp_path, ct, pose, sims):
    image, pose_file = write_simulated_xray(ct, pose, tmp_path / "X.dcm", seed=0, device="cpu")
    assert pose_file == tmp_path / "X.pose.json" == pose_path_for(image)
    saved = load_pose(pose_file)
    assert np.allclose(saved.world_from_camera, pose.world_from_camera) and saved.sdd == pose.sdd
    x = read_xray(image)
    assert (x.sdd, x.delx, x.dely) == (pose.sdd, pose.delx, pose.dely)
    assert x.spacing_source == "ImagerPixelSpacing (0018,1164)" and x.pixels.shape == (pose.height, pose.width)
    assert np.corrcoef(x.pixels.ravel(), sims["p0"].ravel())[0, 1] > 0.9999  # 16-bit copy of the same image
    ds = pydicom.dcmread(image)
    assert ds.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForPresentation and ds.Modality == "DX"
    assert ds.ViewPosition == "AP" and list(ds.PatientOrientation) == ["L", "F"]
    assert float(ds.KVP) == sample_parameters(0)["kvp"] and json.loads(ds.ImageComments)["seed"] == 0
    assert json.loads(ds.ImageComments)["exposure"] == "aec"
    img = sitk.ReadImage(str(image))
    assert img.GetSpacing()[:2] == pytest.approx((pose.delx, pose.dely))
    raw, _ = write_simulated_xray(ct, pose, tmp_path / "raw.dcm", seed=0, raw=True, device="cpu")
    assert pydicom.dcmread(raw).SOPClassUID == pydicom.uid.DigitalXRayImageStorageForProcessing


def test_png_and_nifti_outputs_get_their_pose_and_unknown_types_write_nothing(tmp_path, ct, pose):
    png, png_pose = write_simulated_xray(ct, pose, tmp_path / "a.png", seed=2, device="cpu")
    nii, nii_pose = write_simulated_xray(ct, pose, tmp_path / "b.nii.gz", seed=2, raw=True, device="cpu")
    assert png_pose.name == "a.pose.json" and nii_pose.name == "b.pose.json"
    assert sitk.ReadImage(str(png)).GetPixelID() == sitk.sitkUInt16
    assert sitk.ReadImage(str(nii)).GetSpacing() == pytest.approx((pose.delx, pose.dely))
    with pytest.raises(InputError, match="unknown output type"):
        write_simulated_xray(ct, pose, tmp_path / "c.jpg", device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.pose.json", "b.nii.gz", "b.pose.json"]


def test_simulate_cli_writes_both_files_and_bad_input_exits_2_writing_nothing(tmp_path, ct, pose):
    volume = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct, str(volume))
    good_pose = pose.save(tmp_path / "pose.json")
    bad_pose = tmp_path / "bad.json"
    scaled = pose.to_dict()
    scaled["world_from_camera"][0][0] = 2.0
    bad_pose.write_text(json.dumps(scaled))
    text = tmp_path / "notes.nii.gz"
    text.write_text("not a volume")
    out = tmp_path / "out"
    cases = [
        (["--volume", tmp_path / "missing.nii.gz", "--pose", good_pose], "not found"),
        (["--volume", text, "--pose", good_pose], "cannot read"),
        (["--volume", volume, "--pose", bad_pose], "not rigid"),
        (["--volume", volume, "--pose", tmp_path / "nopose.json"], "not found"),
    ]
    for args, words in cases:
        result = run_cli("simulate-xray", *args, "-o", out / "x.dcm", "--device", "cpu", "--progress", "none")
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
        assert not out.exists()
    result = run_cli("simulate-xray", "--volume", volume, "--pose", good_pose, "-o", out / "x.dcm", "--seed", "4",
                     "--device", "cpu", "--progress", "none", "--exposure", "manual")
    assert result.exit_code == 2 and "unknown exposure" in result.stderr and not out.exists()
    result = run_cli("simulate-xray", "--volume", volume, "--pose", good_pose, "-o", out / "x.dcm", "--seed", "4",
                     "--device", "cpu", "--progress", "none")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["x.dcm", "x.pose.json"]
    assert np.allclose(read_xray(out / "x.dcm").pixels / 65535,
                       simulate_xray(ct, pose, seed=4, device="cpu"), atol=1e-4)
