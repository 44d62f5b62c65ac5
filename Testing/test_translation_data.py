"""Translation data: paired folders and their checks, normalisation, metrics vs scikit-image, paired augmentation,
and `xraytodrr pairs` from registration folders and from two volumes."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import run_cli
from conftest import CPU_BACKEND
from translation_fixtures import make_pairs, make_registration_folder, read_png, write_png16

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.pose import perturb, standard_view
from XrayToDRRLib.render import DRRRenderer
from XrayToDRRLib.volumes import center_ras
from XrayToDRRTranslationLib import augment as aug
from XrayToDRRTranslationLib import metrics
from XrayToDRRTranslationLib.dataset import check_pairs, list_pairs, normalize, split_names


# --- paired folders and normalisation -------------------------------------------------------------------------
def test_list_pairs_matches_names_and_lists_the_unmatched(tmp_path):
    make_pairs(tmp_path / "d", n=3, size=32)
    assert [p.name for p in list_pairs(tmp_path / "d")] == ["case_00", "case_01", "case_02"]
    write_png16(tmp_path / "d" / "xray" / "lonely_x.png", np.zeros((32, 32)))
    write_png16(tmp_path / "d" / "drr" / "lonely_d.png", np.zeros((32, 32)))
    with pytest.raises(InputError, match="unmatched names.*lonely_x.*lonely_d"):
        list_pairs(tmp_path / "d")


def test_check_pairs_rejects_size_mismatch_and_rgb_mix(tmp_path):
    make_pairs(tmp_path / "d", n=2, size=32)
    write_png16(tmp_path / "d" / "drr" / "case_01.png", np.zeros((32, 40)))
    with pytest.raises(InputError, match="case_01.png: size 32x32 differs from its DRR's 32x40"):
        check_pairs(list_pairs(tmp_path / "d"))
    make_pairs(tmp_path / "e", n=2, size=32)
    rgb = sitk.GetImageFromArray(np.zeros((32, 32, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "e" / "drr" / "case_01.png"))
    with pytest.raises(InputError, match="grayscale and RGB images are mixed"):
        check_pairs(list_pairs(tmp_path / "e"))


def test_empty_folder_is_an_input_error(tmp_path):
    (tmp_path / "d" / "xray").mkdir(parents=True)
    (tmp_path / "d" / "drr").mkdir()
    with pytest.raises(InputError, match="empty data set"):
        list_pairs(tmp_path / "d")


def test_normalize_maps_robust_percentiles_to_minus_one_one():
    img = np.linspace(0, 1000, 10000).reshape(100, 100)
    img[0, 0] = 1e6  # a hot pixel does not set the range
    out = normalize(img)
    lo, hi = np.percentile(img, [0.5, 99.5])
    assert out.min() == -1.0 and out.max() == 1.0
    assert out[50, 50] == pytest.approx(2 * (img[50, 50] - lo) / (hi - lo) - 1, abs=1e-6)
    assert np.all(normalize(np.full((8, 8), 7.0)) == -1.0)


def test_split_is_seeded_and_keeps_a_training_pair():
    names = [f"n{i}" for i in range(10)]
    train, val = split_names(names, 0.2, seed=3)
    assert len(val) == 2 and sorted(train + val) == names
    assert split_names(names, 0.2, seed=3) == (train, val)
    assert split_names(["a", "b"], 0.9, 0)[0] and split_names(["a"], 0.5, 0) == (["a"], [])


# --- metrics --------------------------------------------------------------------------------------------------
def test_psnr_ssim_mae_match_scikit_image():
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    target = rng.random((40, 37))
    pred = np.clip(target + 0.1 * rng.standard_normal(target.shape), 0, 1)
    assert metrics.psnr(pred, target) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=1.0), 1e-10)
    assert metrics.ssim(pred, target) == pytest.approx(structural_similarity(target, pred, data_range=1.0), 1e-10)
    assert metrics.mse(pred, target) == pytest.approx(mean_squared_error(target, pred), 1e-12)
    assert metrics.mae(pred, target) == pytest.approx(np.abs(pred - target).mean(), 1e-12)
    batch = metrics.ssim(np.stack([pred, target]), np.stack([target, target]))
    assert batch[1] == pytest.approx(1.0) and batch[0] == pytest.approx(metrics.ssim(pred, target))
    assert metrics.dice([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / 3)


# --- augmentation ---------------------------------------------------------------------------------------------
def _dot_pairs(root, n=3, size=48, dot=(14, 31)):
    rng = np.random.default_rng(1)
    for i in range(n):
        xray = 0.05 + 0.01 * rng.random((size, size))
        drr = np.full((size, size), 0.02)
        xray[dot], drr[dot] = 1.0, 1.0
        write_png16(root / "xray" / f"p{i}.png", xray)
        write_png16(root / "drr" / f"p{i}.png", drr)
    return root


def _centroid(img, around, half=3):
    r, c = around
    win = img[r - half:r + half + 1, c - half:c + half + 1].astype(np.float64)
    win = np.clip(win - np.median(win), 0, None)
    rows, cols = np.mgrid[-half:half + 1, -half:half + 1]
    return np.array([r + (rows * win).sum() / win.sum(), c + (cols * win).sum() / win.sum()])


def test_augment_moves_a_planted_dot_to_the_same_pixel_in_both_images(tmp_path):
    src = _dot_pairs(tmp_path / "in", dot=(14, 31))
    out = aug.augment(src, tmp_path / "out", copies=4, seed=5)
    moved = 0
    for k in range(1, 5):
        for i in range(3):
            x = read_png(out / "xray" / f"p{i}_aug{k:02d}.png")
            y = read_png(out / "drr" / f"p{i}_aug{k:02d}.png")
            peak = np.unravel_index(np.argmax(y), y.shape)
            # the input's dot is blurred, gamma-mapped and noisy, yet centred on the target's dot
            assert np.linalg.norm(_centroid(x, peak) - _centroid(y, peak)) < 0.5
            moved += np.linalg.norm(_centroid(y, peak) - (14, 31)) > 1
    assert moved >= 9  # the transforms really move things
    rows = list(csv.DictReader(open(out / "augment.csv")))
    assert len(rows) == 3 * 5 and {r["source"] for r in rows} == {"p0", "p1", "p2"}
    original = read_png(src / "drr" / "p0.png")
    assert np.array_equal(read_png(out / "drr" / "p0.png"), np.round(aug.unit(original) * 65535))


def test_geometry_alone_puts_the_dot_on_the_same_pixel_exactly():
    xray, drr = np.full((48, 48), 0.1), np.zeros((48, 48))
    xray[30, 12], drr[30, 12] = 1.0, 1.0
    for seed in range(12):
        x, y, _ = aug.augment_pair(xray, drr, np.random.default_rng(seed), aug.Settings(photometric=False))
        assert np.unravel_index(np.argmax(x), x.shape) == np.unravel_index(np.argmax(y), y.shape)


def test_dot_lands_where_the_transform_sends_it():
    img = np.zeros((64, 64))
    img[20, 40] = 1.0
    params = {"flip": True, "angle": 0.0, "scale": 1.0, "tx": 0.0, "ty": 0.0, "elastic": 0.0, "elastic_seed": 0}
    assert np.unravel_index(np.argmax(aug.warp(img, aug.sampling_grid(params, img.shape))), img.shape) == (20, 23)
    params.update(flip=False, tx=5 / 64, ty=-3 / 64)
    assert np.unravel_index(np.argmax(aug.warp(img, aug.sampling_grid(params, img.shape))), img.shape) == (17, 45)


def test_photometric_changes_touch_the_input_only():
    rng = np.random.default_rng(0)
    xray, drr = rng.random((40, 40)), rng.random((40, 40))
    x1, y1, p1 = aug.augment_pair(xray, drr, np.random.default_rng(9))
    x2, y2, p2 = aug.augment_pair(xray, drr, np.random.default_rng(9), aug.Settings(photometric=False))
    assert np.array_equal(y1, y2)                      # target: geometry only, with or without photometric
    assert not np.allclose(x1, x2)                     # input: changed by the photometric step
    grid = aug.sampling_grid(p1, drr.shape)
    assert np.allclose(x2, np.clip(aug.warp(aug.unit(xray), grid), 0, 1))
    assert np.allclose(y1, np.clip(aug.warp(aug.unit(drr), grid), 0, 1))


def test_augment_is_reproducible_with_a_seed(tmp_path):
    src = make_pairs(tmp_path / "in", n=2, size=32)
    a = aug.augment(src, tmp_path / "a", copies=2, seed=7)
    b = aug.augment(src, tmp_path / "b", copies=2, seed=7)
    c = aug.augment(src, tmp_path / "c", copies=2, seed=8)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 2 * 2 * 3
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if "aug" in f.name)


def test_augment_refuses_to_write_inside_its_input(tmp_path):
    src = make_pairs(tmp_path / "in", n=2, size=32)
    before = sorted(p.name for p in src.rglob("*"))
    result = run_cli("augment", "-i", src, "-o", src / "aug")
    assert result.exit_code == 2 and result.output.count("error:") == 1
    assert "inside the input" in result.output
    result = run_cli("augment", "-i", src, "-o", tmp_path)  # would replace the folder holding the input
    assert result.exit_code == 2 and "would replace the input" in result.output
    assert sorted(p.name for p in src.rglob("*")) == before


# --- pairs from registration folders ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registrations(tmp_path_factory, small_ct, small_ct_path):
    root = tmp_path_factory.mktemp("reg")
    c = center_ras(small_ct)
    poses = {}
    for i, (view, ncc) in enumerate([("ap", 0.92), ("lateral", 0.35), ("pa", 0.81)]):
        pose = perturb(standard_view(view, c, 1020, 32, 40, 12.0), [0, 0, 4 * i], [2 * i, 0, 0], c)
        make_registration_folder(root / f"case{i}", small_ct_path, pose, ncc, seed=i, extra_metrics={"iters": 9})
        poses[f"case{i}"] = pose
    return root, poses


def test_pairs_writes_matching_names_and_drops_low_ncc_cases_listing_them(tmp_path, registrations, small_ct):
    root, poses = registrations
    out = tmp_path / "paired"
    result = run_cli("pairs", "-o", out, "--min-ncc", "0.5", "--device", "cpu", "--progress", "none",
                     "--renderer", "siddon", root / "case0", root / "case1", root / "case2")
    assert result.exit_code == 0, result.output
    assert "dropped 1: case1 (NCC 0.3500 < 0.5)" in result.output
    assert sorted(p.name for p in (out / "xray").iterdir()) == ["case0.png", "case2.png"]
    assert sorted(p.name for p in (out / "drr").iterdir()) == ["case0.png", "case2.png"]
    # X-ray: exactly what registration saw; DRR: Siddon at the final pose, same size, 16-bit scaled 0..max
    assert (out / "xray" / "case0.png").read_bytes() == (root / "case0" / "gt.png").read_bytes()
    drr = read_png(out / "drr" / "case2.png")
    expected = DRRRenderer(small_ct, renderer="siddon", device="cpu").render(poses["case2"])
    assert drr.shape == (32, 40) == read_png(out / "xray" / "case2.png").shape
    assert np.allclose(drr / 65535, expected / expected.max(), atol=2e-5)
    rows = {r["name"]: r for r in csv.DictReader(open(out / "pairs.csv"))}
    assert rows["case1"]["status"] == "dropped" and "0.35" in rows["case1"]["reason"]
    assert rows["case0"]["status"] == "kept" and float(rows["case0"]["ncc"]) == 0.92
    assert json.loads(rows["case0"]["metrics"]) == {"iters": 9, "ncc": 0.92}
    assert np.allclose(json.loads(rows["case2"]["world_from_camera"]), poses["case2"].world_from_camera, atol=1e-8)
    assert rows["case2"]["volume"].endswith("small_ct.nii.gz") and rows["case2"]["height"] == "32"


def test_pairs_accepts_a_folder_of_registration_folders_and_renders_fast_hq_by_default(tmp_path, registrations,
                                                                                        small_ct):
    from XrayToDRRLib.images import read_metadata

    root, poses = registrations
    result = run_cli("pairs", "-o", tmp_path / "all", "--device", "cpu", "--progress", "none", root)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "all" / "drr").iterdir())) == 3
    drr = tmp_path / "all" / "drr" / "case2.png"
    assert read_metadata(drr) == {"renderer": "fast", "mode": "hq", "backend": CPU_BACKEND, "device": "cpu",
                                  "units": "line integral of attenuation"}
    siddon = DRRRenderer(small_ct, renderer="siddon", device="cpu").render(poses["case2"])
    assert np.corrcoef(read_png(drr).ravel(), siddon.ravel())[0, 1] >= 0.99


def test_pairs_skip_registrations_below_min_confidence_unless_told_otherwise(tmp_path, registrations, small_ct_path):
    root, poses = registrations
    doubtful = make_registration_folder(tmp_path / "doubtful", small_ct_path, poses["case0"], 0.9, extra_metrics={
        "confidence": {"confidence": 0.2, "warning": "low confidence 0.20: ..."}})
    trusted = make_registration_folder(tmp_path / "trusted", small_ct_path, poses["case2"], 0.9,
                                       extra_metrics={"confidence": {"confidence": 0.8, "warning": ""}})
    common = ("--device", "cpu", "--progress", "none", doubtful, trusted, root / "case1")
    result = run_cli("pairs", "-o", tmp_path / "default", *common)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "default" / "drr").iterdir()) == ["case1.png", "trusted.png"]
    rows = {r["name"]: r for r in csv.DictReader(open(tmp_path / "default" / "pairs.csv"))}
    assert rows["doubtful"]["status"] == "dropped" and rows["doubtful"]["reason"] == "confidence 0.200 < 0.5"
    assert rows["case1"]["status"] == "kept"  # written before confidences existed: kept
    result = run_cli("pairs", "-o", tmp_path / "all", "--min-confidence", "0", *common)
    assert result.exit_code == 0 and len(list((tmp_path / "all" / "drr").iterdir())) == 3


@pytest.mark.parametrize("case, message", [
    ("not a registration folder", "no pose.json"),
    ("missing metrics", "lacks metrics.json"),
    ("all below", "all 1 case(s) were dropped by --min-ncc"),
    ("output inside input", "inside the input"),
])
def test_pairs_bad_input_exits_2_and_writes_nothing(tmp_path, registrations, case, message):
    import shutil

    root, _ = registrations
    folder = tmp_path / "copy"
    shutil.copytree(root / "case0", folder)
    out, extra = tmp_path / "out", []
    if case == "not a registration folder":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif case == "missing metrics":
        (folder / "metrics.json").unlink()
    elif case == "all below":
        extra = ["--min-ncc", "0.99"]
    elif case == "output inside input":
        out = folder / "pairs"
    before = sorted(p.name for p in folder.rglob("*"))
    result = run_cli("pairs", "-o", out, "--device", "cpu", *extra, folder)
    assert result.exit_code == 2
    assert message in result.output and result.output.count("error:") == 1
    assert not out.exists()
    assert sorted(p.name for p in folder.rglob("*")) == before


# --- pairs from two volumes -----------------------------------------------------------------------------------
def _volume(arr, spacing=(2.0, 2.0, 3.0)):
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing(spacing)
    return img


def test_pairs_from_two_volumes_cuts_matching_slices(tmp_path):
    rng = np.random.default_rng(0)
    ct = rng.random((6, 20, 24)) * 1000
    ct[0] = 0.0  # a blank slice is dropped and listed
    mri = np.sqrt(ct) + 1.0
    sitk.WriteImage(_volume(mri), str(tmp_path / "mri.nii.gz"))
    sitk.WriteImage(_volume(ct), str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "slices"
    result = run_cli("pairs", "-o", out, "--volumes", tmp_path / "mri.nii.gz", tmp_path / "ct.nii.gz",
                     "--axis", "z", "--progress", "none")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (out / "drr").iterdir())
    assert names == sorted(p.name for p in (out / "xray").iterdir()) == [f"mri_z{k:04d}.png" for k in range(1, 6)]
    assert "mri_z0000 (blank slice)" in result.output
    x, y = read_png(out / "xray" / "mri_z0003.png"), read_png(out / "drr" / "mri_z0003.png")
    assert x.shape == y.shape == (20, 24)
    assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.95  # the same slice of both volumes
    lateral = run_cli("pairs", "-o", tmp_path / "x", "--volumes", tmp_path / "mri.nii.gz", tmp_path / "ct.nii.gz",
                      "--axis", "x", "--progress", "none")
    assert lateral.exit_code == 0 and read_png(tmp_path / "x" / "drr" / "mri_x0003.png").shape == (6, 20)


def test_pairs_from_volumes_on_different_grids_is_an_input_error(tmp_path):
    sitk.WriteImage(_volume(np.ones((4, 8, 8))), str(tmp_path / "a.nii.gz"))
    sitk.WriteImage(_volume(np.ones((4, 8, 8)), spacing=(1.0, 2.0, 3.0)), str(tmp_path / "b.nii.gz"))
    result = run_cli("pairs", "-o", tmp_path / "o", "--volumes", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")
    assert result.exit_code == 2 and "b.nii.gz: grid" in result.output and "resample" in result.output
    assert not (tmp_path / "o").exists()
