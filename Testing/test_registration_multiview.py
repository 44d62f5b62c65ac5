"""Joint multi-view registration (register --multiview): a known pose recovered from two simulated views (AP and
lateral at different SDDs and source distances) with the rig from the DICOM angles and from rig.json, its depth
error far below the single view's on the same case; independent mode's inter-view consistency for an unmoved and a
moved patient; evaluate and pairs over the parent folder; bad rigs and missing angles."""

import dataclasses
import json

import numpy as np
import pytest
from cli_helpers import run_cli
from registration_fixtures import carm_pose, listing, offset, run_ok

from XrayToDRRLib.dicom import patient_orientation, positioner_angles, write_xray_dicom
from XrayToDRRLib.pose import load_pose, perturb
from XrayToDRRLib.simulate import pose_path_for, simulate_xray
from XrayToDRRLib.volumes import center_ras
from XrayToDRRRegistrationLib import results as R
from XrayToDRRRegistrationLib.evaluate import bone_points, pose_errors
from XrayToDRRRegistrationLib.multiview import consistency

FAST = ("--renderer", "fast", "--device", "cpu", "--progress", "none")
PATIENT = ((3.0, -2.0, 2.0), (6.0, -4.0, 5.0))  # the patient's pose on the table (deg about RAS axes, mm)


def write_view(ct, nominal, true, path, seed, angles=True):
    """A simulated X-ray at the true pose whose DICOM carries the C-arm's nominal angles and distance (the
    positioner knows the C-arm, not where the patient lies)."""
    image = simulate_xray(ct, true, seed=seed, raw=True, device="cpu")
    meta = {}
    if angles:
        primary, secondary = positioner_angles(nominal)
        meta = dict(PositionerPrimaryAngle=primary, PositionerSecondaryAngle=secondary,
                    DistanceSourceToPatient=round(float(nominal.depth(center_ras(ct))[0]), 2),
                    PatientOrientation=patient_orientation(nominal))
    write_xray_dicom(image, path, true.sdd, true.delx, true.dely, for_processing=True, **meta)
    true.save(pose_path_for(path))
    return path


def rig_json(path, files, matrices):
    path.write_text(json.dumps({"views": [{"file": f.name, "first_camera_from_camera": np.asarray(m).tolist()}
                                          for f, m in zip(files, matrices)]}))
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory, small_ct, small_ct_path):
    folder = tmp_path_factory.mktemp("multiview")
    c = center_ras(small_ct)
    nominal = [carm_pose(small_ct, "ap", 600.0), carm_pose(small_ct, "lateral", 650.0, sdd=1100.0)]
    true = [perturb(n, *PATIENT, c) for n in nominal]
    xrays = [write_view(small_ct, n, t, folder / name, seed)
             for n, t, name, seed in zip(nominal, true, ("ap.dcm", "lat.dcm"), (1, 2))]
    init = offset(true[0], small_ct, 4.0, 12.0, seed=3)
    init.save(folder / "init.json")
    rig = [np.eye(4), np.linalg.inv(nominal[0].world_from_camera) @ nominal[1].world_from_camera]
    single = folder / "single"
    run_ok("register", xrays[0], "--volume", small_ct_path, "-o", single, "--init-pose", folder / "init.json", *FAST)
    return {"folder": folder, "xrays": xrays, "true": true, "nominal": nominal, "init": folder / "init.json",
            "rig": rig, "ct": small_ct_path, "points": bone_points(small_ct), "center": c,
            "single": pose_errors(true[0], load_pose(single / R.POSE), bone_points(small_ct), c)}


def errors(case, out):
    return [pose_errors(t, load_pose(out / f"view-{k + 1}" / R.POSE), case["points"], case["center"])
            for k, t in enumerate(case["true"])]


@pytest.mark.slow
def test_rigid_rig_from_dicom_angles_pins_the_depth_one_view_cannot(case):
    out = case["folder"] / "joint"
    run_ok("register", *case["xrays"], "--volume", case["ct"], "-o", out, "--init-pose", case["init"],
           "--multiview", "rigid-rig", *FAST)
    single, joint = case["single"], errors(case, out)
    # One 64-px view leaves the pose ~2 mm off, nearly all of it along the beam; two views pin it.
    assert single["mtre_mm"] > 1.0 and abs(single["depth_mm"]) > 1.0, single
    for e in joint:
        assert e["mtre_mm"] < 0.5 and e["mtre_mm"] < 0.4 * single["mtre_mm"], (joint, single)
        assert abs(e["depth_mm"]) < 0.4 and abs(e["depth_mm"]) < 0.3 * abs(single["depth_mm"]), (joint, single)
    metrics = json.loads((out / R.METRICS).read_text())
    assert metrics["multiview"]["mode"] == "rigid-rig" and metrics["multiview"]["views"] == 2
    assert metrics["multiview"]["rig"]["source"].startswith("DICOM")
    np.testing.assert_allclose(metrics["multiview"]["rig"]["first_camera_from_camera"][1], case["rig"][1], atol=0.05)
    assert [v["folder"] for v in metrics["per_view"]] == ["view-1", "view-2"]
    assert all(v["ncc"] > 0.95 and v["confidence"] >= 0.5 for v in metrics["per_view"]), metrics["per_view"]
    assert metrics["warning"] == "" and 0.9 < metrics["similarity"] <= 1.0
    # Views with different SDDs: each view keeps its own detector.
    assert load_pose(out / "view-2" / R.POSE).sdd == 1100.0 and load_pose(out / "view-1" / R.POSE).sdd == 1020.0
    assert (out / "multiview.png").stat().st_size > 10000
    view_metrics = json.loads((out / "view-2" / R.METRICS).read_text())
    assert view_metrics["iterations"] == json.loads((out / "view-1" / R.METRICS).read_text())["iterations"] > 10

    # evaluate on the parent: every view's pose errors (depth along each beam, in-plane) and one figure.
    run_ok("evaluate", "--data-dir", out, "--progress", "none")
    evaluated = json.loads((out / R.METRICS).read_text())["evaluation"]["per_view"]
    assert [v["view"] for v in evaluated] == [1, 2]
    for v, e in zip(evaluated, joint):
        assert v["mtre_mm"] == pytest.approx(e["mtre_mm"], rel=1e-6) and v["in_plane_mm"] >= 0
        assert v["depth_mm"] == pytest.approx(e["depth_mm"], rel=1e-6)
    assert (out / "evaluation.png").exists() and (out / "view-1" / "evaluation.png").exists()

    # pairs on the parent: one pair per view.
    run_ok("pairs", out, "-o", case["folder"] / "pairs", "--min-confidence", "0", "--device", "cpu",
           "--progress", "none")
    assert len(list((case["folder"] / "pairs" / "xray").iterdir())) == 2


@pytest.mark.slow
def test_rigid_rig_from_rig_json(case):
    out = case["folder"] / "joint_json"
    rig = rig_json(case["folder"] / "rig.json", case["xrays"], case["rig"])
    run_ok("register", *case["xrays"], "--volume", case["ct"], "-o", out, "--init-pose", case["init"],
           "--multiview", "rigid-rig", "--rig", rig, *FAST)
    joint = errors(case, out)
    assert all(e["mtre_mm"] < 0.5 and abs(e["depth_mm"]) < 0.4 for e in joint), joint
    metrics = json.loads((out / R.METRICS).read_text())
    assert metrics["multiview"]["rig"]["source"] == "rig file rig.json"


@pytest.mark.slow
def test_independent_views_report_consistency_and_flag_a_moved_patient(case, small_ct):
    out = case["folder"] / "independent"
    run_ok("register", *case["xrays"], "--volume", case["ct"], "-o", out, "--init-pose", case["init"],
           "--multiview", "independent", *FAST)
    metrics = json.loads((out / R.METRICS).read_text())
    still = metrics["consistency"]
    assert still["rig"].startswith("DICOM") and not still["moved"] and still["warning"] == ""
    assert still["max_rotation_deg"] < 1.0 and still["max_translation_mm"] < 3.0, still
    reconciled = dataclasses.replace(case["true"][0], world_from_camera=still["reconciled_view1_world_from_camera"])
    assert pose_errors(case["true"][0], reconciled, case["points"], case["center"])["mtre_mm"] < 3.0
    # The same lateral view with the patient moved 15 mm towards the head before it was taken.
    moved_true = perturb(case["true"][1], (0, 0, 0), (0, 0, -15.0), case["center"])
    moved = write_view(small_ct, case["nominal"][1], moved_true, case["folder"] / "lat_moved.dcm", 2)
    out2 = case["folder"] / "independent_moved"
    run_ok("register", case["xrays"][0], moved, "--volume", case["ct"], "-o", out2, "--init-pose", case["init"],
           "--multiview", "independent", *FAST)
    flagged = json.loads((out2 / R.METRICS).read_text())
    assert flagged["consistency"]["moved"] and "moved" in flagged["warning"]
    assert flagged["consistency"]["max_translation_mm"] == pytest.approx(15.0, abs=3.0), flagged["consistency"]
    assert flagged["consistency"]["max_rotation_deg"] < 1.5
    assert flagged["consistency"]["reconciled_view1_world_from_camera"] is None  # nothing averaged over a move


def test_consistency_without_a_rig_measures_where_the_central_rays_miss(small_ct):
    c = center_ras(small_ct)
    ap, lat = carm_pose(small_ct, "ap", 600.0), carm_pose(small_ct, "lateral", 650.0)
    assert consistency([ap, lat], None, c)["max_ray_miss_mm"] == pytest.approx(0.0, abs=1e-6)
    shifted = perturb(lat, (0, 0, 0), (0, 0, 12.0), c)  # along the head-foot axis: across both beams' plane
    report = consistency([ap, shifted], None, c)
    assert report["max_ray_miss_mm"] == pytest.approx(12.0, abs=1e-6) and report["moved"] and report["cannot_tell"]


@pytest.mark.parametrize("problem", ["not rigid", "source inside", "count", "no angles", "one view"])
def test_bad_multiview_input_exits_2_and_writes_nothing(problem, case, small_ct, tmp_path):
    xrays, rig = list(case["xrays"]), [m.copy() for m in case["rig"]]
    extra, named = [], "rig.json"
    if problem == "not rigid":
        rig[1][:3, :3] *= 1.1
    elif problem == "source inside":
        rig[1][:3, 3] = [0.0, 0.0, 600.0]  # view 2's source at view 1's isocentre
    elif problem == "count":
        rig.append(np.eye(4))
        xrays_for_rig = xrays + [tmp_path / "third.dcm"]
    if problem in ("not rigid", "source inside", "count"):
        path = rig_json(tmp_path / "rig.json", xrays_for_rig if problem == "count" else xrays, rig)
        extra = ["--rig", path]
    elif problem == "no angles":
        nominal, true = case["nominal"][1], case["true"][1]
        xrays[1] = write_view(small_ct, nominal, true, tmp_path / "plain.dcm", 2, angles=False)
        named = "plain.dcm"
    else:
        xrays, named = xrays[:1], "--multiview"
    out = tmp_path / "out"
    before = listing(tmp_path)
    result = run_cli("register", *xrays, "--volume", case["ct"], "-o", out, "--init-pose", case["init"],
                     "--multiview", "rigid-rig", *extra, *FAST)
    assert result.exit_code == 2, result.output
    assert named in result.output, result.output
    assert listing(tmp_path) == before and not out.exists()


@pytest.mark.slow
def test_view3d_and_animate_show_every_view_of_a_multiview_result(case, tmp_path):
    out = case["folder"] / "joint_json"
    if not out.exists():
        pytest.skip("needs test_rigid_rig_from_rig_json's result")
    run_ok("view3d", "--volume", case["ct"], "--pose", out, "-o", tmp_path / "v", "--device", "cpu",
           "--progress", "none")
    html = (tmp_path / "v" / "view3d.html").read_text()
    views = json.loads(html.split("const D = ")[1].split(";\n")[0])["views"]
    sources = [load_pose(out / f"view-{k}" / R.POSE).source for k in (1, 2)]
    assert len(views) == 2 and all(np.allclose(v["source"], s, atol=0.01) for v, s in zip(views, sources))
    run_ok("animate", "--volume", case["ct"], "--parameters", out, "-o", tmp_path / "a.gif", "--frames", "3",
           "--device", "cpu", "--progress", "none")
    from PIL import Image

    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 4 and gif.size[0] > 1.5 * gif.size[1]  # the views side by side
