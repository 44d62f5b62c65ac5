"""The canonical pose: JSON round trip, validation, pinhole projection and standard views."""

import json

import numpy as np
import pytest

from XrayToDRRLib import diffdrr_frames as frames
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.pose import Pose, load_pose, look_at, perturb, standard_view


def oblique_pose():
    return look_at([300.0, 400.0, 150.0], [10.0, -5.0, 20.0], [0.1, 0.0, 1.0], sdd=1020, height=96, width=128,
                   delx=2.0, dely=1.5, x0=4.0, y0=-6.0)


def test_json_round_trip_is_exact(tmp_path):
    pose = oblique_pose()
    back = load_pose(pose.save(tmp_path / "pose.json"))
    assert np.array_equal(back.world_from_camera, pose.world_from_camera)
    assert (back.sdd, back.height, back.width, back.delx, back.dely, back.x0, back.y0) == (1020, 96, 128, 2.0, 1.5, 4.0, -6.0)


def test_projection_follows_the_documented_pixel_convention():
    pose = oblique_pose()
    rows, cols = np.array([0.0, 95.0, 40.5]), np.array([0.0, 127.0, 10.25])
    on_detector = pose.pixel_to_world(cols, rows)
    # Every point on the ray from the source through a pixel centre projects back onto that pixel.
    midway = pose.source + 0.37 * (on_detector - pose.source)
    assert np.allclose(pose.project(on_detector), np.stack([cols, rows], 1), atol=1e-9)
    assert np.allclose(pose.project(midway), np.stack([cols, rows], 1), atol=1e-9)
    # Detector plane lies at distance sdd along the principal ray.
    assert np.allclose(pose.depth(on_detector), 1020.0)


def test_standard_views_put_the_head_at_the_top_and_face_the_patient():
    iso = np.array([5.0, -10.0, 30.0])
    ap = standard_view("ap", iso, sdd=1000, height=101, width=101, delx=1.0)
    assert np.allclose(ap.source, iso + [0, 500, 0])  # anterior source
    assert np.allclose(ap.project(iso), [[50, 50]])
    top, bottom = ap.project([iso + [0, 0, 50], iso - [0, 0, 50]])
    assert top[1] < 50 < bottom[1]  # superior is up (small row index)
    left_of_patient = ap.project(iso + [-50.0, 0, 0])[0]  # RAS -x = patient's left
    assert left_of_patient[0] > 50  # patient's left on the viewer's right, as on an AP film
    lateral = standard_view("lateral", iso, sdd=1000, height=101, width=101, delx=1.0)
    assert np.allclose(lateral.principal_ray, [-1, 0, 0])


@pytest.mark.parametrize("bad, message", [
    ({"world_from_camera": np.diag([2.0, 1, 1, 1]).tolist()}, "not rigid"),
    ({"world_from_camera": np.diag([-1.0, 1, 1, 1]).tolist()}, "not rigid"),
    ({"sdd": -5}, "sdd must be positive"),
    ({"world_from_camera": [[1, 0], [0, 1]]}, "malformed"),
    ({"world_from_camera": np.full((4, 4), np.nan).tolist()}, "NaN"),
])
def test_bad_poses_are_rejected_with_the_file_named(tmp_path, bad, message):
    data = oblique_pose().to_dict() | bad
    path = tmp_path / "bad_pose.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as err:
        load_pose(path)
    assert "bad_pose.json" in str(err.value)


def test_missing_and_non_json_pose_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_pose(tmp_path / "nope.json")
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_pose(tmp_path / "garbage.json")


def test_diffdrr_conversion_round_trips_with_reorient_and_isocentre():
    pose = oblique_pose()
    reorient = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)  # DiffDRR's "AP"
    iso = np.array([12.0, -30.0, 7.0])
    ext = frames.to_diffdrr_extrinsic(pose.world_from_camera, reorient, iso)
    assert np.allclose(np.linalg.det(ext[:3, :3]), 1.0)  # a proper rotation: DiffDRR's SE(3) tools apply
    assert np.allclose(frames.from_diffdrr_extrinsic(ext, reorient, iso), pose.world_from_camera)


def test_perturb_rotates_about_the_centre_and_translates():
    pose = oblique_pose()
    centre = np.array([10.0, -5.0, 20.0])
    moved = perturb(pose, [0, 0, 90], [1.0, 2.0, 3.0], centre)
    assert np.allclose(moved.depth(centre + [1, 2, 3]), pose.depth(centre))
    assert np.isclose(np.linalg.norm(moved.source - centre - [1, 2, 3]), np.linalg.norm(pose.source - centre))
