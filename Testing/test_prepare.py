"""Data preparation: clean-seg, crop (+mirror), coregister, center, prepare, and their CLI verbs."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from prepare_fixtures import (BOXES, ISLANDS, SPACING, box_voxels, ct_seg_files, labelled_phantom,  # noqa: F401
                              oblique_direction, smooth_phantom, write)
from XrayToDRRLib import cli
from XrayToDRRLib.center import center
from XrayToDRRLib.coregister import register
from XrayToDRRLib.crop import crop, label_centroid_ras, mirror_x
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.prepare import prepare, sha256
from XrayToDRRLib.segmentation import clean_seg
from XrayToDRRLib.volumes import center_ras, ras_affine

cli._load_commands()


def run_cli(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False)


def counts(img: sitk.Image) -> dict[int, int]:
    values, n = np.unique(sitk.GetArrayViewFromImage(img), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, n) if v}


# clean-seg

def test_clean_seg_removes_islands_and_reports_voxels():
    _, seg = labelled_phantom()
    cleaned, removed = clean_seg(seg)
    assert removed == {1: 1, 2: 3, 3: 0}
    assert counts(cleaned) == {1: box_voxels(1), 2: box_voxels(2), 3: box_voxels(3)}
    i, j, k = ISLANDS[1][0]
    assert cleaned[i, j, k] == 0 and cleaned.GetPixelID() == seg.GetPixelID()
    assert cleaned.GetOrigin() == seg.GetOrigin()


def test_clean_seg_only_touches_chosen_labels():
    _, seg = labelled_phantom()
    cleaned, removed = clean_seg(seg, [2])
    assert removed == {2: 3}
    assert counts(cleaned)[1] == box_voxels(1) + 1  # label 1 keeps its island


def test_clean_seg_absent_label_lists_present_ones():
    _, seg = labelled_phantom()
    with pytest.raises(InputError, match=r"\[7\].*present: \[1, 2, 3\]"):
        clean_seg(seg, [7], path="seg.nii.gz")


# crop and mirror

def test_crop_extent_is_label_box_plus_padding_in_mm():
    ct, seg = labelled_phantom()
    seg, _ = clean_seg(seg)
    ct_box, seg_box = crop(ct, seg, [1], padding_mm=10.0)
    # 10 mm = 5, 5, 4 voxels of 2, 2, 2.5 mm.
    (i0, i1), (j0, j1), (k0, k1) = BOXES[1]
    assert list(seg_box.GetSize()) == [i1 - i0 + 1 + 10, j1 - j0 + 1 + 10, k1 - k0 + 1 + 8]
    label_extent = np.array([i1 - i0, j1 - j0, k1 - k0]) * SPACING
    crop_extent = (np.array(seg_box.GetSize()) - 1) * SPACING
    np.testing.assert_allclose(crop_extent, label_extent + 2 * 10.0)
    # Same physical place: the crop's first voxel sits 10 mm before the label's first voxel on every axis.
    first_label_voxel = ct.TransformIndexToPhysicalPoint((i0, j0, k0))
    expected = np.array(first_label_voxel) - np.array(ct.GetDirection()).reshape(3, 3) @ np.full(3, 10.0)
    np.testing.assert_allclose(ct_box.GetOrigin(), expected)
    assert counts(seg_box)[1] == box_voxels(1)
    assert ct_box.GetSize() == seg_box.GetSize() and ct_box.GetOrigin() == seg_box.GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct_box),
                                  sitk.GetArrayViewFromImage(ct)[k0 - 4:k1 + 5, j0 - 5:j1 + 6, i0 - 5:i1 + 6])


def test_crop_is_clipped_to_the_image():
    ct, seg = labelled_phantom()
    ct_box, _ = crop(ct, seg, [3], padding_mm=10.0)
    (i0, i1), (j0, j1), (k0, k1) = BOXES[3]  # j starts at 0 and k ends at 19, the last slice
    assert list(ct_box.GetSize()) == [i1 - i0 + 1 + 10, j1 + 1 + 5, 20 - (k0 - 4)]
    np.testing.assert_allclose(ct_box.GetOrigin(), ct.TransformIndexToPhysicalPoint((i0 - 5, 0, k0 - 4)))


def test_negative_padding_is_an_input_error():
    ct, seg = labelled_phantom()
    with pytest.raises(InputError, match="padding"):
        crop(ct, seg, [1], padding_mm=-1.0)


@pytest.mark.parametrize("direction", [None, "oblique"])
def test_mirror_moves_right_anatomy_to_the_left(direction):
    ct, seg = labelled_phantom() if direction is None else labelled_phantom(oblique_direction())
    seg, _ = clean_seg(seg)
    before = label_centroid_ras(seg, [1])
    assert before[0] > 10  # the patient's right
    ct_box, seg_box = crop(ct, seg, [1], padding_mm=4.0, mirror=True)
    after = label_centroid_ras(seg_box, [1])
    # The volume is centred on x = 0, the mirror plane: x changes sign, y and z stay.
    np.testing.assert_allclose(after, [-before[0], before[1], before[2]], atol=1e-6)
    d_in, d_out = (np.array(img.GetDirection()).reshape(3, 3) for img in (ct, ct_box))
    np.testing.assert_allclose(d_out @ d_out.T, np.eye(3), atol=1e-9)  # a proper direction matrix...
    assert np.isclose(np.linalg.det(d_out), np.linalg.det(d_in))  # ...with the input's handedness
    assert counts(seg_box)[1] == box_voxels(1)
    assert float(np.sum(sitk.GetArrayViewFromImage(ct_box))) == float(np.sum(sitk.GetArrayViewFromImage(
        crop(ct, seg, [1], padding_mm=4.0)[0])))


def test_mirror_is_exact_per_voxel_about_any_plane():
    ct, _ = labelled_phantom(oblique_direction(35.0))
    flipped = mirror_x(ct, plane_x=12.5)
    a, b = ras_affine(ct), ras_affine(flipped)
    arr_a, arr_b = (sitk.GetArrayViewFromImage(img) for img in (ct, flipped))
    rng = np.random.default_rng(0)
    for i, j, k in rng.integers(0, [30, 24, 20], size=(50, 3)):
        x, y, z = (a @ [i, j, k, 1])[:3]
        # Where the mirrored image has this voxel's value: the mirror point x' = 2 * 12.5 - x.
        idx = np.linalg.solve(b, [25.0 - x, y, z, 1])[:3]
        np.testing.assert_allclose(idx, np.round(idx), atol=1e-6)
        ii, jj, kk = np.round(idx).astype(int)
        assert arr_b[kk, jj, ii] == arr_a[k, j, i]


# coregister

def _angle_degrees(matrix) -> float:
    m = np.asarray(matrix, float).reshape(3, 3)
    return math.degrees(math.acos(np.clip((np.trace(m) - 1) / 2, -1.0, 1.0)))


def test_coregister_recovers_a_known_rigid_transform():
    fixed = smooth_phantom()
    # 5.4 degrees about an oblique axis and 6 mm: moving(p) = fixed(truth(p)), so the answer is truth's inverse.
    truth = sitk.Euler3DTransform((0, 0, 0), math.radians(3), math.radians(-2), math.radians(4),
                                  (6 / math.sqrt(2), 0.0, -6 / math.sqrt(2)))
    moving = sitk.Resample(fixed, fixed, truth, sitk.sitkLinear, -1000.0)
    result = register(moving, fixed)
    residual = sitk.CompositeTransform([truth, result.transform])  # result first, then truth: ~identity
    points = [(x, y, z) for x in (-25, 0, 25) for y in (-25, 0, 25) for z in (-25, 0, 25)]
    error_mm = max(np.linalg.norm(np.subtract(residual.TransformPoint(p), p)) for p in points)
    angle = _angle_degrees(np.array(truth.GetMatrix()).reshape(3, 3) @ np.array(result.transform.GetMatrix())
                           .reshape(3, 3))
    assert error_mm < 1.0 and angle < 1.0, (error_mm, angle)
    assert result.iterations > 0 and result.metric < -0.5
    assert result.resampled.GetSize() == fixed.GetSize()


def test_coregister_cli_writes_ct_transform_png_and_metrics(tmp_path):
    fixed = smooth_phantom(n=28, spacing=3.0)
    moving = sitk.Resample(fixed, fixed, sitk.Euler3DTransform((0, 0, 0), 0, 0, math.radians(4), (4.0, 0, 0)),
                           sitk.sitkLinear, -1000.0)
    ref, ct = write(fixed, tmp_path / "ref.nii.gz"), write(moving, tmp_path / "pat01.nii.gz")
    result = run_cli("coregister", "--reference", ref, "-o", tmp_path / "out", ct, "--affine", "--progress", "none")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "pat01.nii.gz", "pat01.tfm",
                                                      "pat01_checkerboard.png"]
    header, row = (out / "metrics.csv").read_text().splitlines()
    assert header == "name,final_metric,iterations,seconds,stop_condition"
    name, metric, iterations = row.split(",")[:3]
    assert name == "pat01" and float(metric) < 0 and int(iterations) > 0
    png = sitk.ReadImage(str(out / "pat01_checkerboard.png"))
    assert png.GetSize() == (28, 28) and png.GetPixelID() == sitk.sitkUInt8
    transform = sitk.ReadTransform(str(out / "pat01.tfm"))
    # The transform maps a reference point to the CT: x shifts back by about -4 mm at the rotation centre.
    np.testing.assert_allclose(transform.TransformPoint((0, 0, 0)), (-4.0, 0, 0), atol=1.0)


# center

def test_center_puts_the_centre_at_origin_with_isotropic_voxels():
    ct, seg = labelled_phantom(oblique_direction())
    shift = np.array([31.0, -17.0, 42.0])
    for img in (ct, seg):
        img.SetOrigin((np.array(img.GetOrigin()) + shift).tolist())
    before = label_centroid_ras(seg, [2]) - center_ras(ct)
    out, out_seg = center(ct, spacing=1.5, labels=seg)
    assert out.GetSpacing() == (1.5, 1.5, 1.5)
    assert np.all(np.abs(center_ras(out)) < 0.75)
    np.testing.assert_allclose(out.GetDirection(), ct.GetDirection())
    # 60 x 48 x 50 mm -> 40 x 32 x 34 voxels (50 / 1.5 rounded up)
    assert list(out.GetSize()) == [40, 32, 34]
    assert out.GetPixelID() == sitk.sitkInt16
    # Anatomy moved with the centre: label 2's centroid relative to the volume centre is unchanged.
    np.testing.assert_allclose(label_centroid_ras(out_seg, [2]), before, atol=0.75)
    assert set(counts(out_seg)) == {1, 2, 3}  # nearest neighbour: no blended labels
    assert out_seg.GetPixelID() == sitk.sitkUInt8 and out_seg.GetSize() == out.GetSize()
    # Labelled voxels keep their volume within a few percent; HU stay within the input's range.
    assert abs(counts(out_seg)[2] * 1.5 ** 3 / (box_voxels(2) * 10.0) - 1) < 0.1
    values = sitk.GetArrayViewFromImage(out)
    assert values.min() >= -1024 and values.max() <= 700


def test_center_bspline_and_bad_spacing():
    ct, _ = labelled_phantom()
    out, _ = center(ct, spacing=4.0, interpolator="bspline")
    assert np.all(np.abs(center_ras(out)) < 2.0)
    assert list(out.GetSize()) == [15, 12, 13]  # 60 / 4, 48 / 4, 50 / 4 rounded up
    assert out.GetPixelID() == sitk.sitkInt16
    with pytest.raises(InputError, match="spacing"):
        center(ct, spacing=0.0)


# prepare

def test_prepare_writes_every_step_and_a_manifest(tmp_path, ct_seg_files):
    ct_path, seg_path = ct_seg_files
    out = prepare(ct_path, tmp_path / "prep", seg_path, labels=[1], padding_mm=4.0, mirror=True, spacing=2.0)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["1_clean_seg.nii.gz", "2_crop_ct.nii.gz", "2_crop_seg.nii.gz", "4_center_ct.nii.gz",
                     "4_center_seg.nii.gz", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["ct"]["sha256"] == sha256(ct_path)
    assert manifest["inputs"]["seg"]["sha256"] == sha256(seg_path)
    assert set(manifest["outputs"]) == set(names) - {"manifest.json"}
    assert all(manifest["outputs"][n] == sha256(out / n) for n in manifest["outputs"])
    assert manifest["parameters"]["mirror"] is True and manifest["parameters"]["labels"] == [1]
    assert manifest["steps"]["clean_seg"]["voxels_removed"] == {"1": 1}
    assert manifest["steps"]["crop"]["label_centroid_ras_mm"][0] < 0  # mirrored to the left
    assert {"xraytodrr", "SimpleITK", "numpy", "python"} <= set(manifest["versions"])
    final = sitk.ReadImage(str(out / manifest["final"]["ct"]))
    assert final.GetSpacing() == (2.0, 2.0, 2.0) and np.all(np.abs(center_ras(final)) < 1.0)
    assert set(counts(sitk.ReadImage(str(out / "4_center_seg.nii.gz")))) <= {1, 2, 3}


def test_prepare_with_reference_coregisters(tmp_path):
    fixed = smooth_phantom(n=28, spacing=3.0)
    ct = write(sitk.Resample(fixed, fixed, sitk.TranslationTransform(3, (3.0, 0, 0)), sitk.sitkLinear, -1000.0),
               tmp_path / "ct.nii.gz")
    out = prepare(ct, tmp_path / "prep", reference_path=write(fixed, tmp_path / "ref.nii.gz"), spacing=3.0)
    assert {"3_coreg_ct.nii.gz", "3_coreg.tfm", "3_coreg_checkerboard.png", "3_coreg_metrics.csv",
            "4_center_ct.nii.gz"} <= {p.name for p in out.iterdir()}
    transform = sitk.ReadTransform(str(out / "3_coreg.tfm"))
    np.testing.assert_allclose(transform.TransformPoint((0, 0, 0)), (-3.0, 0, 0), atol=1.0)


def test_prepare_failure_leaves_nothing(tmp_path, ct_seg_files, monkeypatch):
    import XrayToDRRLib.prepare as module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(module, "center", broken)
    with pytest.raises(RuntimeError):
        prepare(ct_seg_files[0], tmp_path / "prep", ct_seg_files[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no folder, no temporary left


def test_prepare_refuses_to_replace_a_foreign_folder(tmp_path, ct_seg_files):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    with pytest.raises(InputError, match="not an earlier prepare output"):
        prepare(ct_seg_files[0], keep)
    assert (keep / "notes.txt").read_text() == "precious"


# CLI

def test_clean_seg_cli_reports_voxels_removed(tmp_path, ct_seg_files):
    result = run_cli("clean-seg", "-i", ct_seg_files[1], "-o", tmp_path / "clean.nii.gz", "--labels", "1,2")
    assert result.exit_code == 0, result.output
    assert "label 1: removed 1 voxels" in result.stdout and "label 2: removed 3 voxels" in result.stdout
    assert counts(sitk.ReadImage(str(tmp_path / "clean.nii.gz")))[2] == box_voxels(2)


def test_prepare_cli_jsonl_reports_done(tmp_path, ct_seg_files):
    result = run_cli("prepare", "--ct", ct_seg_files[0], "--seg", ct_seg_files[1], "-o", tmp_path / "prep",
                     "--labels", "2", "--spacing", "3", "--progress", "jsonl")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1] == {"event": "done", "outputs": [str(tmp_path / "prep")]}
    assert any(e["event"] == "progress" for e in events)


def _bad_inputs(tmp_path, ct_seg_files):
    ct, seg = ct_seg_files
    (tmp_path / "x.nii.gz").write_bytes(b"this is not a NIfTI file at all" * 10)
    flat = sitk.GetImageFromArray(np.zeros((8, 8), np.float32))
    write(flat, tmp_path / "flat.nii.gz")
    empty = sitk.Image(sitk.ReadImage(str(seg)).GetSize(), sitk.sitkUInt8)
    write(empty, tmp_path / "empty.nii.gz")
    out = tmp_path / "out"
    return {
        "missing file": (["center", "-i", tmp_path / "missing.nii.gz", "-o", out / "c.nii.gz"], "missing.nii.gz"),
        "corrupt NIfTI": (["center", "-i", tmp_path / "x.nii.gz", "-o", out / "c.nii.gz"], "x.nii.gz"),
        "2D image": (["center", "-i", tmp_path / "flat.nii.gz", "-o", out / "c.nii.gz"], "flat.nii.gz"),
        "empty segmentation": (["clean-seg", "-i", tmp_path / "empty.nii.gz", "-o", out / "s.nii.gz"], "empty.nii.gz"),
        "label not present": (["crop", "--ct", ct, "--seg", seg, "-o", out, "--labels", "7"], "seg.nii.gz"),
        "negative padding": (["crop", "--ct", ct, "--seg", seg, "-o", out, "--padding=-5"], "--padding"),
        "prepare, label not present": (["prepare", "--ct", ct, "--seg", seg, "-o", out, "--labels", "1,9"],
                                       "seg.nii.gz"),
        "coregister, 2D CT": (["coregister", "--reference", ct, "-o", out, tmp_path / "flat.nii.gz"], "flat.nii.gz"),
    }


BAD = ["missing file", "corrupt NIfTI", "2D image", "empty segmentation", "label not present", "negative padding",
       "prepare, label not present", "coregister, 2D CT"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, ct_seg_files, case):
    args, named = _bad_inputs(tmp_path, ct_seg_files)[case]
    before = sorted(tmp_path.rglob("*"))
    result = run_cli(*args, "--progress", "none")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
    assert sorted(tmp_path.rglob("*")) == before  # no output, no temporary file
