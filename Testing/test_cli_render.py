"""`xraytodrr drr`: files written, values kept, many poses at once, and bad input -> exit 2 with nothing written."""

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import run_cli
from conftest import CPU_BACKEND

from XrayToDRRLib.pose import standard_view
from XrayToDRRLib.render import DRRRenderer
from XrayToDRRLib.volumes import center_ras


@pytest.fixture
def ap_pose_path(tmp_path, small_ct):
    return standard_view("ap", center_ras(small_ct), 1020, 40, 48, 8.0).save(tmp_path / "ap.json")


def test_drr_npy_equals_the_engine_and_png_is_16_bit(tmp_path, small_ct, small_ct_path, ap_pose_path):
    result = run_cli("drr", "--volume", small_ct_path, "--pose", ap_pose_path, "-o", tmp_path / "ap.npy")
    assert result.exit_code == 0, result.output
    expected = DRRRenderer(small_ct, device="cpu").render(standard_view("ap", center_ras(small_ct), 1020, 40, 48, 8.0))
    assert np.allclose(np.load(tmp_path / "ap.npy"), expected, atol=1e-5)
    assert run_cli("drr", "--volume", small_ct_path, "--pose", ap_pose_path, "-o", tmp_path / "ap.png").exit_code == 0
    png = sitk.ReadImage(str(tmp_path / "ap.png"))
    assert png.GetPixelID() == sitk.sitkUInt16 and png.GetSize() == (48, 40)
    assert sitk.GetArrayFromImage(png).max() == 65535


def test_drr_many_poses_write_one_file_per_pose_named_after_it(tmp_path, small_ct, small_ct_path, ap_pose_path):
    lateral = standard_view("lateral", center_ras(small_ct), 1020, 40, 48, 8.0).save(tmp_path / "lat.json")
    out = tmp_path / "drrs"
    result = run_cli("drr", "--volume", small_ct_path, "--pose", ap_pose_path, "--pose", lateral, "-o", out,
                     "--format", "nii.gz", "--height", "20")
    assert result.exit_code == 0, result.output
    # NIfTI has no room for free text: the renderer's record sits in a sidecar.
    assert sorted(p.name for p in out.iterdir()) == ["ap.nii.gz", "ap.nii.gz.json", "lat.nii.gz", "lat.nii.gz.json"]
    img = sitk.ReadImage(str(out / "ap.nii.gz"))
    assert img.GetSize() == (24, 20) and img.GetSpacing() == pytest.approx((16.0, 16.0))


def test_drr_with_a_mask_renders_only_the_chosen_labels(tmp_path, small_ct, small_ct_path, ap_pose_path):
    arr = np.zeros(sitk.GetArrayFromImage(small_ct).shape, np.uint8)
    arr[:, :, : arr.shape[2] // 2] = 3
    seg = sitk.GetImageFromArray(arr)
    seg.CopyInformation(small_ct)
    sitk.WriteImage(seg, str(tmp_path / "seg.nii.gz"))
    full, half = tmp_path / "full.npy", tmp_path / "half.npy"
    run_cli("drr", "--volume", small_ct_path, "--pose", ap_pose_path, "-o", full)
    result = run_cli("drr", "--volume", small_ct_path, "--pose", ap_pose_path, "-o", half,
                     "--mask", tmp_path / "seg.nii.gz", "--labels", "3")
    assert result.exit_code == 0, result.output
    full, half = np.load(full), np.load(half)
    assert np.all(half <= full + 1e-5)
    # The CT's low i is LPS x = -166 mm, the patient's right, which an AP image shows on the viewer's left.
    assert half[:, :18].mean() > 0.9 * full[:, :18].mean() and half[:, 30:].mean() < 0.1 * full[:, 30:].mean()


def _corrupt_nifti(tmp_path):
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(b"\x1f\x8b not really a nifti" * 10)
    return path


def _flat_image(tmp_path):
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkFloat32), str(path))
    return path


def _bad_pose(tmp_path):
    path = tmp_path / "scaled.json"
    pose = standard_view("ap", [0, 0, 0], 1020, 8, 8, 1.0)
    pose.world_from_camera[:3, :3] *= 1.5
    path.write_text(__import__("json").dumps(pose.to_dict()))
    return path


@pytest.mark.parametrize("case, message", [
    ("missing volume", "not found"),
    ("corrupt volume", "cannot read"),
    ("2D volume", "must be 3D"),
    ("bad pose", "not rigid"),
    ("absent label", "not in segmentation"),
])
def test_drr_bad_input_exits_2_naming_the_file_and_writes_nothing(tmp_path, small_ct_path, ap_pose_path, small_ct,
                                                                   case, message):
    volume, pose, extra = small_ct_path, ap_pose_path, []
    if case == "missing volume":
        volume = tmp_path / "nowhere.nii.gz"
    elif case == "corrupt volume":
        volume = _corrupt_nifti(tmp_path)
    elif case == "2D volume":
        volume = _flat_image(tmp_path)
    elif case == "bad pose":
        pose = _bad_pose(tmp_path)
    elif case == "absent label":
        seg = sitk.Image(small_ct.GetSize(), sitk.sitkUInt8)
        seg.CopyInformation(small_ct)
        seg[1, 1, 1] = 2
        sitk.WriteImage(seg, str(tmp_path / "seg.nii.gz"))
        extra = ["--mask", tmp_path / "seg.nii.gz", "--labels", "7"]
    out = tmp_path / "out" / "drr.png"
    result = run_cli("drr", "--volume", volume, "--pose", pose, "-o", out, *extra)
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.count("error:") == 1
    assert not out.parent.exists() or not any(out.parent.iterdir())


@pytest.mark.parametrize("suffix", [".png", ".nii.gz", ".nrrd", ".npy"])
def test_drr_records_the_renderer_in_the_output(tmp_path, small_ct_path, ap_pose_path, suffix):
    from XrayToDRRLib.images import read_metadata

    out = tmp_path / f"fast{suffix}"
    result = run_cli("drr", "--volume", small_ct_path, "--pose", ap_pose_path, "-o", out, "--renderer", "fast",
                     "--mode", "preview")
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    assert meta["renderer"] == "fast" and meta["mode"] == "preview" and meta["device"] == "cpu"
    assert meta["backend"] == CPU_BACKEND  # auto on a CPU: numba when it imports
