"""X-ray import (DICOM, PNG, NIfTI), DICOM geometry (xray-info, set-sdd, DX writer), checkpoint inspection."""

import hashlib
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from cli_helpers import run_cli
from xray_fixtures import make_dicom, ramp_pixels

from XrayToDRRLib.dicom import patient_orientation, positioner_angles, set_sdd, view_name, write_xray_dicom, xray_info
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.images import save_image
from XrayToDRRLib.inspect_checkpoint import format_inspection, inspect
from XrayToDRRLib.pose import standard_view
from XrayToDRRLib.xray import read_xray, require_geometry


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- DICOM reading and writing -----------------------------------------------------------------------------------
def test_dx_round_trip_keeps_pixels_sdd_and_spacing_in_pydicom_and_simpleitk(tmp_path):
    pixels = ramp_pixels(24, 32, 60000)
    path = write_xray_dicom(pixels, tmp_path / "x.dcm", sdd=1020.5, delx=0.3, dely=0.25, KVP=110.0, ViewPosition="AP")
    x = read_xray(path)
    assert x.pixels.dtype == np.float32 and x.pixels.shape == (24, 32)
    assert np.array_equal(x.pixels, pixels.astype(np.float32))
    assert (x.sdd, x.delx, x.dely) == (1020.5, 0.3, 0.25)
    assert x.sdd_source == "DistanceSourceToDetector (0018,1110)"
    assert x.spacing_source == "ImagerPixelSpacing (0018,1164)"
    assert x.photometric == "MONOCHROME2" and x.n_frames == 1 and x.metadata["KVP"] == 110.0
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForPresentation
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == "DX" and ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.25, 0.3] == [float(v) for v in ds.PixelSpacing]
    img = sitk.ReadImage(str(path))
    assert img.GetSpacing()[:2] == pytest.approx((0.3, 0.25))
    assert np.array_equal(sitk.GetArrayFromImage(img).reshape(24, 32), pixels)
    other = write_xray_dicom(pixels, tmp_path / "y.dcm", 1000, 0.3, for_processing=True)
    ds2 = pydicom.dcmread(other)
    assert ds2.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForProcessing
    assert ds2.SOPInstanceUID != ds.SOPInstanceUID and ds2.StudyInstanceUID != ds.StudyInstanceUID


def test_float_images_are_scaled_linearly_onto_16_bits(tmp_path):
    img = np.linspace(-1.5, 2.5, 24 * 32).reshape(24, 32)
    x = read_xray(write_xray_dicom(img, tmp_path / "f.dcm", 1000, 0.5))
    assert x.pixels.min() == 0 and x.pixels.max() == 65535
    assert np.corrcoef(x.pixels.ravel(), img.ravel())[0, 1] > 0.99999
    assert x.delx == x.dely == 0.5


def test_monochrome1_is_inverted_so_dense_is_bright_like_monochrome2(tmp_path):
    v = ramp_pixels()
    m2 = read_xray(make_dicom(tmp_path / "m2.dcm", v, bits_stored=12))
    m1 = read_xray(make_dicom(tmp_path / "m1.dcm", v, bits_stored=12, photometric="MONOCHROME1"))
    assert m1.photometric == "MONOCHROME1"
    assert np.array_equal(m2.pixels, v.astype(np.float32))
    assert np.array_equal(m1.pixels, 4095 - v.astype(np.float32))  # within the 12-bit stored range
    # with a rescale, the inversion happens in modality units over the rescaled range
    r1 = read_xray(make_dicom(tmp_path / "r1.dcm", v, bits_stored=12, photometric="MONOCHROME1", slope=2.0,
                              intercept=-100.0))
    assert np.allclose(r1.pixels, (-100 + 2 * 4095 - 100) - (2.0 * v - 100))


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    v = ramp_pixels()
    x = read_xray(make_dicom(tmp_path / "r.dcm", v, slope=2.5, intercept=-1024.0))
    assert np.allclose(x.pixels, 2.5 * v.astype(np.float64) - 1024.0)
    only_intercept = read_xray(make_dicom(tmp_path / "i.dcm", v, intercept=10.0))
    assert np.allclose(only_intercept.pixels, v + 10.0)


def test_multi_frame_is_reduced_by_max_mean_or_first(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4000, (3, 16, 20)).astype(np.uint16)
    path = make_dicom(tmp_path / "mf.dcm", frames=frames)
    assert read_xray(path).n_frames == 3
    assert np.array_equal(read_xray(path).pixels, frames.max(0).astype(np.float32))
    assert np.allclose(read_xray(path, reduce="mean").pixels, frames.mean(0), atol=1e-3)
    assert np.array_equal(read_xray(path, reduce="first").pixels, frames[0].astype(np.float32))
    assert read_xray(path, reduce="mean").metadata["frame_reduction"] == "mean"
    with pytest.raises(InputError, match="max, mean, first"):
        read_xray(path, reduce="median")


def test_pixel_spacing_falls_back_to_pixelspacing_and_arguments_override(tmp_path):
    path = make_dicom(tmp_path / "ps.dcm", imager_spacing=None, pixel_spacing=(0.2, 0.4))
    x = read_xray(path)
    assert (x.dely, x.delx, x.spacing_source) == (0.2, 0.4, "PixelSpacing (0028,0030)")
    y = read_xray(path, sdd=900, pixel_spacing=0.15)
    assert (y.sdd, y.delx, y.dely, y.sdd_source, y.spacing_source) == (900.0, 0.15, 0.15, "--sdd", "--pixel-spacing")
    assert read_xray(path, pixel_spacing="0.1,0.2").delx == 0.2
    with pytest.raises(InputError, match="positive"):
        read_xray(path, sdd=-5)


def test_require_geometry_names_the_missing_tags(tmp_path):
    no_sdd = read_xray(make_dicom(tmp_path / "a.dcm", sdd=None))
    with pytest.raises(InputError) as e:
        require_geometry(no_sdd)
    msg = str(e.value)
    assert "a.dcm" in msg and "DistanceSourceToDetector (0018,1110)" in msg and "--sdd" in msg
    assert "PixelSpacing" not in msg
    no_spacing = read_xray(make_dicom(tmp_path / "b.dcm", imager_spacing=None))
    with pytest.raises(InputError) as e:
        require_geometry(no_spacing)
    assert "ImagerPixelSpacing (0018,1164) or PixelSpacing (0028,0030)" in str(e.value)
    assert "DistanceSourceToDetector" not in str(e.value) and "--pixel-spacing" in str(e.value)
    complete = read_xray(make_dicom(tmp_path / "c.dcm"))
    assert require_geometry(complete) is complete


# --- other formats and bad files --------------------------------------------------------------------------------
def test_png_needs_sdd_and_pixel_spacing_and_rgb_becomes_gray(tmp_path):
    png = tmp_path / "photo.png"
    sitk.WriteImage(sitk.GetImageFromArray(ramp_pixels(20, 30, 60000)), str(png))
    with pytest.raises(InputError) as e:
        read_xray(png)
    msg = str(e.value)
    assert str(png) in msg and "--sdd" in msg and "--pixel-spacing" in msg
    with pytest.raises(InputError) as e:
        read_xray(png, sdd=1000)
    assert "--pixel-spacing" in str(e.value) and "--sdd" not in str(e.value)
    x = read_xray(png, sdd=1000, pixel_spacing=0.2)
    assert np.array_equal(x.pixels, ramp_pixels(20, 30, 60000).astype(np.float32)) and x.delx == x.dely == 0.2
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    rgb_path = tmp_path / "rgb.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(rgb_path))
    gray = read_xray(rgb_path, sdd=1000, pixel_spacing=0.2).pixels
    assert gray.shape == (10, 12) and np.allclose(gray, 0.299 * 100 + 0.587 * 200 + 0.114 * 50)


def test_2d_nifti_takes_spacing_from_the_header_and_needs_sdd(tmp_path):
    img = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    path = save_image(img, tmp_path / "x.nii.gz", spacing=(0.2, 0.3))
    with pytest.raises(InputError, match="--sdd"):
        read_xray(path)
    x = read_xray(path, sdd=1000)
    assert np.array_equal(x.pixels, img) and (x.dely, x.delx) == pytest.approx((0.2, 0.3))
    vol = sitk.GetImageFromArray(np.zeros((5, 6, 7), np.float32))
    sitk.WriteImage(vol, str(tmp_path / "ct.nii.gz"))
    with pytest.raises(InputError, match="not a 2D X-ray"):
        read_xray(tmp_path / "ct.nii.gz", sdd=1000)


def test_bad_files_name_the_file_and_the_fix(tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("not an image")
    with pytest.raises(InputError, match="not a DICOM file") as e:
        read_xray(text)
    assert str(text) in str(e.value) and "Fix:" in str(e.value)
    good = make_dicom(tmp_path / "good.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-500])
    with pytest.raises(InputError) as e:
        read_xray(truncated)
    assert str(truncated) in str(e.value)
    with pytest.raises(InputError, match="not found"):
        read_xray(tmp_path / "missing.dcm")
    with pytest.raises(InputError, match="folder"):
        read_xray(tmp_path)
    broken_png = tmp_path / "broken.png"
    broken_png.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="cannot read"):
        read_xray(broken_png, sdd=1000, pixel_spacing=0.2)


# --- xray-info and set-sdd -----------------------------------------------------------------------------------------
def test_xray_info_reports_geometry_and_names_the_missing_tag(tmp_path):
    info = xray_info(make_dicom(tmp_path / "a.dcm", sdd=None, bits_stored=12, photometric="MONOCHROME1"))
    assert info["missing"] == ["DistanceSourceToDetector (0018,1110)"] and not info["ready"]
    assert info["pixel_spacing_mm"] == [0.25, 0.3] and info["pixel_spacing_tag"] == "ImagerPixelSpacing (0018,1164)"
    assert info["size"] == [24, 32] and info["frames"] == 1 and info["photometric_interpretation"] == "MONOCHROME1"
    assert any("set-sdd" in n for n in info["notes"])
    full = xray_info(make_dicom(tmp_path / "b.dcm"))
    assert full["ready"] and full["sdd_mm"] == 1020.0 and full["sdd_tag"] == "DistanceSourceToDetector (0018,1110)"
    png = tmp_path / "p.png"
    sitk.WriteImage(sitk.GetImageFromArray(ramp_pixels()), str(png))
    assert xray_info(png)["missing"] == ["SDD (source-to-detector distance)", "pixel spacing"]


def test_xray_info_cli_prints_json_exit_0_and_exit_2_for_unreadable_or_check(tmp_path):
    path = make_dicom(tmp_path / "a.dcm", sdd=None)
    result = run_cli("xray-info", path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["missing"] == ["DistanceSourceToDetector (0018,1110)"]
    checked = run_cli("xray-info", path, "--check")
    assert checked.exit_code == 2 and checked.stdout == ""
    assert checked.stderr.count("\n") == 1 and "DistanceSourceToDetector (0018,1110)" in checked.stderr
    text = tmp_path / "t.dcm"
    text.write_text("hello")
    bad = run_cli("xray-info", text)
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert "not a DICOM" in bad.stderr


def test_set_sdd_writes_a_new_instance_and_leaves_the_input_byte_identical(tmp_path):
    src = make_dicom(tmp_path / "in.dcm", sdd=None)
    before = sha(src)
    old_uid = pydicom.dcmread(src).SOPInstanceUID
    out = set_sdd(src, tmp_path / "out.dcm", 1020)
    assert sha(src) == before
    ds = pydicom.dcmread(out)
    assert ds.SOPInstanceUID != old_uid and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert float(ds.DistanceSourceToDetector) == 1020.0
    x = require_geometry(read_xray(out))
    assert np.array_equal(x.pixels, read_xray(src).pixels) and (x.delx, x.dely) == (0.3, 0.25)
    with pytest.raises(InputError, match="never overwrites"):
        set_sdd(src, src, 1000)
    assert sha(src) == before
    spaced = set_sdd(src, tmp_path / "spaced.dcm", 1100, pixel_spacing=0.14)
    assert [float(v) for v in pydicom.dcmread(spaced).ImagerPixelSpacing] == [0.14, 0.14]


def test_set_sdd_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path):
    no_spacing = make_dicom(tmp_path / "nospacing.dcm", imager_spacing=None, sdd=None)
    text = tmp_path / "text.dcm"
    text.write_text("not dicom")
    cases = [
        (["-i", tmp_path / "missing.dcm", "-o", tmp_path / "o1.dcm", "--sdd", "1000"], "not found"),
        (["-i", text, "-o", tmp_path / "o2.dcm", "--sdd", "1000"], "not a DICOM"),
        (["-i", no_spacing, "-o", tmp_path / "o3.dcm", "--sdd", "1000"], "ImagerPixelSpacing (0018,1164)"),
        (["-i", no_spacing, "-o", no_spacing, "--sdd", "1000", "--pixel-spacing", "0.2"], "never overwrites"),
        (["-i", no_spacing, "-o", tmp_path / "o5.dcm", "--sdd", "-3", "--pixel-spacing", "0.2"], "positive"),
    ]
    before = sha(no_spacing)
    for args, words in cases:
        result = run_cli("set-sdd", *args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nospacing.dcm", "text.dcm"]
    assert sha(no_spacing) == before
    ok = run_cli("set-sdd", "-i", no_spacing, "-o", tmp_path / "ok.dcm", "--sdd", "1000", "--pixel-spacing", "0.2")
    assert ok.exit_code == 0, ok.output
    assert xray_info(tmp_path / "ok.dcm")["ready"]


# --- pose -> DICOM positioning ------------------------------------------------------------------------------------
def test_positioner_angles_orientation_and_view_names_of_standard_views():
    ap = standard_view("ap", [0, 0, 0], 1000, 8, 8, 1.0)
    lateral = standard_view("lateral", [0, 0, 0], 1000, 8, 8, 1.0)
    pa = standard_view("pa", [0, 0, 0], 1000, 8, 8, 1.0)
    assert positioner_angles(pa) == (0.0, 0.0) and positioner_angles(ap) == (180.0, 0.0)
    assert positioner_angles(lateral) == (90.0, 0.0)  # detector on the patient's left: LAO 90
    assert (view_name(ap), view_name(pa), view_name(lateral)) == ("AP", "PA", "LL")
    assert patient_orientation(ap) == ["L", "F"] and patient_orientation(lateral) == ["A", "F"]


# --- checkpoint inspection ----------------------------------------------------------------------------------------
def test_inspect_lists_nested_shapes_and_summarises_a_canonical_pose(tmp_path):
    pose = standard_view("lateral", [1.0, 2.0, 3.0], 1020, 64, 48, 1.5)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"model": net.state_dict(), "epoch": 7, "losses": [0.5] * 50, "pose": pose.to_dict(),
                "extra": {"matrix": torch.eye(4, dtype=torch.float64), "names": ["a", "b"]},
                "array": np.zeros((2, 3), np.float32)}, path)
    info = inspect(path)
    entries = {e["key"]: e for e in info["entries"]}
    assert entries["model.0.weight"]["shape"] == [4, 1, 3, 3] and entries["model.0.weight"]["dtype"] == "float32"
    assert entries["model.1.num_batches_tracked"]["dtype"] == "int64"
    assert entries["epoch"]["value"] == 7 and entries["losses[0:50]"]["count"] == 50
    assert entries["array"]["shape"] == [2, 3] and entries["pose.world_from_camera"]["shape"] == [4, 4]
    canonical = [p for p in info["poses"] if p["kind"] == "canonical pose"]
    assert len(canonical) == 1 and canonical[0]["key"] == "pose"
    assert canonical[0]["source_ras_mm"] == pytest.approx(pose.source.tolist())
    assert canonical[0]["viewing_direction_ras"] == pytest.approx([-1.0, 0.0, 0.0]) and canonical[0]["view"] == "LL"
    assert any(p["key"] == "extra.matrix" for p in info["poses"])
    text = format_inspection(info)
    assert "model.0.weight" in text and "float32 [4, 1, 3, 3]" in text and "view: LL" in text
    result = run_cli("inspect", path)
    assert result.exit_code == 0 and "float32 [4, 1, 3, 3]" in result.stdout
    assert json.loads(run_cli("inspect", path, "--json").stdout)["n_tensors"] == info["n_tensors"]


class _Custom:
    pass


def test_inspect_refuses_unreadable_or_unsafe_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read") as e:
        inspect(garbage)
    assert str(garbage) in str(e.value)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": _Custom()}, unsafe)
    with pytest.raises(InputError, match="pickled Python object"):
        inspect(unsafe)
    result = run_cli("inspect", garbage)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
