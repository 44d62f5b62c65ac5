"""The demo pipeline on the bundled CT (small settings): every output exists and the X-ray matches its DRR."""

import json

import numpy as np
import SimpleITK as sitk

from XrayToDRRLib.demo import run_demo
from XrayToDRRLib.pose import load_pose
from XrayToDRRLib.xray import read_xray


def test_demo_writes_an_aligned_xray_drr_pair_and_its_figure(tmp_path, monkeypatch):
    out = run_demo(tmp_path / "demo", size=64, spacing=4.0, seed=3, device="cpu", quick=True)
    for key in ("prepared", "true_pose", "xray", "drr", "figure"):
        assert out[key].exists(), key
    assert (out["prepared"] / "manifest.json").exists()
    truth = load_pose(out["true_pose"])
    assert np.allclose(load_pose(out["xray"].with_name("xray.pose.json")).world_from_camera, truth.world_from_camera)
    xray = read_xray(out["xray"])
    assert xray.pixels.shape == (64, 64) and xray.sdd == truth.sdd and np.isclose(xray.delx, truth.delx)
    drr = sitk.GetArrayFromImage(sitk.ReadImage(str(out["drr"]))).astype(float)
    # Same anatomy at the same pose: strongly correlated inside the collimated field, though not identical.
    inner = (slice(12, 52), slice(12, 52))
    r = np.corrcoef(xray.pixels[inner].ravel(), drr[inner].ravel())[0, 1]
    assert 0.6 < r < 0.995
    # The registration stage (a plug-in of the Registration Lib) ran and was evaluated against the true pose. At
    # 64 px on a 4 mm CT it cannot be accurate; its accuracy is tested in test_registration_register.py.
    metrics = json.loads((out["registration"] / "metrics.json").read_text())
    errors = metrics["pose_error"]
    assert 0 < errors["init"]["mtre_mm"] < 40 and np.isfinite(errors["final"]["mtre_mm"])
    assert out["registration_figure"].exists()
    # The translation stage (a plug-in of the Translation Lib) trained briefly and left a usable checkpoint.
    assert out["translation_figure"].exists() and out["translation_checkpoint"].exists()
    from XrayToDRRTranslationLib.predict import load_generator, translate_image

    gen, config, device = load_generator(out["translation_checkpoint"], "cpu")
    assert translate_image(gen, config, xray.pixels, device).shape == (64, 64)
    figure = sitk.ReadImage(str(out["figure"]))
    assert figure.GetSize()[0] > 3 * figure.GetSize()[1]  # four panels side by side
    # Run again into the same folder, named relative as `make demo` does: every stage replaces its own outputs.
    monkeypatch.chdir(tmp_path)
    again = run_demo("demo", size=64, spacing=4.0, seed=3, device="cpu", quick=True)
    assert again["translation_checkpoint"].exists() and again["registration_figure"].exists()
    assert sorted(p.name for p in (tmp_path / "demo" / "translation").iterdir()) == ["pairs", "run", "translation.png"]
