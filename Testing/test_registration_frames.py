"""Frames of one multi-frame DICOM as the views of `register --multiview` (a rotational run): each frame's C-arm
angles from the legacy angle increments (offsets from the first angle, or one step per frame) and from the
enhanced per-frame functional groups; a simulated three-frame run registered with the rig from those angles;
runs without per-frame angles, frames out of range and --frames without --multiview refused."""

import json

import numpy as np
import pydicom
import pytest
from cli_helpers import run_cli
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from registration_fixtures import FOV, SDD, listing, offset, run_ok

from XrayToDRRLib.dicom import write_xray_dicom
from XrayToDRRLib.dicom_frames import choose_frames, frame_geometry
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.images import to_uint16
from XrayToDRRLib.pose import load_pose, look_at, perturb
from XrayToDRRLib.simulate import simulate_xray
from XrayToDRRLib.volumes import center_ras
from XrayToDRRLib.xray import read_xray
from XrayToDRRRegistrationLib import results as R
from XrayToDRRRegistrationLib.evaluate import bone_points, pose_errors
from XrayToDRRRegistrationLib.initialize import beam_direction
from XrayToDRRRegistrationLib.multiview import rotation_angle_deg

FAST = ("--renderer", "fast", "--device", "cpu", "--progress", "none")
PATIENT = ((3.0, -2.0, 2.0), (6.0, -4.0, 5.0))  # the patient's pose on the table (deg about RAS axes, mm)
START, OFFSETS, DSP = -20.0, [0.0, 40.0, 80.0], 600.0  # a run: frame k at START + OFFSETS[k] degrees LAO


def run_file(path, frames, sdd=SDD, delx=FOV / 64, **tags):
    """A multi-frame XA DICOM of (F, H, W) float `frames` (one common scaling) with the given tags."""
    stack = to_uint16(np.stack(frames))
    write_xray_dicom(stack[0], path, sdd, delx, for_processing=True)
    ds = pydicom.dcmread(path)
    ds.Modality, ds.SOPClassUID = "XA", pydicom.uid.XRayAngiographicImageStorage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.ascontiguousarray(stack.astype("<u2")).tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def positioner(primary, secondary=0.0, **geometry):
    """One functional-groups item: the X-Ray Positioner macro, and the X-Ray Geometry macro when given."""
    item = Dataset()
    item.PositionerPositionSequence = Sequence([Dataset()])
    item.PositionerPositionSequence[0].PositionerPrimaryAngle = primary
    item.PositionerPositionSequence[0].PositionerSecondaryAngle = secondary
    if geometry:
        item.XRayGeometrySequence = Sequence([Dataset()])
        for keyword, value in geometry.items():
            setattr(item.XRayGeometrySequence[0], keyword, value)
    return item


def angles(frames):
    return [(f["PositionerPrimaryAngle"], f["PositionerSecondaryAngle"]) for f in frames]


def test_legacy_increments_are_offsets_from_the_first_angle_or_one_step_per_frame():
    ds = Dataset()
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = -20.0, 5.0
    ds.PositionerPrimaryAngleIncrement = [0.0, 40.0, 80.0]  # offsets from -20: -20, 20, 60 (not 0 + 40 + 80 = 120)
    assert angles(frame_geometry(ds, 3)) == [(-20.0, 5.0), (20.0, 5.0), (60.0, 5.0)]
    ds.PositionerPrimaryAngleIncrement, ds.PositionerSecondaryAngleIncrement = [2.5], [-1.0]  # one: per frame
    assert angles(frame_geometry(ds, 4)) == [(-20.0, 5.0), (-17.5, 4.0), (-15.0, 3.0), (-12.5, 2.0)]
    absolute = Dataset()  # angles 0 (empty), the increments the absolute angles (PS3.3 C.8.7.5.1.3's note)
    absolute.PositionerPrimaryAngle, absolute.PositionerPrimaryAngleIncrement = "", [30.0, 35.0]
    assert angles(frame_geometry(absolute, 2)) == [(30.0, 0.0), (35.0, 0.0)]
    ds.PositionerPrimaryAngleIncrement = [0.0, 1.0]
    with pytest.raises(InputError, match="2 values for 4 frames"):
        frame_geometry(ds, 4)
    still = Dataset()
    still.PositionerPrimaryAngle, still.PositionerMotion = 30.0, "STATIC"
    assert frame_geometry(still, 3) is None


def test_enhanced_per_frame_positioner_with_per_frame_and_shared_distances():
    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    ds.SharedFunctionalGroupsSequence[0].XRayGeometrySequence = Sequence([Dataset()])
    ds.SharedFunctionalGroupsSequence[0].XRayGeometrySequence[0].DistanceSourceToIsocenter = 700.0
    ds.SharedFunctionalGroupsSequence[0].XRayGeometrySequence[0].DistanceSourceToDetector = 1100.0
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        positioner(-30.0, 2.0), positioner(0.0, 2.0, DistanceSourceToIsocenter=650.0, DistanceSourceToDetector=1200.0),
        positioner(30.0, -4.0)])
    frames = frame_geometry(ds, 3)
    assert angles(frames) == [(-30.0, 2.0), (0.0, 2.0), (30.0, -4.0)]
    assert [(f["DistanceSourceToPatient"], f["DistanceSourceToDetector"]) for f in frames] == [
        (700.0, 1100.0), (650.0, 1200.0), (700.0, 1100.0)]
    assert "per-frame" in frames[0]["frame_angles"]


def test_a_frame_is_read_alone_with_its_own_angles_and_distances(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (16, 20)) for _ in range(3)]
    legacy = run_file(tmp_path / "legacy.dcm", images, PositionerPrimaryAngle=-20.0, PositionerSecondaryAngle=0.0,
                      PositionerPrimaryAngleIncrement=[0.0, 40.0, 80.0], DistanceSourceToPatient=600.0)
    x = read_xray(legacy, frame=2)
    stored = to_uint16(np.stack(images))[2].astype(np.float32)
    assert np.array_equal(x.pixels, stored) and x.n_frames == 3
    assert x.metadata["frame"] == 3 and x.metadata["PositionerPrimaryAngle"] == 60.0 and x.sdd == SDD
    assert "frame_reduction" not in x.metadata and read_xray(legacy).metadata["frame_reduction"] == "max"
    with pytest.raises(InputError, match="no frame 4"):
        read_xray(legacy, frame=3)
    ds = pydicom.dcmread(legacy)
    del ds.PositionerPrimaryAngleIncrement
    ds.PerFrameFunctionalGroupsSequence = Sequence([positioner(10.0), positioner(20.0),
                                                    positioner(30.0, DistanceSourceToDetector=1200.0)])
    ds.save_as(tmp_path / "enhanced.dcm")
    x = read_xray(tmp_path / "enhanced.dcm", frame=2)
    assert x.metadata["PositionerPrimaryAngle"] == 30.0 and x.sdd == 1200.0 and "frame 3" in x.sdd_source


def test_choose_frames():
    assert choose_frames(None, 9) == [0, 3, 5, 8] and choose_frames("auto", 3) == [0, 1, 2]
    assert choose_frames("all", 5) == [0, 1, 2, 3, 4] and choose_frames("1, 5,9", 9) == [0, 4, 8]
    for spec, match in (("10", "no frame 10"), ("0", "no frame 0"), ("2,2", "twice"), ("x", "not auto")):
        with pytest.raises(InputError, match=match):
            choose_frames(spec, 9)


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_ct):
    """A three-frame rotational run simulated at the patient's true pose, its DICOM carrying the C-arm's nominal
    angles as increments; a start 4 deg / 10 mm off frame 1's true pose."""
    folder = tmp_path_factory.mktemp("run")
    c = center_ras(small_ct)
    nominal = [look_at(c - DSP * beam_direction(START + a, 0.0), c, (0, 0, 1), SDD, 64, 64, FOV / 64)
               for a in OFFSETS]
    true = [perturb(n, *PATIENT, c) for n in nominal]
    images = [simulate_xray(small_ct, t, seed=k, raw=True, device="cpu") for k, t in enumerate(true)]
    tags = dict(PositionerPrimaryAngle=START, PositionerSecondaryAngle=0.0, DistanceSourceToPatient=DSP,
                PositionerMotion="DYNAMIC")
    path = run_file(folder / "run.dcm", images, PositionerPrimaryAngleIncrement=OFFSETS, **tags)
    still = run_file(folder / "still.dcm", images, **tags)  # the same run without per-frame angles
    offset(true[0], small_ct, 4.0, 10.0, seed=3).save(folder / "init.json")
    return {"folder": folder, "path": path, "still": still, "true": true, "init": folder / "init.json",
            "points": bone_points(small_ct), "center": c}


@pytest.mark.slow
def test_a_rotational_run_registers_with_the_rig_from_its_frame_angles(run, small_ct_path):
    out = run["folder"] / "joint"
    run_ok("register", run["path"], "--volume", small_ct_path, "-o", out, "--init-pose", run["init"],
           "--multiview", "rigid-rig", *FAST)  # one file: its frames are the views (auto: all three)
    start = pose_errors(run["true"][0], load_pose(run["init"]), run["points"], run["center"])
    assert start["mtre_mm"] > 8.0, start
    for k, t in enumerate(run["true"]):
        e = pose_errors(t, load_pose(out / f"view-{k + 1}" / R.POSE), run["points"], run["center"])
        assert e["mtre_mm"] < 0.5, (k, e)
        source = json.loads((out / f"view-{k + 1}" / R.METRICS).read_text())["source"]
        assert source == {"file": str(run["path"]), "frame": k + 1}
    metrics = json.loads((out / R.METRICS).read_text())
    assert metrics["multiview"]["views"] == 3 and [v["frame"] for v in metrics["per_view"]] == [1, 2, 3]
    assert metrics["multiview"]["rig"]["source"].startswith("DICOM")
    for m, turn in zip(metrics["multiview"]["rig"]["first_camera_from_camera"], OFFSETS):  # 0, 40, 80 deg
        assert rotation_angle_deg(np.asarray(m)[:3, :3]) == pytest.approx(turn, abs=0.01)


@pytest.mark.parametrize("problem", ["no per-frame angles", "out of range", "one frame", "without multiview"])
def test_bad_frame_input_exits_2_and_writes_nothing(problem, run, small_ct_path, tmp_path):
    path, extra, named = run["path"], ["--multiview", "rigid-rig"], "run.dcm"
    if problem == "no per-frame angles":
        path, named = run["still"], "--rig"
    elif problem == "out of range":
        extra, named = extra + ["--frames", "1,4"], "no frame 4"
    elif problem == "one frame":
        extra, named = extra + ["--frames", "2"], "at least two views"
    else:
        extra, named = ["--frames", "all"], "--frames needs --multiview"
    out = tmp_path / "out"
    before = listing(tmp_path)
    result = run_cli("register", path, "--volume", small_ct_path, "-o", out, "--init-pose", run["init"], *extra,
                     *FAST)
    assert result.exit_code == 2, result.output
    assert named in result.output and (problem != "no per-frame angles" or "still.dcm" in result.output), \
        result.output
    assert listing(tmp_path) == before and not out.exists()
