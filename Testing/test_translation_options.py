"""The training options beside the pix2pix default: a perceptual (feature-matching) loss, attention gates in the
U-Net skips, cross-patient augmentation. Each trains, records itself in the checkpoint, and its checkpoint
predicts with the right network; checkpoints from before the options existed load as the default."""

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from translation_fixtures import make_pairs

from XrayToDRRLib.errors import InputError
from XrayToDRRTranslationLib import cross_patient, networks, perceptual
from XrayToDRRTranslationLib.checkpoint import save_checkpoint
from XrayToDRRTranslationLib.predict import load_generator, translate_image
from XrayToDRRTranslationLib.train import train

TINY = dict(image_size=32, ngf=8, ndf=8, val_fraction=0.25, device="cpu", threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs") / "data", n=4, size=32, seed=4)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, data):
    return train(data, tmp_path_factory.mktemp("default") / "run", epochs=1, **TINY)


@pytest.mark.parametrize("option", [{"perceptual_loss": 10.0}, {"attention": True}, {"augment": "cross-patient"}],
                         ids=["perceptual", "attention", "augment"])
def test_each_option_trains_records_itself_and_its_checkpoint_predicts(tmp_path, data, default_run, option):
    result = train(data, tmp_path / "run", epochs=1, **TINY, **option)
    config = torch.load(result.checkpoint, weights_only=True)["config"]
    assert {k: config[k] for k in option} == option
    default = default_run.history[0]
    row = result.history[0]
    assert np.isfinite([row["loss_G"], row["loss_D"], row["loss_L1"]]).all()
    if "perceptual_loss" in option:  # the feature loss adds to the generator's loss, nothing else changes
        assert row["loss_G"] > default["loss_G"]
    else:
        assert row["loss_L1"] != default["loss_L1"]
    gen, cfg, dev = load_generator(result.checkpoint, "cpu")
    gates = [m for m in gen.modules() if isinstance(m, networks.AttentionGate)]
    assert len(gates) == (4 if option.get("attention") else 0)  # one per skip of the 5-level U-Net
    out = translate_image(gen, cfg, np.random.default_rng(0).random((40, 36)), dev)
    assert out.shape == (40, 36) and 0 <= out.min() and out.max() <= 1 and out.std() > 0


def test_the_cli_flags_reach_the_checkpoint(tmp_path, data):
    result = run_cli("translate", "train", "-i", data, "-o", tmp_path / "run", "--epochs", "1", "--image-size",
                     "32", "--ngf", "8", "--ndf", "8", "--device", "cpu", "--threads", "1", "--progress", "none",
                     "--perceptual-loss", "5", "--attention", "--augment", "cross-patient")
    assert result.exit_code == 0, result.output
    config = torch.load(tmp_path / "run" / "latest.pth.tar", weights_only=True)["config"]
    assert (config["perceptual_loss"], config["perceptual_net"], config["attention"], config["augment"]) == \
        (5.0, "discriminator", True, "cross-patient")


def test_a_checkpoint_from_before_the_options_loads_as_the_default(tmp_path, default_run):
    data = torch.load(default_run.checkpoint, weights_only=True)
    for key in ("perceptual_loss", "perceptual_net", "attention", "augment", "split_by", "patients"):
        data["config"].pop(key)
    old = save_checkpoint({k: v for k, v in data.items() if k not in ("kind", "format_version")},
                          tmp_path / "old.pth.tar")
    gen_old, cfg, dev = load_generator(old, "cpu")
    gen_new, _, _ = load_generator(default_run.checkpoint, "cpu")
    x = np.random.default_rng(1).random((32, 32))
    assert np.array_equal(translate_image(gen_old, cfg, x, dev), translate_image(gen_new, cfg, x, dev))


def test_attention_gates_scale_the_skips_and_start_near_one_half():
    gate = networks.AttentionGate(4, 4, 2)
    networks.init_weights(gate)
    x, g = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ratio = gate(x, g) / x
    assert torch.all((ratio > 0) & (ratio < 1)) and abs(float(ratio.mean()) - 0.5) < 0.05


def test_feature_matching_is_zero_for_the_real_pair_and_grows_with_the_difference():
    disc = networks.init_weights(networks.PatchDiscriminator(2, ndf=8))
    x, y = torch.rand(1, 1, 32, 32) * 2 - 1, torch.rand(1, 1, 32, 32) * 2 - 1
    real = disc.features(torch.cat([x, y], 1))
    feats, logits = real
    assert len(feats) == 4 and torch.equal(logits, disc(torch.cat([x, y], 1)))
    assert float(perceptual.feature_matching(feats, feats)) == 0.0
    near = disc.features(torch.cat([x, y + 0.05], 1))[0]
    far = disc.features(torch.cat([x, -y], 1))[0]
    assert 0 < float(perceptual.feature_matching(near, feats)) < float(perceptual.feature_matching(far, feats))


def test_vgg_perceptual_loss_without_cached_weights_is_a_clear_error(tmp_path, data, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(InputError, match="VGG16 weights in the local torch cache.*nothing is downloaded"):
        perceptual.check_network("vgg16")
    result = run_cli("translate", "train", "-i", data, "-o", tmp_path / "run", "--epochs", "1", "--image-size",
                     "32", "--device", "cpu", "--perceptual-loss", "1", "--perceptual-net", "vgg16")
    assert result.exit_code == 2 and result.output.count("error:") == 1 and "vgg16-397923af.pth" in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "hub").exists()


def test_cross_patient_augmentation_keeps_pairs_aligned_and_is_seeded(data):
    from XrayToDRRTranslationLib.dataset import list_pairs

    pairs = list_pairs(data)
    ds = cross_patient.CrossPatientDataset(pairs, 32, None, seed=3)
    ds.set_epoch(1)
    a = ds[0]
    assert torch.equal(a[0], ds[0][0]) and torch.equal(a[1], ds[0][1])  # same (seed, epoch, index)
    ds.set_epoch(2)
    b = ds[0]
    assert not torch.equal(a[0], b[0]) and a[0].shape == (1, 32, 32) and a[0].min() >= -1 and a[0].max() <= 1
    # geometry only on both: a dot moves to the same place in the X-ray and the DRR
    img = np.zeros((33, 33))
    img[10, 20] = 1.0
    p = dict(cross_patient.sample(np.random.default_rng(0)), scale_rows=1.1, scale_cols=0.9, shift_rows=0.03,
             shift_cols=-0.02)
    moved = cross_patient.scale_both(img, p)
    r, c = np.unravel_index(np.argmax(moved), moved.shape)
    assert (r, c) == (round(16 + 1.1 * (10 - 16) + 0.03 * 33), round(16 + 0.9 * (20 - 16) - 0.02 * 33))


def test_unknown_option_values_exit_2(tmp_path, data):
    for extra, message in ((["--perceptual-loss", "-1"], "must not be negative"),
                           (["--augment", "weird"], "weird")):
        result = run_cli("translate", "train", "-i", data, "-o", tmp_path / "run", "--epochs", "1",
                         "--image-size", "32", "--device", "cpu", *extra)
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "run").exists()
