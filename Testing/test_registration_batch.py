"""A folder of X-rays (one bad one reported in summary.csv); bad inputs exit 2 and write nothing."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import run_cli
from registration_fixtures import known_pose, landmarks_json, listing, run_ok, simulated_xray

from XrayToDRRLib.pose import Pose, look_at
from XrayToDRRLib.volumes import center_ras
from XrayToDRRRegistrationLib import results as R

FAST = ("--max-n-itrs", "4", "--scales", "1", "--renderer", "fast", "--device", "cpu")
QUICK = FAST + ("--progress", "none")


def test_a_folder_registers_each_xray_and_reports_the_bad_one(small_ct, small_ct_path, tmp_path):
    xrays = tmp_path / "xrays"
    xrays.mkdir()
    for n, view in enumerate(("ap", "lateral")):
        simulated_xray(small_ct, known_pose(small_ct, view, 32, seed=n), xrays / f"{view}.dcm", seed=n)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.uint8) + 7), str(xrays / "bad.png"))
    out = tmp_path / "out"
    result = run_ok("register", xrays, "--volume", small_ct_path, "-o", out, "--init-view", "ap", *FAST,
                    "--progress", "jsonl")
    with open(out / R.SUMMARY, newline="") as f:
        rows = {r["xray"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    assert set(rows) == {"ap.dcm", "lateral.dcm", "bad.png"}  # the *.pose.json truths are not X-rays
    assert rows["ap.dcm"]["status"] == rows["lateral.dcm"]["status"] == "ok"
    assert rows["bad.png"]["status"] == "failed" and "--sdd" in rows["bad.png"]["error"]
    assert float(rows["ap.dcm"]["ncc"]) > 0.5 and int(rows["ap.dcm"]["iterations"]) == 4
    assert sorted(p.name for p in out.iterdir()) == ["ap", "lateral", R.SUMMARY]
    assert (out / "ap" / R.PARAMETERS).exists() and (out / "lateral" / R.POSE).exists()
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(e["event"] == "log" and e["message"].startswith("failed: bad.png") for e in events)
    assert events[-1]["event"] == "done" and len(events[-1]["outputs"]) == 3  # two folders + summary.csv


def test_pattern_selects_the_xrays(small_ct, small_ct_path, tmp_path):
    xrays = tmp_path / "xrays"
    xrays.mkdir()
    for name in ("a.dcm", "b.dcm"):
        simulated_xray(small_ct, known_pose(small_ct, "ap", 32), xrays / name)
    run_ok("register", xrays, "--volume", small_ct_path, "-o", tmp_path / "out", "--init-view", "ap",
           "--pattern", "b*", *QUICK)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b", R.SUMMARY]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, small_ct, small_ct_path):
    d = tmp_path_factory.mktemp("bad_inputs")
    true = known_pose(small_ct, "ap", 32)
    xray = simulated_xray(small_ct, true, d / "x.dcm")
    true.save(d / "good.json")
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)), str(d / "x.png"))
    sheared = Pose(true.world_from_camera @ np.diag([1.0, 1.2, 1.0, 1.0]), 1020, 32, 32, 9.6, 9.6)
    (d / "sheared.json").write_text(json.dumps(sheared.to_dict()))
    c = center_ras(small_ct)
    away = look_at(c - 510 * true.principal_ray, c - 1500 * true.principal_ray, [0, 0, 1], 1020, 32, 32, 9.6)
    away.save(d / "away.json")
    landmarks_json(d / "three.json", [[1, 2], [10, 4], [5, 20]], [[0, 0, 0], [10, 0, 0], [0, 10, 5]])
    labels = sitk.Cast(sitk.BinaryThreshold(small_ct, 250, 5000, 1, 0), sitk.sitkUInt8)
    sitk.WriteImage(labels, str(d / "mask.nii.gz"))
    other = sitk.Image([20, 20, 20], sitk.sitkUInt8) + 1
    sitk.WriteImage(other, str(d / "other_grid.nii.gz"))
    return {"d": d, "xray": xray, "ct": small_ct_path}


BAD = {
    "png without geometry": (["{d}/x.png", "--init-view", "ap"], "--sdd"),
    "mask on another grid": (["{xray}", "--init-view", "ap", "--mask", "{d}/other_grid.nii.gz"], "differs from the CT"),
    "labels absent": (["{xray}", "--init-view", "ap", "--mask", "{d}/mask.nii.gz", "--labels", "3"], "not in segmentation"),
    "labels without mask": (["{xray}", "--init-view", "ap", "--labels", "1"], "--labels needs --mask"),
    "pose not rigid": (["{xray}", "--init-pose", "{d}/sheared.json"], "not rigid"),
    "volume behind the source": (["{xray}", "--init-pose", "{d}/away.json"], "behind the X-ray source"),
    "three landmarks": (["{xray}", "--init-landmarks", "{d}/three.json"], "at least 4"),
    "two initialisers": (["{xray}", "--init-view", "ap", "--init-dicom"], "exactly one"),
    "no initialiser": (["{xray}"], "exactly one"),
    "model not available": (["{xray}", "--model", "{d}/good.json"], "checkpoint|model"),
    "bad similarity": (["{xray}", "--init-view", "ap", "--similarity", "ssd"], "unknown similarity"),
    "bad scales": (["{xray}", "--init-view", "ap", "--scales", "4,0.5"], "--scales"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_exits_2_and_writes_nothing(inputs, tmp_path, name):
    args, message = BAD[name]
    args = [a.format(d=inputs["d"], xray=inputs["xray"]) for a in args]
    before = listing(inputs["d"])
    result = run_cli("register", *args, "--volume", inputs["ct"], "-o", tmp_path / "out", "--device", "cpu",
                     "--progress", "none")
    assert result.exit_code == 2, result.output
    import re

    assert result.output.startswith("error:") and re.search(message, result.output), result.output
    assert not (tmp_path / "out").exists()
    assert listing(inputs["d"]) == before


def test_an_existing_unrelated_folder_is_not_replaced(inputs, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = run_cli("register", inputs["xray"], "--volume", inputs["ct"], "-o", tmp_path / "mine", "--init-view",
                     "ap", *QUICK)
    assert result.exit_code == 2 and "not a registration result" in result.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_batch_never_replaces_a_foreign_subfolder(inputs, tmp_path):
    xrays = tmp_path / "xrays"
    xrays.mkdir()
    for name in ("a.dcm", "b.dcm"):
        (xrays / name).write_bytes(inputs["xray"].read_bytes())
    (tmp_path / "out" / "a").mkdir(parents=True)
    (tmp_path / "out" / "a" / "notes.txt").write_text("keep me")
    run_ok("register", xrays, "--volume", inputs["ct"], "-o", tmp_path / "out", "--init-view", "ap", *QUICK)
    with open(tmp_path / "out" / R.SUMMARY, newline="") as f:
        rows = {r["xray"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    assert rows["a.dcm"]["status"] == "failed" and "not a registration result" in rows["a.dcm"]["error"]
    assert rows["b.dcm"]["status"] == "ok"
    assert (tmp_path / "out" / "a" / "notes.txt").read_text() == "keep me"
    # a single X-ray never replaces a batch folder either
    result = run_cli("register", inputs["xray"], "--volume", inputs["ct"], "-o", tmp_path / "out", "--init-view",
                     "ap", *QUICK)
    assert result.exit_code == 2 and (tmp_path / "out" / R.SUMMARY).exists()


def test_a_searched_registration_reports_progress_that_never_goes_back(small_ct, small_ct_path, tmp_path):
    """Every update, unthrottled: the search's part, then the optimisation's, then the outputs' (the step after the
    search once went back to 2 %, which a throttled JSON-lines stream let through only now and then)."""
    from XrayToDRRLib.progress import Progress
    from XrayToDRRRegistrationLib.batch import RegistrationOptions, Session
    from XrayToDRRRegistrationLib.initialize import Initializer

    class Recorder(Progress):
        def __init__(self):
            super().__init__()
            self.fractions = []

        def update(self, fraction, message=""):
            self.fractions.append(fraction)

    xray = simulated_xray(small_ct, known_pose(small_ct, "ap", 32, seed=0), tmp_path / "ap.dcm", seed=0)
    session = Session(RegistrationOptions(volume=str(small_ct_path), device="cpu", max_n_itrs=4, scales="1",
                                          renderer="fast"), Initializer("view", "ap"))
    recorder = Recorder()
    session.register(xray, tmp_path / "out", recorder)
    steps = zip(recorder.fractions, recorder.fractions[1:])
    assert all(b >= a - 1e-9 for a, b in steps) and recorder.fractions[-1] == 1.0
    assert any(0.02 < f < 0.3 for f in recorder.fractions)  # the search reported its own progress
