"""evaluate (image metrics by hand, pose errors on known offsets, merged metrics.json), view3d and animate."""

import json
import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from registration_fixtures import listing, quick_result, run_ok  # noqa: F401

from XrayToDRRLib.pose import Pose, perturb, standard_view
from XrayToDRRLib.volumes import center_ras
from XrayToDRRRegistrationLib import results as R
from XrayToDRRRegistrationLib.evaluate import bone_points, image_metrics, pose_errors


def test_image_metrics_match_hand_computed_values():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 1, (40, 50))
    gt[0, 0], gt[-1, -1] = 0.0, 1.0
    drr = 0.5 * gt + 0.5 * rng.uniform(0, 1, (40, 50))
    m = image_metrics(gt, 10 * drr + 3)  # each image is rescaled to [0, 1] first
    unit = (drr - drr.min()) / (drr.max() - drr.min())
    assert m["mse"] == pytest.approx(np.mean((gt - unit) ** 2), rel=1e-9)
    assert m["ncc"] == pytest.approx(np.corrcoef(gt.ravel(), drr.ravel())[0, 1], rel=1e-9)
    same = image_metrics(gt, gt)
    assert same["mse"] == 0 and same["ssim"] == pytest.approx(1.0) and same["ncc"] == pytest.approx(1.0)
    assert same["nmi"] == pytest.approx(2.0)
    assert m["ssim"] < 0.9 and 1.0 < m["nmi"] < 2.0


def test_pose_errors_of_a_pure_translation_are_exactly_its_length(small_ct):
    c = center_ras(small_ct)
    true = standard_view("lateral", c, 1020, 64, 64, 4.8)
    d = np.array([3.0, -4.0, 12.0])
    moved = Pose(true.world_from_camera.copy(), 1020, 64, 64, 4.8, 4.8)
    moved.world_from_camera[:3, 3] += d
    e = pose_errors(true, moved, bone_points(small_ct), c)
    assert e["mtre_mm"] == pytest.approx(13.0, abs=1e-9)
    assert e["translation_mm"] == pytest.approx(13.0, abs=1e-9) and e["source_mm"] == pytest.approx(13.0)
    assert e["rotation_deg"] == pytest.approx(0.0, abs=1e-6)
    assert e["depth_mm"] == pytest.approx(-d @ true.principal_ray, abs=1e-9)
    # a rotation about the volume centre moves the points but not the centre
    turned = perturb(true, [0, 0, 2.0], [0, 0, 0], c)
    e = pose_errors(true, turned, bone_points(small_ct), c)
    assert e["rotation_deg"] == pytest.approx(2.0, abs=1e-6) and e["translation_mm"] == pytest.approx(0, abs=1e-9)
    assert e["mtre_mm"] > 1.0 and e["mrpe_mm"] > 1.0


def test_bone_points_are_deterministic_and_at_most_5000(small_ct):
    a, b = bone_points(small_ct), bone_points(small_ct)
    assert np.array_equal(a, b) and 1000 < len(a) <= 5000


def test_evaluate_writes_figure_merges_metrics_and_finds_the_true_pose(quick_result, tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(quick_result["folder"], folder)
    before = json.loads((folder / R.METRICS).read_text())
    run_ok("evaluate", "--data-dir", folder, "--title-suffix", "(test)", "--output-name", "fig.png", "--progress",
           "none")
    after = json.loads((folder / R.METRICS).read_text())
    assert {k: after[k] for k in before} == before  # merged, nothing clobbered
    assert Image.open(folder / "fig.png").size[0] > 600
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / R.GT)))
    hq = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / R.HQ_DRR)))
    assert after["evaluation"]["hq"]["ncc"] == pytest.approx(np.corrcoef(gt.ravel(), hq.ravel())[0, 1], abs=1e-9)
    errors = after["pose_error"]
    assert errors["gt_pose"] == str(quick_result["xray"]).replace(".dcm", ".pose.json")
    # a true pose given explicitly: the final pose itself -> zero error
    run_ok("evaluate", "--data-dir", folder, "--gt-pose", folder / R.POSE, "--progress", "none")
    final = json.loads((folder / R.METRICS).read_text())["pose_error"]["final"]
    assert final["mtre_mm"] == pytest.approx(0.0, abs=1e-9) and final["rotation_deg"] == pytest.approx(0, abs=1e-5)


def test_view3d_writes_a_png_and_a_self_contained_html(quick_result, tmp_path):
    run_ok("view3d", "--volume", quick_result["ct"], "--pose", quick_result["folder"] / R.PARAMETERS, "-o",
           tmp_path / "v", "--device", "cpu", "--progress", "none")
    assert sorted(listing(tmp_path / "v")) == ["view3d.html", "view3d.png"]
    html = (tmp_path / "v" / "view3d.html").read_text()
    assert "<canvas" in html and "data:image/png;base64," in html and "http://" not in html \
        and "https://" not in html and "<script src" not in html
    data = json.loads(html.split("const D = ")[1].split(";\n")[0])
    assert len(data["faces"]) > 100 and len(data["corners"]) == 4
    pose = Pose.from_dict(json.loads((quick_result["folder"] / R.POSE).read_text()))
    assert np.allclose(data["source"], pose.source, atol=0.01)
    assert Image.open(tmp_path / "v" / "view3d.png").size[0] >= 600


def test_animate_writes_a_gif_with_one_frame_per_sampled_iteration(quick_result, tmp_path):
    run_ok("animate", "--volume", quick_result["ct"], "--parameters", quick_result["folder"] / R.PARAMETERS,
           "-o", tmp_path / "a.gif", "--frames", "5", "--device", "cpu", "--progress", "none")
    gif = Image.open(tmp_path / "a.gif")
    assert gif.format == "GIF" and gif.n_frames == 6  # 5 sampled iterations + the final pose


def test_evaluate_a_batch_folder_evaluates_each_result(quick_result, tmp_path):
    for name in ("a", "b"):
        shutil.copytree(quick_result["folder"], tmp_path / name)
    (tmp_path / R.SUMMARY).write_text("xray,folder,status\n")
    run_ok("evaluate", "--data-dir", tmp_path, "--progress", "none")
    for name in ("a", "b"):
        assert (tmp_path / name / "evaluation.png").exists()
        assert "pose_error" in json.loads((tmp_path / name / R.METRICS).read_text())


def test_view3d_can_show_the_xray_on_the_detector(quick_result, tmp_path):
    run_ok("view3d", "--volume", quick_result["ct"], "--pose", quick_result["folder"] / R.POSE, "--image",
           quick_result["xray"], "-o", tmp_path, "--device", "cpu", "--progress", "none")
    html = (tmp_path / "view3d.html").read_text()
    texture = json.loads(html.split("const D = ")[1].split(";\n")[0])["texture"]
    import base64
    import io

    assert Image.open(io.BytesIO(base64.b64decode(texture))).size == (48, 48)  # the X-ray itself, not a DRR
