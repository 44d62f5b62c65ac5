"""Verbs taking many files take them the way a user first tries: several paths after one option (what the shell
makes of `--pose poses/*.json`), and folders of them."""

import csv
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from registration_fixtures import known_pose, run_ok, simulated_xray

from XrayToDRRLib.cli import spread_values
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.file_lists import pose_files, volume_files
from XrayToDRRLib.pose import standard_view
from XrayToDRRLib.volumes import center_ras
from XrayToDRRRegistrationLib import results as R


def drrs(folder):
    """The images written (each .npy has its renderer's record beside it, in .npy.json)."""
    return sorted(p.name for p in folder.glob("*.npy"))


@pytest.fixture
def poses(tmp_path, small_ct):
    """Three pose files in poses/, as `poses/*.json` would list them."""
    folder = tmp_path / "poses"
    folder.mkdir()
    return [standard_view(view, center_ras(small_ct), 1020, 20, 24, 16.0).save(folder / f"{view}.json")
            for view in ("ap", "lateral", "pa")]


def test_several_poses_after_one_pose_option_write_one_drr_each(tmp_path, small_ct_path, poses):
    out = tmp_path / "drrs"
    result = run_cli("drr", "--volume", small_ct_path, "--pose", *poses, "-o", out, "--format", "npy")
    assert result.exit_code == 0, result.output
    assert drrs(out) == ["ap.npy", "lateral.npy", "pa.npy"]
    for pose in poses:  # each the same image as when rendered alone
        alone = tmp_path / f"{pose.stem}_alone.npy"
        assert run_cli("drr", "--volume", small_ct_path, "--pose", pose, "-o", alone).exit_code == 0
        assert np.array_equal(np.load(out / f"{pose.stem}.npy"), np.load(alone))


def test_options_after_the_poses_still_apply(tmp_path, small_ct_path, poses):
    out = tmp_path / "drrs"
    result = run_cli("drr", "--pose", poses[0], poses[1], "--height", "10", "--volume", small_ct_path,
                     "-o", out, "--format", "npy", "--pose", poses[2])
    assert result.exit_code == 0, result.output
    assert drrs(out) == ["ap.npy", "lateral.npy", "pa.npy"]
    assert np.load(out / "pa.npy").shape == (10, 12)


def test_a_folder_of_poses_renders_each_of_them(tmp_path, small_ct_path, poses):
    out = tmp_path / "drrs"
    result = run_cli("drr", "--volume", small_ct_path, "--pose", poses[0].parent, "-o", out, "--format", "npy")
    assert result.exit_code == 0, result.output
    assert drrs(out) == ["ap.npy", "lateral.npy", "pa.npy"]


def test_registration_result_folders_give_their_pose_named_after_the_folder(tmp_path, small_ct_path, poses):
    batch = tmp_path / "registered"
    for pose in poses[:2]:  # a batch registration's output: one result folder per X-ray, metrics beside the pose
        (batch / pose.stem).mkdir(parents=True)
        (batch / pose.stem / R.POSE).write_text(pose.read_text())
        (batch / pose.stem / "metrics.json").write_text("{}")
    out = tmp_path / "drrs"
    result = run_cli("drr", "--volume", small_ct_path, "--pose", batch, batch / "ap", "-o", out, "--format", "npy")
    assert result.exit_code != 0 and "same output name" in result.output  # ap twice: refused, nothing written
    assert not out.exists()
    result = run_cli("drr", "--volume", small_ct_path, "--pose", batch, "-o", out, "--format", "npy")
    assert result.exit_code == 0, result.output
    assert drrs(out) == ["ap.npy", "lateral.npy"]


def test_an_empty_pose_folder_exits_2_naming_it(tmp_path, small_ct_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("drr", "--volume", small_ct_path, "--pose", tmp_path / "empty", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "no pose files" in result.stderr and "empty" in result.stderr
    with pytest.raises(InputError, match="not found"):
        pose_files([tmp_path / "missing.json"])


def test_spreading_stops_at_the_next_option_and_at_a_double_dash():
    spread = lambda *args: spread_values(list(args), {"--pose"})  # noqa: E731
    assert spread("--pose", "a", "b", "-o", "x") == ["--pose", "a", "--pose", "b", "-o", "x"]
    assert spread("--pose=a", "b") == ["--pose=a", "--pose", "b"]
    assert spread("--pose", "a", "--", "b") == ["--pose", "a", "--", "b"]
    assert spread("--volume", "a", "b") == ["--volume", "a", "b"]


def test_a_folder_of_ct_files_lists_each_but_a_dicom_folder_stays_one_ct(tmp_path):
    cts, dicom = tmp_path / "cts", tmp_path / "series"
    cts.mkdir()
    dicom.mkdir()
    for name in ("b.nrrd", "a.nii.gz", "notes.txt"):
        (cts / name).write_bytes(b"")
    (dicom / "IM0001.dcm").write_bytes(b"")
    single = tmp_path / "c.nii.gz"
    single.write_bytes(b"")
    assert volume_files([single, cts, dicom]) == [single, cts / "a.nii.gz", cts / "b.nrrd", dicom]


def test_register_takes_several_xrays_and_folders_of_them(small_ct, small_ct_path, tmp_path):
    shots, more = tmp_path / "shots", tmp_path / "more"
    shots.mkdir()
    more.mkdir()
    simulated_xray(small_ct, known_pose(small_ct, "ap", 32), shots / "a.dcm")
    simulated_xray(small_ct, known_pose(small_ct, "ap", 32, seed=1), shots / "b.dcm", seed=1)
    simulated_xray(small_ct, known_pose(small_ct, "ap", 32, seed=2), more / "c.dcm", seed=2)
    out = tmp_path / "out"
    run_ok("register", shots / "a.dcm", shots / "b.dcm", more, "--volume", small_ct_path, "-o", out,
           "--init-view", "ap", "--init-only", "--renderer", "fast", "--device", "cpu", "--progress", "none")
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c", R.SUMMARY]
    assert all((out / name / R.POSE).is_file() for name in "abc")
    with open(out / R.SUMMARY, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(Path(r["xray"]).name, r["status"]) for r in rows] == [("a.dcm", "ok"), ("b.dcm", "ok"), ("c.dcm", "ok")]
