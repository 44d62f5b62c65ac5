"""register's options through the CLI: each initialiser gives the expected initial pose (--init-only), warps,
masks and labels, cropping and intensity preprocessing reach the outputs."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from registration_fixtures import landmarks_json, quick_result, run_ok  # noqa: F401

from XrayToDRRLib.pose import load_pose, perturb
from XrayToDRRLib.volumes import LPS_TO_RAS, center_ras
from XrayToDRRRegistrationLib import results as R
from XrayToDRRRegistrationLib.evaluate import bone_points, pose_errors

INIT_ONLY = ("--init-only", "--renderer", "fast", "--device", "cpu", "--progress", "none")


def init_pose(folder):
    return R.pose_from_entry(torch.load(folder / R.PARAMETERS, weights_only=True)["init"])


def test_init_landmarks_give_the_true_pose(quick_result, small_ct, tmp_path):
    true = quick_result["true"]
    pts = bone_points(small_ct)[::400][:12]
    rng = np.random.default_rng(0)
    pixels = true.project(pts) + rng.normal(0, 0.05, (len(pts), 2))
    pixels[3] += 15  # one wrong click
    landmarks_json(tmp_path / "points.json", pixels, pts)
    run_ok("register", quick_result["xray"], "--volume", quick_result["ct"], "-o", tmp_path / "out",
           "--init-landmarks", tmp_path / "points.json", *INIT_ONLY)
    e = pose_errors(true, init_pose(tmp_path / "out"), bone_points(small_ct), center_ras(small_ct))
    assert e["mtre_mm"] < 1.0
    info = json.loads((tmp_path / "out" / R.METRICS).read_text())["initializer"]
    assert info["inliers"] == 11 and info["points"] == 12
    assert "landmarks: 11/12 inliers" in (tmp_path / "out" / R.LOG).read_text()


def test_init_dicom_and_init_view_without_search_look_at_the_volume_centre(quick_result, small_ct, tmp_path):
    c = center_ras(small_ct)
    for flag in (["--init-dicom"], ["--init-view", "lateral"]):
        out = tmp_path / flag[-1].strip("-")
        run_ok("register", quick_result["xray"], "--volume", quick_result["ct"], "-o", out, *flag, "--no-search",
               *INIT_ONLY)
        pose = init_pose(out)
        assert np.allclose(pose.project(c[None])[0], [(pose.width - 1) / 2, (pose.height - 1) / 2], atol=1e-6)
        assert (pose.height, pose.width, pose.sdd) == (48, 48, 1020.0)
    # the DICOM's beam direction is the true one (the simulated file records the C-arm angles)
    dicom = init_pose(tmp_path / "init-dicom")
    assert np.degrees(np.arccos(dicom.principal_ray @ quick_result["true"].principal_ray)) < 0.01
    assert np.allclose(init_pose(tmp_path / "lateral").principal_ray, [-1, 0, 0])


def test_warp_moves_the_initial_pose_into_the_volume_frame(quick_result, small_ct, tmp_path):
    c = center_ras(small_ct)
    true = quick_result["true"]
    # the pose as a "reference CT" would see it: moved by a rigid transform W (reference -> CT is W^-1)
    moved = perturb(true, [4.0, -6.0, 9.0], [12.0, -5.0, 7.0], c)
    moved.save(tmp_path / "ref_pose.json")
    w = true.world_from_camera @ np.linalg.inv(moved.world_from_camera)  # RAS: reference frame -> CT frame
    lps = LPS_TO_RAS @ w @ LPS_TO_RAS
    tfm = sitk.AffineTransform(lps[:3, :3].ravel().tolist(), lps[:3, 3].tolist())
    sitk.WriteTransform(tfm, str(tmp_path / "w.tfm"))
    run_ok("register", quick_result["xray"], "--volume", quick_result["ct"], "-o", tmp_path / "a", "--init-pose",
           tmp_path / "ref_pose.json", "--warp", tmp_path / "w.tfm", *INIT_ONLY)
    assert np.allclose(init_pose(tmp_path / "a").world_from_camera, true.world_from_camera, atol=1e-6)
    true.save(tmp_path / "ct_pose.json")
    run_ok("register", quick_result["xray"], "--volume", quick_result["ct"], "-o", tmp_path / "b", "--init-pose",
           tmp_path / "ct_pose.json", "--warp", tmp_path / "w.tfm", "--invert", *INIT_ONLY)
    assert np.allclose(init_pose(tmp_path / "b").world_from_camera, moved.world_from_camera, atol=1e-6)


def test_mask_labels_crop_and_intensity_options_reach_the_outputs(quick_result, small_ct, tmp_path):
    labels = sitk.Cast(sitk.BinaryThreshold(small_ct, 250, 5000, 1, 0), sitk.sitkUInt8) \
        + 2 * sitk.Cast(sitk.BinaryThreshold(small_ct, -200, 249, 1, 0), sitk.sitkUInt8)
    sitk.WriteImage(labels, str(tmp_path / "seg.nii.gz"))
    out = tmp_path / "out"
    run_ok("register", quick_result["xray"], "--volume", quick_result["ct"], "-o", out, "--init-pose",
           quick_result["folder"] / R.POSE, "--mask", tmp_path / "seg.nii.gz", "--labels", "1", "--crop", "4",
           "--linearize", "--subtract-background", "--max-n-itrs", "3", "--scales", "1", "--renderer", "siddon",
           "--device", "cpu", "--progress", "none")
    pose = load_pose(out / R.POSE)
    assert (pose.height, pose.width) == (40, 40)
    assert sitk.ReadImage(str(out / R.GT)).GetSize() == (40, 40)
    s = torch.load(out / R.PARAMETERS, weights_only=True)["settings"]
    assert s["mask"] == str(tmp_path / "seg.nii.gz") and s["labels"] == [1] and s["crop"] == 4
    assert s["linearize"] is True and s["subtract_background"] is True
    # bone only: the DRR is dark wherever no bone is crossed, unlike the full CT's
    hq = sitk.GetArrayFromImage(sitk.ReadImage(str(out / R.HQ_DRR)))
    assert (hq == 0).mean() > 0.05
    # the same camera: the cropped detector keeps its centre
    full = load_pose(quick_result["folder"] / R.POSE)
    c = center_ras(small_ct)[None]
    assert np.allclose(pose.project(c) + 4, full.project(c), atol=1.0)


def test_optimiser_defaults_have_one_definition():
    from XrayToDRRRegistrationLib.batch import RegistrationOptions
    from XrayToDRRRegistrationLib.register import OptimizerSettings

    assert RegistrationOptions("ct.nii.gz").optimizer() == OptimizerSettings()
    assert OptimizerSettings().patience == 8 and OptimizerSettings().threshold == 1e-5  # what bench/ measured
