"""pix2pix training: networks and their size rule, the loss goes down, checkpoints (contents, safe loading, atomic
writes), bit-for-bit resume, and DistributedDataParallel with two gloo processes under torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from translation_fixtures import make_pairs

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.progress import Progress
from XrayToDRRTranslationLib import networks
from XrayToDRRTranslationLib.checkpoint import KIND, load_checkpoint
from XrayToDRRTranslationLib.train import LOG_COLUMNS, read_log, train

TINY = dict(image_size=32, ngf=8, ndf=8, val_fraction=0.25, device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks on a shared 2-core machine: one thread is several times faster than two (no OpenMP waits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs32") / "data", n=8, size=32)


def test_unet_depth_follows_the_image_size_and_patchgan_sees_70px():
    assert [networks.check_image_size(s) for s in (32, 64, 128, 256, 512)] == [5, 6, 7, 8, 8]
    with pytest.raises(InputError, match="not a multiple of 64.*--image-size 64 or 128"):
        networks.check_image_size(96)
    with pytest.raises(InputError, match="not a multiple of 256"):
        networks.check_image_size(384)
    gen = networks.UnetGenerator(depth=8, ngf=4)
    x = torch.zeros(1, 1, 256, 256)
    assert gen(x).shape == x.shape
    disc = networks.PatchDiscriminator(2, ndf=4)
    assert disc(torch.zeros(1, 2, 256, 256)).shape == (1, 1, 30, 30)
    # receptive field of one logit (instance norm, which mixes the whole image, set aside): the input rows whose
    # gradient is not zero
    for i, m in enumerate(disc.model):
        if isinstance(m, torch.nn.InstanceNorm2d):
            disc.model[i] = torch.nn.Identity()
    inp = torch.randn(1, 2, 256, 256, requires_grad=True)
    disc(inp)[0, 0, 15, 15].backward()
    rows = torch.nonzero(inp.grad[0].abs().sum(0).sum(1))
    assert int(rows.max() - rows.min() + 1) == 70


def test_a_few_epochs_reduce_the_l1_loss_and_write_the_run(tmp_path, data32):
    result = train(data32, tmp_path / "run", epochs=5, save_every=2, seed=1, **TINY)
    l1 = [row["loss_L1"] for row in result.history]
    assert l1[-1] < 0.95 * l1[0]
    run = tmp_path / "run"
    names = sorted(p.name for p in run.iterdir())
    assert names == ["gen_epoch_2.pth.tar", "gen_epoch_4.pth.tar", "gen_epoch_5.pth.tar", "latest.pth.tar",
                     "log.csv", "samples"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"epoch_{e:04d}.png" for e in range(1, 6)]
    log = read_log(run / "log.csv")
    assert list(log[0]) == LOG_COLUMNS and [r["epoch"] for r in log] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in log] == [6, 12, 18, 24, 30]  # 6 training pairs, batch 1
    assert all(0 < r["val_psnr"] < 60 and -1 < r["val_ssim"] <= 1 and r["images_per_s"] > 0 for r in log)
    import SimpleITK as sitk

    grid = sitk.GetArrayFromImage(sitk.ReadImage(str(run / "samples" / "epoch_0005.png")))
    assert grid.shape == (2 * 32 + 2, 3 * 32 + 4)  # 2 validation pairs: input | prediction | target


def test_checkpoint_holds_everything_and_loads_safely(tmp_path, data32):
    train(data32, tmp_path / "run", epochs=1, **TINY)
    data = torch.load(tmp_path / "run" / "latest.pth.tar", map_location="cpu", weights_only=True)
    assert data["kind"] == KIND and data["epoch"] == 1 and data["step"] == 6
    for key in ("generator", "discriminator", "optimizer_G", "optimizer_D", "rng", "config", "history"):
        assert key in data
    assert set(data["rng"]) >= {"torch", "numpy", "python"} and data["rng"]["torch"].dtype == torch.uint8
    config = data["config"]
    assert config["normalization"] == {"method": "percentile", "low": 0.5, "high": 99.5, "range": [-1.0, 1.0]}
    assert config["image_size"] == 32 and config["unet_depth"] == 5 and config["lambda_l1"] == 100.0
    assert config["lr"] == 2e-4 and config["beta1"] == 0.5 and config["gan_mode"] == "vanilla"
    assert len(config["train_names"]) == 6 and len(config["val_names"]) == 2
    gen = networks.build_generator(config)
    gen.load_state_dict(data["generator"])
    assert gen(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_resume_continues_the_same_run_bit_for_bit(tmp_path):
    # 64 px: the U-Net has a dropout level, so the restored random state matters
    data = make_pairs(tmp_path / "d64", n=8, size=64, seed=3)
    kw = dict(TINY, image_size=64, save_every=1)
    straight = train(data, tmp_path / "a", epochs=2, **kw)
    train(data, tmp_path / "b", epochs=1, **kw)
    resumed = train(None, tmp_path / "b", epochs=2, resume=tmp_path / "b" / "latest.pth.tar", **kw)
    np.testing.assert_allclose(resumed.step_losses, straight.step_losses[6:], atol=1e-6, rtol=0)
    for key in ("loss_G", "loss_D", "loss_L1", "val_psnr", "val_ssim"):
        assert resumed.history[1][key] == pytest.approx(straight.history[1][key], abs=1e-6, rel=0)
    assert [r["epoch"] for r in read_log(tmp_path / "b" / "log.csv")] == [1, 2]
    a = torch.load(tmp_path / "a" / "latest.pth.tar", weights_only=True)
    b = torch.load(tmp_path / "b" / "latest.pth.tar", weights_only=True)
    assert all(torch.allclose(a["generator"][k], b["generator"][k], atol=1e-6) for k in a["generator"])


def test_a_cancelled_training_keeps_the_last_complete_checkpoint(tmp_path, data32):
    class CancelInEpoch2(Progress):
        def update(self, fraction, message=""):
            if message.startswith("epoch 2") and fraction > 0.6:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data32, tmp_path / "run", epochs=3, save_every=1, progress=CancelInEpoch2(), **TINY)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["gen_epoch_1.pth.tar", "latest.pth.tar", "log.csv", "samples"]  # no temporary files
    assert load_checkpoint(tmp_path / "run" / "latest.pth.tar")["epoch"] == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_with_two_gloo_processes_matches_one_process_with_the_doubled_batch(tmp_path, data32):
    """torchrun, 2 CPU processes x batch 1 == 1 process x batch 2 (same pairs per step, averaged gradients);
    only rank 0 writes."""
    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["translate", "train", "-i", str(data32), "--epochs", "2", "--image-size", "32", "--ngf", "8", "--ndf",
            "8", "--val-fraction", "0.25", "--save-every", "1", "--device", "cpu", "--progress", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()),
                           "-m", "XrayToDRRLib", *args, "-o", str(tmp_path / "ddp")],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(data32, tmp_path / "single", epochs=2, batch_size=2, save_every=1, **TINY)
    ddp_log = read_log(tmp_path / "ddp" / "log.csv")
    assert [r["epoch"] for r in ddp_log] == [1, 2] and [r["step"] for r in ddp_log] == [3, 6]
    for ddp_row, row in zip(ddp_log, single.history):
        for key in ("loss_G", "loss_D", "loss_L1", "val_psnr", "val_ssim"):
            assert ddp_row[key] == pytest.approx(row[key], abs=1e-4, rel=0)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "single")
                                                                          .iterdir())
    assert not [p for p in (tmp_path / "ddp").rglob(".*")]  # no leftovers from a second writer
    ckpt = load_checkpoint(tmp_path / "ddp" / "latest.pth.tar")
    assert ckpt["config"]["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    gen = networks.build_generator(ckpt["config"])
    gen.load_state_dict(ckpt["generator"])
    assert gen(torch.zeros(2, 1, 32, 32)).shape == (2, 1, 32, 32)


# --- bad input ------------------------------------------------------------------------------------------------
def _corrupt(tmp_path):
    path = tmp_path / "corrupt.pth.tar"
    path.write_bytes(b"PK\x03\x04 not a checkpoint" * 20)
    return path


def _foreign(tmp_path):
    path = tmp_path / "other.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, path)
    return path


@pytest.mark.parametrize("case, message", [
    ("image size", "not a multiple of 64"),
    ("tiny image", "too small"),
    ("unmatched", "unmatched names"),
    ("corrupt checkpoint", "corrupt.pth.tar: cannot read as a torch checkpoint"),
    ("foreign checkpoint", "other.pth.tar: is not an XrayToDRR pix2pix checkpoint"),
    ("no tensorboard", "tensorboard"),
    ("existing run", "already holds a training run"),
])
def test_train_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, data32, case, message):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data32, data)
    out = tmp_path / "run"
    extra = ["--image-size", "32"]
    if case == "image size":
        extra = ["--image-size", "96"]
    elif case == "tiny image":
        extra = ["--image-size", "16"]
    elif case == "unmatched":
        (data / "drr" / "case_03.png").unlink()
    elif case == "corrupt checkpoint":
        extra += ["--resume", _corrupt(tmp_path)]
    elif case == "foreign checkpoint":
        extra += ["--resume", _foreign(tmp_path)]
    elif case == "no tensorboard":
        try:
            import tensorboard  # noqa: F401
            pytest.skip("tensorboard is installed here")
        except ImportError:
            extra += ["--log", "tensorboard"]
    elif case == "existing run":
        out.mkdir()
        (out / "latest.pth.tar").write_bytes(b"x")
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    result = run_cli("translate", "train", "-i", data, "-o", out, "--epochs", "1", "--ngf", "8", "--ndf", "8",
                     "--device", "cpu", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("error:") == 1
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before
