"""Pose regressor: xvr's sampler frame in canonical terms, training steps, checkpoints, exact resume after a
cancel, gloo DDP (only rank 0 writes), finetuning, pose prediction, and bad input -> exit 2 with nothing written.

Everything runs on the CPU with timm's 99k-parameter test network at 32 x 32 pixels and batches of 4."""

from __future__ import annotations

import csv
import dataclasses
import sys

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from registration_model_fixtures import (TINY_CLI, CancelAt, run_ddp, simulated_xray, tiny_config)

from XrayToDRRLib import diffdrr_frames as frames
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.pose import Pose, standard_view
from XrayToDRRLib.volumes import center_ras


def _losses(run_dir) -> np.ndarray:
    with open(run_dir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "loss", "geodesic", "ncc", "lr", "seconds"]
    return np.array([[float(r["step"]), float(r["loss"])] for r in rows])


def _no_temporaries(folder) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".")]


# --- the sampler's frame --------------------------------------------------------------------------------------

def test_xvr_sampler_pose_is_a_c_arm_turning_about_the_volume_centre(small_ct, small_ct_path):
    iso = center_ras(small_ct)
    for orientation, flip, ty in (("AP", True, 700.0), ("PA", False, -700.0)):
        world = frames.xvr_sampler_pose([0, 0, 0], [0, ty, 0], orientation, iso, flip)[0]
        view = standard_view(orientation.lower(), iso, 1020, 24, 24, 10.0, source_to_isocenter=700.0)
        assert np.allclose(world, view.world_from_camera, atol=1e-9)
    # +r1 takes the AP source towards the patient's left (-R), +r2 towards the head (+S); r3 spins the image.
    turn = lambda r: frames.xvr_sampler_pose(r, [0, 700, 0], "AP", iso)[0]  # noqa: E731
    assert np.allclose(turn([90, 0, 0])[:3, 3] - iso, [-700, 0, 0], atol=1e-9)
    assert np.allclose(turn([0, 90, 0])[:3, 3] - iso, [0, 0, 700], atol=1e-9)
    assert np.allclose(turn([0, 0, 90])[:3, 3] - iso, [0, 700, 0], atol=1e-9)
    assert np.allclose(turn([0, 0, 90])[:3, 0], [0, 0, 1], atol=1e-9)
    # diffdrr's own reorient matrices, and the torch path (batched, differentiable) equals the numpy one.
    from diffdrr.data import read

    for orientation in ("AP", "PA"):
        assert np.array_equal(read(str(small_ct_path), orientation=orientation).reorient.numpy(),
                              frames.reorient_matrix(orientation))
    ext = torch.tensor(frames.to_diffdrr_extrinsic(turn([10, -5, 3])[None], frames.reorient_matrix("AP"), iso),
                       requires_grad=True)
    back = frames.from_diffdrr_extrinsic(ext, frames.reorient_matrix("AP"), iso)
    back.sum().backward()
    assert ext.grad is not None and np.allclose(back.detach().numpy()[0], turn([10, -5, 3]))


def test_xvr_sampler_pose_renders_like_diffdrr_in_xvr_frame(small_ct, small_ct_path):
    """DiffDRR rendering xvr's pose on a volume read as xvr does == our renderer at the canonical pose."""
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from diffdrr.pose import convert

    from XrayToDRRLib.render import DRRRenderer

    iso = center_ras(small_ct)
    rot, xyz = [[20.0, 10.0, -5.0]], [[15.0, -700.0, -20.0]]
    pose = Pose(frames.xvr_sampler_pose(rot, xyz, "PA", iso, False)[0], 1020, 24, 24, 10.0, 10.0)
    ours = DRRRenderer(small_ct, device="cpu").render(pose)
    drr = DRR(read(str(small_ct_path), orientation="PA"), sdd=1020, height=24, delx=10.0, reverse_x_axis=False)
    theirs = drr(convert(torch.tensor(rot), torch.tensor(xyz), parameterization="euler_angles", convention="ZXY",
                         degrees=True))[0, 0].detach().numpy()
    z = lambda a: (a - a.mean()) / a.std()  # noqa: E731  (their HU -> density map differs from ours)
    assert (z(ours) * z(theirs)).mean() > 0.99
    assert (z(ours) * z(theirs[:, ::-1])).mean() < 0.6


# --- training ---------------------------------------------------------------------------------------------------

def test_training_steps_reduce_the_loss_on_a_fixed_batch(small_ct_path):
    from XrayToDRRRegistrationLib.train import Trainer

    config = tiny_config(small_ct_path, n_batches_per_epoch=1000, warmup_fraction=0.0, p_augmentation=0.0)
    trainer = Trainer(config.resolved(torch.device("cpu")), torch.device("cpu"))
    losses = [trainer.step(0)["loss"] for _ in range(6)]  # step 0's batch every time
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, small_ct_path):
    """The tiny recipe trained for 4 steps through the CLI (checkpoints at steps 2 and 4)."""
    out = tmp_path_factory.mktemp("model") / "full"
    result = run_cli("train", "-i", small_ct_path, "-o", out, "--n-epochs", 2, "--n-batches-per-epoch", 2, *TINY_CLI)
    assert result.exit_code == 0, result.output
    return out


def test_checkpoints_load_safely_and_carry_config_and_frame(full_run, small_ct_path):
    assert sorted(p.name for p in full_run.iterdir()) == ["config.json", "last.pth", "log.csv", "step_0000002.pth",
                                                          "step_0000004.pth"]
    ckpt = torch.load(full_run / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["kind"] == "xraytodrr-pose-regressor" and ckpt["step"] == 4 and ckpt["epoch"] == 2
    config = ckpt["config"]
    assert config["volume"] == str(small_ct_path) and config["height"] == 32 and config["r1"] == [-20.0, 20.0]
    assert config["renderer"] == "fast" and config["model_name"] == "test_efficientnet_gn"
    assert config["ty"] == [650.0, 850.0] and config["reverse_x_axis"] is True
    assert ckpt["frame"]["orientation"] == "AP" and ckpt["frame"]["isocenter"] == "volume_center"
    assert ckpt["frame"]["detector"] == {"sdd": 1020.0, "height": 32, "width": 32, "delx": 8.0, "dely": 8.0,
                                         "x0": 0.0, "y0": 0.0}
    assert torch.is_tensor(ckpt["rng"]["torch"]) and ckpt["history"].shape == (4, 6)
    assert {"optimizer_state_dict", "scheduler_state_dict", "model_state_dict"} <= set(ckpt)
    assert torch.load(full_run / "step_0000002.pth", weights_only=True)["step"] == 2
    losses = _losses(full_run)
    assert losses[:, 0].tolist() == [0, 1, 2, 3] and np.all(np.isfinite(losses[:, 1]))


def test_cancelled_run_keeps_its_last_checkpoint_and_resumes_the_same_loss_curve(tmp_path, full_run, small_ct_path):
    from XrayToDRRRegistrationLib.train import train

    out = tmp_path / "cancelled"
    config = tiny_config(small_ct_path, name="full")
    with pytest.raises(SystemExit):  # what SIGTERM becomes: cancelled after step 3, checkpointed at step 2
        train(config, out, device="cpu", progress=CancelAt(3, 4))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.pth", "log.csv", "step_0000002.pth"]
    assert torch.load(out / "last.pth", weights_only=True)["step"] == 2 and len(_losses(out)) == 2
    result = run_cli("train", "-o", out, "--resume", out / "last.pth", "--device", "cpu", "--progress", "none")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(_losses(out), _losses(full_run), rtol=0, atol=1e-5)
    a = torch.load(out / "last.pth", weights_only=True)["model_state_dict"]
    b = torch.load(full_run / "last.pth", weights_only=True)["model_state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert _no_temporaries(out)


def test_ddp_with_two_gloo_processes_only_rank_0_writes(tmp_path, small_ct_path):
    from XrayToDRRRegistrationLib.train import Trainer

    config = tiny_config(small_ct_path, n_epochs=1, n_batches_per_epoch=2)
    Trainer(config.resolved(torch.device("cpu")), torch.device("cpu"))  # imports everything before forking
    written = run_ddp(config, [tmp_path / "rank0", tmp_path / "rank1"])
    assert written[1] == [] and not (tmp_path / "rank1").exists()
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["config.json", "last.pth", "log.csv",
                                                                      "step_0000002.pth"]
    ckpt = torch.load(tmp_path / "rank0" / "last.pth", weights_only=True)
    assert ckpt["run"]["world_size"] == 2 and ckpt["step"] == 2 and len(_losses(tmp_path / "rank0")) == 2


def test_finetune_rescales_the_detector_and_lowers_the_learning_rate(tmp_path, full_run, small_ct_path):
    out = tmp_path / "finetuned"
    result = run_cli("finetune", "-i", small_ct_path, "-c", full_run / "last.pth", "-o", out, "--n-epochs", 1,
                     "--n-batches-per-epoch", 2, "--rescale", 1.5, "--device", "cpu", "--progress", "none")
    assert result.exit_code == 0, result.output
    ckpt = torch.load(out / "last.pth", weights_only=True)
    config = ckpt["config"]
    assert config["height"] == 48 and config["delx"] == pytest.approx(8.0 * 32 / 48)
    assert config["lr"] == pytest.approx(1e-4) and config["finetuned_from"] == str(full_run / "last.pth")
    assert ckpt["frame"]["detector"]["height"] == 48 and ckpt["step"] == 2 and len(_losses(out)) == 2


# --- prediction -------------------------------------------------------------------------------------------------

def test_resampling_to_another_detector_follows_the_rays(small_ct):
    from XrayToDRRRegistrationLib.predict_pose import resample_to_detector

    from XrayToDRRLib.fast_render import FastRenderer

    iso = center_ras(small_ct)
    wide = standard_view("ap", iso, 1100, 90, 120, 4.0, source_to_isocenter=750)
    narrow = dataclasses.replace(wide, sdd=1000.0, height=40, width=40, delx=6.0, dely=6.0)
    renderer = FastRenderer(small_ct, device="cpu")
    moved = resample_to_detector(renderer.render(wide, "full"), wide, narrow)[0, 0].numpy()
    direct = renderer.render(narrow, "full")
    assert np.abs(moved - direct).mean() < 0.05 * direct.mean()


def test_predicted_pose_is_canonical_with_the_xray_detector(full_run, small_ct, small_ct_path):
    from XrayToDRRRegistrationLib.predict_pose import initial_pose_from_model

    iso = center_ras(small_ct)
    truth = Pose(frames.xvr_sampler_pose([5, -3, 2], [10, 750, -5], "AP", iso)[0], 1000, 40, 48, 7.0, 7.0)
    xray = simulated_xray(small_ct, truth, "hq")
    pose = initial_pose_from_model(xray, full_run / "last.pth", small_ct_path, "cpu")
    assert isinstance(pose, Pose) and pose.validate() is pose
    assert (pose.sdd, pose.height, pose.width, pose.delx, pose.dely) == (1000.0, 40, 48, 7.0, 7.0)
    again = initial_pose_from_model(xray, full_run / "last.pth", small_ct, "cpu")
    assert np.allclose(again.world_from_camera, pose.world_from_camera)
    from XrayToDRRRegistrationLib import initialize  # registration's --model hook calls this prediction

    hooked = initialize.initial_pose_from_model(xray, full_run / "last.pth", small_ct, "cpu")
    assert np.allclose(hooked.world_from_camera, pose.world_from_camera)


def test_short_patient_specific_training_predicts_better_than_a_random_pose(tmp_path, small_ct, small_ct_path):
    """24 steps of 8 DRRs (geodesic loss only, to stay cheap) teach the network where the C-arm usually is, not
    yet more: its predictions for 8 simulated X-rays must beat poses drawn from the training ranges (100 per
    X-ray), in angle and in source position. (Measured: about 12 deg / 165 mm against 18 deg / 225 mm.)"""
    from XrayToDRRRegistrationLib.predict_pose import initial_pose_from_model, pose_error
    from XrayToDRRRegistrationLib.train import train

    from XrayToDRRLib.fast_render import FastRenderer
    from XrayToDRRLib.xray import Xray

    config = tiny_config(small_ct_path, batch_size=8, n_epochs=1, n_batches_per_epoch=24, lr=3e-3, weight_ncc=0.0,
                         unit_conversion_factor=100.0, p_augmentation=0.0, warmup_fraction=0.0)
    train(config, tmp_path / "run", device="cpu")
    iso = center_ras(small_ct)
    rng = np.random.default_rng(7)
    draw = lambda n: [Pose(m, 1020, 32, 32, 8.0, 8.0) for m in frames.xvr_sampler_pose(  # noqa: E731
        rng.uniform([-20, -10, -10], [20, 10, 10], (n, 3)), rng.uniform([-30, 650, -30], [30, 850, 30], (n, 3)),
        "AP", iso)]
    truths, randoms = draw(8), draw(100)
    images = FastRenderer(small_ct, device="cpu").render(truths, "hq")
    predicted = [initial_pose_from_model(Xray(pixels=img, sdd=1020.0, delx=8.0, dely=8.0),
                                         tmp_path / "run" / "last.pth", small_ct, "cpu") for img in images]
    model_err = np.mean([pose_error(p, t) for p, t in zip(predicted, truths)], axis=0)
    random_err = np.mean([pose_error(r, t) for r in randoms for t in truths], axis=0)
    assert model_err[0] < random_err[0] and model_err[1] < random_err[1], (model_err, random_err)


# --- bad input ------------------------------------------------------------------------------------------------

def _corrupt(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"PK\x03\x04 not really a checkpoint" * 20)
    return path


def _other_kind(tmp_path):
    path = tmp_path / "pix2pix.pth.tar"
    torch.save({"kind": "xraytodrr-pix2pix", "generator": {"w": torch.zeros(2)}}, path)
    return path


def _pickled(tmp_path):
    import datetime

    path = tmp_path / "xvr.pth"
    torch.save({"model_state_dict": {}, "date": datetime.datetime(2025, 1, 1), "config": {}}, path)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing CT", "not found"),
    ("min > max", "--r1 min 20 is greater than max -20"),
    ("ty sign", "ty must be positive"),
    ("mirrored frame", "mirrored"),
    ("corrupt resume", "cannot read as a torch checkpoint"),
    ("other kind", "not a pose-regressor checkpoint (kind: xraytodrr-pix2pix)"),
    ("pickled objects", "pickled Python objects"),
    ("resume with recipe", "fixes --sdd"),
    ("finetune corrupt", "cannot read as a torch checkpoint"),
    ("finetune other kind", "not a pose-regressor checkpoint"),
    ("finetune missing CT", "not found"),
    ("unknown model", "unknown timm model"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, small_ct_path, full_run, case, message):
    out = tmp_path / "out"
    base = ["train", "-i", small_ct_path, "-o", out, "--n-epochs", 1, "--n-batches-per-epoch", 1, *TINY_CLI]
    args = {
        "missing CT": ["train", "-i", tmp_path / "nope.nii.gz", "-o", out, *TINY_CLI],
        "min > max": base + ["--r1", 20, -20],
        "ty sign": base + ["--ty", -800, -600],
        "mirrored frame": base + ["--no-reverse-x-axis"],
        "corrupt resume": ["train", "-o", out, "--resume", _corrupt(tmp_path)],
        "other kind": ["train", "-o", out, "--resume", _other_kind(tmp_path)],
        "pickled objects": ["train", "-o", out, "--resume", _pickled(tmp_path)],
        "resume with recipe": ["train", "-o", out, "--resume", full_run / "last.pth", "--sdd", 900],
        "finetune corrupt": ["finetune", "-i", small_ct_path, "-c", _corrupt(tmp_path), "-o", out],
        "finetune other kind": ["finetune", "-i", small_ct_path, "-c", _other_kind(tmp_path), "-o", out],
        "finetune missing CT": ["finetune", "-i", tmp_path / "nope.nii.gz", "-c", full_run / "last.pth", "-o", out],
        "unknown model": base + ["--model-name", "no_such_net"],
    }[case]
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")
    assert not out.exists()


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path, full_run, small_ct_path):
    before = (full_run / "last.pth").read_bytes()
    result = run_cli("train", "-i", small_ct_path, "-o", full_run, "--n-epochs", 1, "--n-batches-per-epoch", 1,
                     *TINY_CLI)
    assert result.exit_code == 2 and "already holds a training run" in result.output
    assert (full_run / "last.pth").read_bytes() == before


def test_pretrained_weights_are_never_downloaded(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from XrayToDRRRegistrationLib.model import build_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))
    config = dict(model_name="resnet18", parameterization="quaternion_adjugate", convention="ZXY",
                  norm_layer="groupnorm", height=32, unit_conversion_factor=1000.0, pretrained=True)
    with pytest.raises(InputError, match="not in the local cache"):
        build_model(config, "cpu")
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))


def test_xvr_network_and_loss_import_without_wandb(monkeypatch):
    from XrayToDRRRegistrationLib.model import xvr_model

    saved = {k: v for k, v in sys.modules.items() if k == "xvr.model" or k.startswith("xvr.model.")}
    for k in saved:
        monkeypatch.delitem(sys.modules, k)
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    try:
        assert hasattr(xvr_model("network"), "PoseRegressor") and hasattr(xvr_model("loss"), "PoseRegressionLoss")
        assert "xvr.model.trainer" not in sys.modules
    finally:
        for k in [k for k in sys.modules if k == "xvr.model" or k.startswith("xvr.model.")]:
            del sys.modules[k]
        sys.modules.update(saved)
