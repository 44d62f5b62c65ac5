"""The global pose search (--init-view, --init-dicom): the masked NCC it ranks hypotheses by, known poses found
from a view name alone on two CTs (source far from SDD/2; patient off-centre), the confidence that flags an X-ray
of another body, and bad search options."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_helpers import run_cli
from registration_fixtures import carm_pose, listing, run_ok, simulated_xray, synthetic_body

from XrayToDRRLib.pose import load_pose
from XrayToDRRLib.volumes import center_ras
from XrayToDRRRegistrationLib import results as R
from XrayToDRRRegistrationLib.evaluate import bone_points, pose_errors
from XrayToDRRRegistrationLib.search import _TemplateSpectra, masked_ncc_maps

FAST = ("--renderer", "fast", "--device", "cpu", "--progress", "none")


def test_masked_ncc_maps_equal_the_ncc_of_each_shift():
    rng = np.random.default_rng(0)
    canvas = torch.as_tensor(rng.normal(size=(1, 32, 32)), dtype=torch.float32)
    template = torch.zeros(1, 32, 32)
    mask = torch.zeros(1, 32, 32)
    template[0, 10:20, 12:22] = canvas[0, 13:23, 10:20] * 2 + 1  # the canvas patch at shift (dx, dy) = (-2, 3)
    mask[0, 10:20, 12:22] = 1
    mask[0, 12, 14] = 0  # a masked-out pixel is ignored
    maps = masked_ncc_maps(canvas, _TemplateSpectra(template, mask))[0, 0]
    assert maps[3, -2] == pytest.approx(1.0, abs=1e-4)
    for dy, dx in ((0, 0), (1, -3), (-2, 2)):
        m = torch.roll(mask[0], (dy, dx), (0, 1)) > 0
        a = torch.roll(template[0], (dy, dx), (0, 1))[m]
        b = canvas[0][m]
        expected = float(((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()).norm() * (b - b.mean()).norm()))
        assert float(maps[dy, dx]) == pytest.approx(expected, abs=1e-4)
    assert int(maps.argmax()) == 3 * 32 + 30


@pytest.fixture(scope="module")
def body_ct_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("body") / "body.nii.gz"
    sitk.WriteImage(synthetic_body(), str(path))
    return path


CASES = {  # two CTs; C-arm poses a view name alone must reach
    "chest AP, source 800 mm (SDD/2 = 510)": ("chest", "ap", 800.0, (8.0, -6.0), 10.0, (0.0, 0.0)),
    "torso lateral, patient 40 mm off-centre": ("body", "lateral", 620.0, (-7.0, 5.0), -9.0, (30.0, -26.0)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_a_view_name_alone_recovers_an_ordinary_carm_pose(name, small_ct_path, body_ct_path, tmp_path):
    which, view, distance, tilt, spin, shift = CASES[name]
    ct_path = small_ct_path if which == "chest" else body_ct_path
    ct = sitk.ReadImage(str(ct_path))
    true = carm_pose(ct, view, distance, tilt, spin, shift)
    xray = simulated_xray(ct, true, tmp_path / "x.dcm", seed=4)
    run_ok("register", xray, "--volume", ct_path, "-o", tmp_path / "out", "--init-view", view, *FAST)
    points, c = bone_points(ct), center_ras(ct)
    final = pose_errors(true, load_pose(tmp_path / "out" / R.POSE), points, c)
    nominal = pose_errors(true, carm_pose(ct, view, 510.0), points, c)  # what a start at the view itself is off by
    assert nominal["mtre_mm"] > 40
    # Found the basin and converged: rotation and in-plane error are tight; one 64-px view pins depth to a few mm
    # only (the synthetic torso's lateral view ends 7-8 mm off along the beam), so mTRE is held to success (10 mm).
    assert final["rotation_deg"] < 1.5 and final["mrpe_mm"] < 2.5 and final["mtre_mm"] < 10.0, final
    metrics = json.loads((tmp_path / "out" / R.METRICS).read_text())
    search = metrics["initializer"]["search"]
    assert metrics["initializer"]["initializer"] == f"--init-view {view}"
    assert search["seconds"] > 0 and search["hypotheses"] > 1000 and len(search["candidates"]) >= 2
    scores = [cand["refined_score"] for cand in search["candidates"]]
    assert scores == sorted(scores, reverse=True)
    assert metrics["confidence"]["confidence"] >= 0.5 and metrics["confidence"]["warning"] == ""
    listed = json.loads((tmp_path / "out" / R.CANDIDATES).read_text())["candidates"]
    assert listed == search["candidates"]


@pytest.mark.slow
def test_init_only_writes_the_searchs_best_pose_and_auto_searches_four_views(small_ct_path, small_ct, tmp_path):
    true = carm_pose(small_ct, "lateral", 700.0, (5.0, 4.0), 6.0, (10.0, 5.0), size=48)
    xray = simulated_xray(small_ct, true, tmp_path / "x.dcm", seed=2)
    run_ok("register", xray, "--volume", small_ct_path, "-o", tmp_path / "out", "--init-view", "auto",
           "--init-only", *FAST)
    metrics = json.loads((tmp_path / "out" / R.METRICS).read_text())
    best = metrics["initializer"]["search"]["candidates"][0]
    assert metrics["initializer"]["search"]["views"] == ["ap", "pa", "lateral", "right-lateral"]
    assert best["view"] == "lateral" and metrics["stopped"] == "init_only"
    listed = metrics["initializer"]["search"]["candidates"]
    assert {c["view"] for c in listed} == {"ap", "pa", "lateral", "right-lateral"}  # every view to compare with
    assert len(listed) == 4 + 3
    pose = load_pose(tmp_path / "out" / R.POSE)
    assert np.allclose(pose.world_from_camera, best["pose"]["world_from_camera"])
    assert pose_errors(true, pose, bone_points(small_ct), center_ras(small_ct))["mtre_mm"] < 25.0


@pytest.mark.slow
def test_an_xray_of_another_body_gets_a_low_confidence_and_a_warning(small_ct_path, tmp_path):
    body = synthetic_body(seed=8)
    xray = simulated_xray(body, carm_pose(body, "ap", 600.0, size=48), tmp_path / "other.dcm", seed=1)
    result = run_ok("register", xray, "--volume", small_ct_path, "-o", tmp_path / "out", "--init-view", "ap",
                    "--renderer", "fast", "--device", "cpu", "--progress", "bar")
    confidence = json.loads((tmp_path / "out" / R.METRICS).read_text())["confidence"]
    assert confidence["confidence"] < 0.5 and confidence["warning"].startswith("low confidence")
    assert "WARNING: low confidence" in result.output
    assert "WARNING: low confidence" in (tmp_path / "out" / R.LOG).read_text()


BAD = {
    "unknown view": (["--init-view", "oblique"], "unknown view"),
    "auto without the search": (["--init-view", "auto", "--no-search"], "needs the pose search"),
    "distances reversed": (["--init-view", "ap", "--search-distance", "900,500"], "--search-distance"),
    "distances not numbers": (["--init-view", "ap", "--search-distance", "far"], "--search-distance"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_search_options_exit_2_and_write_nothing(name, small_ct_path, small_ct, tmp_path):
    args, message = BAD[name]
    xray = simulated_xray(small_ct, carm_pose(small_ct, "ap", 600.0, size=24), tmp_path / "in" / "x.dcm")
    result = run_cli("register", xray, "--volume", small_ct_path, "-o", tmp_path / "out", *args, *FAST)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()
    assert listing(tmp_path / "in") == ["x.dcm", "x.pose.json"]


@pytest.mark.slow
def test_init_dicom_searches_about_the_carm_angles_when_the_distance_is_20_percent_wrong(small_ct_path, small_ct,
                                                                                         tmp_path):
    import pydicom

    true = carm_pose(small_ct, "ap", 760.0, (12.0, -8.0), 0.0, (15.0, 10.0))
    xray = simulated_xray(small_ct, true, tmp_path / "x.dcm", seed=6)
    ds = pydicom.dcmread(xray)
    ds.DistanceSourceToPatient = round(float(ds.DistanceSourceToPatient) * 1.2, 1)
    del ds.EstimatedRadiographicMagnificationFactor
    ds.save_as(xray)
    run_ok("register", xray, "--volume", small_ct_path, "-o", tmp_path / "out", "--init-dicom", *FAST)
    final = pose_errors(true, load_pose(tmp_path / "out" / R.POSE), bone_points(small_ct), center_ras(small_ct))
    assert final["rotation_deg"] < 1.5 and final["mrpe_mm"] < 2.5 and final["mtre_mm"] < 10.0, final
    metrics = json.loads((tmp_path / "out" / R.METRICS).read_text())
    assert metrics["initializer"]["search"]["views"] == ["dicom"]


@pytest.mark.slow
@pytest.mark.parametrize("view, distance, tilt, spin, shift", [("ap", 850.0, (7.0, -5.0), -9.0, (-15.0, 20.0)),
                                                              ("lateral", 600.0, (-6.0, 5.0), 8.0, (20.0, -10.0))])
def test_a_view_name_alone_finds_the_pose_of_a_radiograph_that_sees_past_the_ct(view, distance, tilt, spin, shift,
                                                                                small_ct, tmp_path):
    """The CT is the middle half of the chest, the X-ray sees the patient past both its ends (the chest with its
    ends mirrored on: not the prism the search assumes). Searched with the body continued past the cut faces, the
    pose is found; treating the slab as the whole patient (--keep-cut-rays), the AP search magnifies the slab to
    fill the X-ray."""
    n = small_ct.GetSize()[2]
    slab = small_ct[:, :, n // 4: 3 * n // 4]
    patient = sitk.MirrorPad(small_ct, (0, 0, n // 2), (0, 0, n // 2))
    slab_path = tmp_path / "slab.nii.gz"
    sitk.WriteImage(slab, str(slab_path))
    true = carm_pose(slab, view, distance, tilt, spin, shift)
    xray = simulated_xray(patient, true, tmp_path / "x.dcm", seed=3)
    points, c = bone_points(slab), center_ras(slab)
    errors = {}
    for extra in ([], ["--keep-cut-rays"]) if view == "ap" else ([],):
        out = tmp_path / f"out{len(extra)}"
        run_ok("register", xray, "--volume", slab_path, "-o", out, "--init-view", view, *extra, *FAST)
        errors[bool(extra)] = pose_errors(true, load_pose(out / R.POSE), points, c)["mtre_mm"]
    assert errors[False] < 2.5, errors                  # measured 0.94 (AP) and 0.89 mm (lateral)
    assert errors.get(True, 100.0) > 10.0, errors        # measured 382 mm
