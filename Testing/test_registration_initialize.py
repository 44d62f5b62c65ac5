"""Initial poses: PnP (exact, noisy with outliers, degenerate), standard views, DICOM angles, warps, checks."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from registration_fixtures import SDD, detector_pose, known_pose, landmarks_json, simulated_xray

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.pose import Pose, look_at, perturb, standard_view
from XrayToDRRLib.volumes import center_ras
from XrayToDRRLib.xray import read_xray
from XrayToDRRRegistrationLib.evaluate import pose_errors
from XrayToDRRRegistrationLib.initialize import (beam_direction, check_initial_pose, choose_initializer,
                                                  pose_from_dicom, pose_from_landmarks, read_warp, solve_pnp,
                                                  solve_pnp_ransac)
from XrayToDRRRegistrationLib.preprocess import prepare_pixels

CENTER = np.array([12.0, -30.0, 40.0])


def oblique(seed=0, view="ap") -> Pose:
    rng = np.random.default_rng(seed)
    return perturb(standard_view(view, CENTER, SDD, 200, 240, 1.4), rng.uniform(-25, 25, 3), rng.uniform(-30, 30, 3),
                   CENTER)


def cloud(n, seed=0, planar=False):
    rng = np.random.default_rng(seed + 100)
    pts = CENTER + rng.normal(0, 50, (n, 3))
    if planar:  # a tilted plane
        normal = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
        pts -= np.outer((pts - CENTER) @ normal, normal)
    return pts


def mtre(true: Pose, m: np.ndarray, points) -> float:
    est = Pose(np.linalg.inv(m), true.sdd, true.height, true.width, true.delx, true.dely)
    return pose_errors(true, est, points, CENTER)["mtre_mm"]


@pytest.mark.parametrize("n, planar, view", [(4, False, "ap"), (5, False, "lateral"), (6, False, "pa"),
                                             (12, False, "ap"), (4, True, "lateral"), (8, True, "ap")])
def test_pnp_recovers_the_pose_from_exact_correspondences(n, planar, view):
    true = oblique(n, view)
    pts = cloud(n, n, planar)
    m = solve_pnp(true.project(pts), pts, true.intrinsics())
    assert mtre(true, m, cloud(200, 7)) < 0.1
    assert np.allclose(m, true.camera_from_world, atol=1e-4)


def test_pnp_ransac_rejects_outliers_and_tolerates_noise():
    rng = np.random.default_rng(3)
    for seed in range(3):
        true = oblique(seed)
        pts = cloud(30, seed)
        px = true.project(pts) + rng.normal(0, 0.7, (30, 2))
        bad = rng.choice(30, 8, replace=False)
        px[bad] += rng.choice([-1, 1], (8, 2)) * rng.uniform(25, 80, (8, 2))
        m, inliers, rms = solve_pnp_ransac(px, pts, true.intrinsics(), threshold_px=4.0, seed=0)
        assert not inliers[bad].any() and inliers.sum() == 22
        assert rms < 1.5
        assert mtre(true, m, cloud(200, 9)) < 1.0
        # without RANSAC the outliers ruin it
        assert mtre(true, solve_pnp(px, pts, true.intrinsics()), cloud(200, 9)) > 3.0


def test_ransac_is_reproducible_with_its_seed():
    true = oblique(5)
    pts = cloud(20, 5)
    px = true.project(pts)
    px[:5] += 60
    a = solve_pnp_ransac(px, pts, true.intrinsics(), 3.0, seed=11)
    b = solve_pnp_ransac(px, pts, true.intrinsics(), 3.0, seed=11)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("case, message", [("three", "at least 4"), ("collinear3d", "collinear"),
                                           ("collinear2d", "collinear"), ("duplicates", "distinct")])
def test_too_few_or_degenerate_landmarks_are_input_errors(case, message):
    true = oblique(1)
    pts = cloud(6, 1)
    if case == "three":
        pts = pts[:3]
    elif case == "collinear3d":
        pts = CENTER + np.outer(np.linspace(-50, 50, 6), [1.0, 2.0, 0.5])
    elif case == "collinear2d":  # every point on one plane through the source: one line in the image
        d1 = true.principal_ray
        d2 = true.rotation[:, 0]
        pts = true.source + np.outer(np.linspace(400, 600, 6), d1) + np.outer([-30, 10, 40, -5, 20, 0], d2)
    elif case == "duplicates":
        pts = np.vstack([pts[:3]] * 2)
    with pytest.raises(InputError, match=message):
        solve_pnp_ransac(true.project(pts), pts, true.intrinsics(), 3.0)


def test_landmarks_file_with_crop(tmp_path):
    true = oblique(2)
    pts = cloud(8, 2)
    path = landmarks_json(tmp_path / "points.json", true.project(pts), pts)
    cropped = true.with_detector()  # same camera; the registration's detector after --crop 10
    cropped.height, cropped.width = true.height - 20, true.width - 20
    pose, info = pose_from_landmarks(path, cropped, crop=10)
    assert info["inliers"] == 8 and info["rms_px"] < 1e-3
    assert np.allclose(pose.world_from_camera, true.world_from_camera, atol=1e-5)
    (tmp_path / "bad.json").write_text(json.dumps({"points": [{"pixel": [1, 2]}]}))
    with pytest.raises(InputError, match="'pixel'"):
        pose_from_landmarks(tmp_path / "bad.json", cropped)


def test_exactly_one_initialiser(tmp_path):
    (tmp_path / "p.json").write_text("{}")
    assert choose_initializer(init_view="AP").value == "ap"
    assert choose_initializer(init_dicom=True).kind == "dicom"
    with pytest.raises(InputError, match="exactly one"):
        choose_initializer()
    with pytest.raises(InputError, match="exactly one"):
        choose_initializer(init_view="ap", init_pose=tmp_path / "p.json")
    with pytest.raises(InputError, match="unknown view"):
        choose_initializer(init_view="oblique")


def test_initial_pose_must_be_rigid_and_look_at_the_volume(small_ct):
    pose = detector_pose(small_ct)
    check_initial_pose(pose, small_ct)
    behind = look_at(center_ras(small_ct) - 510 * pose.principal_ray, center_ras(small_ct) - 1020 * pose.principal_ray,
                     [0, 0, 1], SDD, 96, 96, 3.2)
    with pytest.raises(InputError, match="behind the X-ray source"):
        check_initial_pose(behind, small_ct)
    sheared = Pose(pose.world_from_camera @ np.diag([1.0, 1.1, 1.0, 1.0]), SDD, 96, 96, 3.2, 3.2)
    with pytest.raises(InputError, match="not rigid"):
        check_initial_pose(sheared, small_ct)


def test_dicom_angles_give_back_the_simulated_pose(small_ct, tmp_path):
    c = center_ras(small_ct)
    beam = beam_direction(30.0, 12.0)  # LAO 30, cranial 12
    true = look_at(c - 600.0 * beam, c, [0, 0, 1], SDD, 64, 64, 4.8)
    path = simulated_xray(small_ct, true, tmp_path / "x.dcm")
    prepared = prepare_pixels(read_xray(path))
    pose = pose_from_dicom(prepared.xray, small_ct, prepared.detector)
    assert np.allclose(pose.principal_ray, true.principal_ray, atol=1e-4)
    assert np.allclose(pose.world_from_camera, true.world_from_camera, atol=0.05)


def test_beam_direction_inverts_the_dicom_writer():
    from XrayToDRRLib.dicom import positioner_angles

    for primary, secondary in ((0.0, 0.0), (90.0, 0.0), (-45.0, 20.0), (170.0, -30.0)):
        pose = look_at(-500 * beam_direction(primary, secondary), [0, 0, 0], [0, 0, 1], SDD, 8, 8, 1.0)
        assert positioner_angles(pose) == pytest.approx((primary, secondary), abs=1e-3)


def test_warp_is_read_as_a_ras_matrix_and_inverts(tmp_path):
    t = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (5.0, -6.0, 7.0))
    sitk.WriteTransform(t, str(tmp_path / "w.tfm"))
    m = read_warp(tmp_path / "w.tfm")
    lps = np.array([10.0, 20.0, 30.0])
    expected_lps = np.array(t.TransformPoint(lps.tolist()))
    ras = np.append(lps * [-1, -1, 1], 1.0)
    assert np.allclose((m @ ras)[:3], expected_lps * [-1, -1, 1], atol=1e-9)
    assert np.allclose(read_warp(tmp_path / "w.tfm", invert=True) @ m, np.eye(4), atol=1e-12)
    scaled = sitk.ScaleTransform(3, (1.2, 1.0, 1.0))
    sitk.WriteTransform(scaled, str(tmp_path / "s.tfm"))
    with pytest.raises(InputError):
        read_warp(tmp_path / "s.tfm")


def test_known_pose_helper_is_near_the_standard_view(small_ct):
    pose = known_pose(small_ct, seed=3)
    assert pose.validate() is pose
