"""pix2pix training: X-ray (input) -> DRR (target) on a paired-data folder (see dataset.py).

Losses: discriminator 0.5 [GAN(D(x, y), real) + GAN(D(x, G(x)), fake)]; generator GAN(D(x, G(x)), real) +
lambda_l1 * |G(x) - y|_1 (lambda = 100) [+ perceptual_loss * a feature loss, see perceptual.py]. GAN = BCEWithLogits ('vanilla', the paper's, default) or least squares
('lsgan'). Adam (lr 2e-4, betas (0.5, 0.999)) for both networks, constant learning rate. Real and fake pairs go
through D in one batch (instance norm makes that identical to two passes).

Run folder: `gen_epoch_N.pth.tar` every `save_every` epochs and at the last one, `latest.pth.tar` every epoch (see
checkpoint.py; each written atomically, so a cancelled run keeps its last complete checkpoint), `log.csv` (one row
per epoch), `samples/epoch_NNNN.png` (rows of input | prediction | target from the validation set), optionally
TensorBoard (`--log tensorboard`, if installed) or offline Weights & Biases (`--log wandb`) beside the CSV.

Determinism: the training pairs' order in epoch e is a permutation drawn from (seed, e) (DistributedSampler), and
the checkpoint holds every random state, so `--resume` continues the very same run: training 2 epochs and training
1 then resuming for 1 give the same losses (same device, same thread count).

Multi-GPU with torchrun (XrayToDRRLib.distributed): each process trains on its DistributedSampler shard with
`--batch-size` images per step and DDP averages the gradients. Only rank 0 validates and writes files; the others
wait for it at the end of each epoch.

Options beside the pix2pix default, each off unless asked for and recorded in the config (so predict rebuilds the
same network; checkpoints from before they existed load as the default): `perceptual_loss` WEIGHT with
`perceptual_net` (perceptual.py), `attention` (attention gates in the U-Net skips, networks.py), `augment`
"cross-patient" (cross_patient.py: body size, exposure, processing, blur and noise, drawn per pair and epoch).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from XrayToDRRLib import distributed
from XrayToDRRLib.atomic import atomic_path, write_text
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.progress import Progress
from XrayToDRRLib.rng import rng_state, set_rng_state

from . import perceptual
from .checkpoint import load_checkpoint, load_state, save_checkpoint
from .cross_patient import CrossPatientDataset, check_augment
from .dataset import (NORMALIZATION, PairDataset, check_pairs, list_pairs, pairs_per_patient, patients_of,
                      read_patients, split_by_patient, split_names)
from .metrics import psnr, ssim
from .networks import (GANLoss, build_discriminator, build_generator, check_image_size, cpu_convolutions,
                       init_weights)

LOG_COLUMNS = ["epoch", "step", "loss_G", "loss_D", "loss_L1", "val_psnr", "val_ssim", "seconds", "images_per_s"]
LOGGERS = ("csv", "tensorboard", "wandb")
SPLITS = ("pair", "patient")
SAMPLE_ROWS = 4


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]                 # the log.csv rows (all epochs, resumed ones included)
    step_losses: list[list[float]]      # this call's per-step [loss_G, loss_D, loss_L1] of this process
    checkpoint: Path | None             # latest.pth.tar (rank 0) or None
    config: dict


def train(data: str | Path | None, output: str | Path, epochs: int = 200, batch_size: int = 1, lr: float = 2e-4,
          beta1: float = 0.5, lambda_l1: float = 100.0, image_size: int = 256, val_fraction: float = 0.1,
          resume: str | Path | None = None, log: str = "csv", device: str = "auto", seed: int = 0, ngf: int = 64,
          ndf: int = 64, gan_mode: str = "vanilla", dropout: float = 0.5, save_every: int = 5, workers: int = 0,
          time_limit: float | None = None, threads: int | None = None, split_by: str = "pair",
          perceptual_loss: float = 0.0, perceptual_net: str = "discriminator", attention: bool = False,
          augment: str = "none", progress: Progress | None = None) -> TrainResult:
    """Train (or, with `resume`, continue) pix2pix on DATA (xray/ + drr/) into the run folder `output`.
    `epochs` is the total number of epochs (a resumed run continues up to it). `time_limit` (seconds) stops at the
    end of the first epoch that passes it (and saves). `threads`: CPU threads for torch during training (default:
    torch's; on a busy machine 1 thread can be many times faster for small images). `split_by`: "pair" draws
    validation pairs; "patient" holds out whole patients (ids from the data's pairs.csv, see dataset.py), so no
    patient is in both sets. With `resume`, the architecture, optimiser settings, seed and train/validation split
    come from the checkpoint."""
    progress = progress or Progress()
    _check_numbers(epochs, batch_size, lr, lambda_l1, save_every, workers)
    if log not in LOGGERS:
        raise InputError(f"unknown logger '{log}'", None, f"use one of {', '.join(LOGGERS)}")
    if split_by not in SPLITS:
        raise InputError(f"unknown split '{split_by}'", None, f"use --split-by {' or '.join(SPLITS)}")
    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume)
        config = dict(checkpoint["config"])
        data = data if data is not None else config["data"]
        if int(checkpoint["epoch"]) >= epochs:
            raise InputError(f"checkpoint is at epoch {checkpoint['epoch']}, --epochs is {epochs}", resume,
                             f"pass --epochs larger than {checkpoint['epoch']} to train further")
    elif data is None:
        raise InputError("no training data", None, "pass -i DATA (a folder with xray/ and drr/)")
    data = Path(data).resolve()
    pairs = list_pairs(data)
    channels = check_pairs(pairs)["channels"]
    by_name = {p.name: p for p in pairs}
    if checkpoint is None:
        depth = check_image_size(image_size)
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout}", None, "pass --dropout 0.5")
        GANLoss(gan_mode)  # validates the name
        check_augment(augment)
        if perceptual_loss < 0:
            raise InputError(f"perceptual-loss weight must not be negative, got {perceptual_loss}", None,
                             "pass --perceptual-loss 10 (or 0: off)")
        if perceptual_loss > 0:
            perceptual.check_network(perceptual_net)
        if split_by == "patient":
            patients = patients_of(list(by_name), data)
            train_names, val_names = split_by_patient(patients, val_fraction, seed)
        else:
            patients = read_patients(data)
            train_names, val_names = split_names(list(by_name), val_fraction, seed)
        config = {
            "model": "pix2pix", "in_channels": 1, "out_channels": 1, "image_size": int(image_size),
            "unet_depth": depth, "ngf": int(ngf), "ndf": int(ndf), "n_layers_d": 3, "norm": "instance",
            "dropout": float(dropout), "gan_mode": gan_mode, "lambda_l1": float(lambda_l1), "lr": float(lr),
            "beta1": float(beta1), "beta2": 0.999, "batch_size": int(batch_size), "seed": int(seed),
            "val_fraction": float(val_fraction), "normalization": dict(NORMALIZATION),
            "source_channels": int(channels), "train_names": train_names, "val_names": val_names,
            "split_by": split_by, "patients": {n: patients[n] for n in sorted(patients) if n in by_name},
            "perceptual_loss": float(perceptual_loss), "perceptual_net": perceptual_net,
            "attention": bool(attention), "augment": augment,
        }
    else:
        absent = sorted(set(config["train_names"] + config["val_names"]) - set(by_name))
        if absent:
            raise InputError(f"{len(absent)} pair(s) of the checkpoint's run are missing from the data: "
                             f"{', '.join(absent[:8])}", data, "resume with the data the run was trained on")
        train_names, val_names = config["train_names"], config["val_names"]
    config.update({"data": str(data), "epochs": int(epochs), "save_every": int(save_every), "log": log,
                   "device": str(device), "workers": int(workers), "time_limit": time_limit,
                   "versions": _versions()})
    if not train_names:
        raise InputError("no training pairs left after the validation split", data,
                         "add pairs or lower --val-fraction")

    run_dir = Path(output).resolve()
    _check_run_dir(run_dir, data, resume)
    logger_factory = _logger_factory(log)

    if threads is not None and int(threads) < 1:
        raise InputError(f"threads must be at least 1, got {threads}", None, "pass --threads 1 or more")
    info, dev = distributed.setup(device)
    config["world_size"] = info.world_size
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with cpu_convolutions(dev):
            return _train(config, checkpoint, resume, pairs, by_name, run_dir, logger_factory, info, dev, progress)
    finally:
        torch.set_num_threads(threads_before)
        distributed.shutdown(info)


def _train(config, checkpoint, resume, pairs, by_name, run_dir, logger_factory, info, dev, progress) -> TrainResult:
    seed = config["seed"]
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    gen = init_weights(build_generator(config)).to(dev)
    disc = init_weights(build_discriminator(config)).to(dev)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config["lr"], betas=(config["beta1"], config["beta2"]))
    opt_d = torch.optim.Adam(disc.parameters(), lr=config["lr"], betas=(config["beta1"], config["beta2"]))
    start_epoch, step, history = 0, 0, []
    if checkpoint is not None:
        load_state(gen, checkpoint["generator"], resume, "generator")
        load_state(disc, checkpoint["discriminator"], resume, "discriminator")
        try:
            opt_g.load_state_dict(checkpoint["optimizer_G"])
            opt_d.load_state_dict(checkpoint["optimizer_D"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise InputError(f"optimiser state does not match ({str(e)[:120]})", resume,
                             "resume from a complete checkpoint of this run") from None
        start_epoch, step = int(checkpoint["epoch"]), int(checkpoint.get("step", 0))
        history = [dict(row) for row in checkpoint.get("history", [])]
        ranks = checkpoint.get("rng_ranks") or []
        set_rng_state(ranks[info.rank] if len(ranks) == info.world_size else checkpoint["rng"])
    gen_model, disc_model = distributed.wrap(gen, info, dev), distributed.wrap(disc, info, dev)

    train_pairs = [by_name[n] for n in config["train_names"]]
    augmented = config.get("augment", "none") == "cross-patient"
    train_set = CrossPatientDataset(train_pairs, config["image_size"], config["normalization"], seed) if augmented \
        else PairDataset(train_pairs, config["image_size"], config["normalization"])
    val_pairs = [by_name[n] for n in config["val_names"]]
    val_set = PairDataset(val_pairs, config["image_size"], config["normalization"]) if info.is_main else None
    sample_set = val_set if val_set is not None and len(val_set) else \
        PairDataset([by_name[n] for n in config["train_names"][:SAMPLE_ROWS]], config["image_size"],
                    config["normalization"])
    sampler = torch.utils.data.distributed.DistributedSampler(
        train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=False)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=config["batch_size"], sampler=sampler, num_workers=config["workers"],
        persistent_workers=config["workers"] > 0 and not augmented,  # workers must see each epoch's set_epoch
        generator=torch.Generator().manual_seed(seed),
        pin_memory=dev.type == "cuda")
    gan_loss = GANLoss(config["gan_mode"]).to(dev)
    l1 = torch.nn.L1Loss()
    lam = config["lambda_l1"]
    weight_p = float(config.get("perceptual_loss", 0.0))
    vgg = perceptual.VGGLoss().to(dev) if weight_p > 0 and config.get("perceptual_net") == "vgg16" else None

    logger = None
    if info.is_main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        logger = logger_factory(run_dir, config)
        _write_log(run_dir / "log.csv", history)
        progress.log(patient_summary(config))
        extras = [f"perceptual loss x{weight_p:g} ({config.get('perceptual_net')})"] if weight_p > 0 else []
        extras += ["attention gates"] if config.get("attention") else []
        extras += ["cross-patient augmentation"] if augmented else []
        progress.log(f"training on {len(train_set)} pairs ({len(val_pairs)} for validation), "
                     f"{config['image_size']} px, U-Net depth {config['unet_depth']}, device {dev}"
                     + "".join(", " + e for e in extras)
                     + (f", {info.world_size} processes" if info.enabled else "")
                     + (f", resumed at epoch {start_epoch}" if checkpoint is not None else ""))

    epochs = config["epochs"]
    total_steps = max(1, len(loader) * (epochs - start_epoch))
    done_steps, step_losses, latest = 0, [], None
    started = time.monotonic()
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            sampler.set_epoch(epoch)
            if augmented:
                train_set.set_epoch(epoch)
            gen_model.train()
            disc_model.train()
            t0 = time.monotonic()
            losses, images = [], 0
            for x, y in loader:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                fake = gen_model(x)
                # discriminator: real and fake pairs in one pass
                _requires_grad(disc, True)
                opt_d.zero_grad(set_to_none=True)
                logits = disc_model(torch.cat([torch.cat([x, y], 1), torch.cat([x, fake.detach()], 1)], 0))
                real_logits, fake_logits = logits.chunk(2)
                loss_d = 0.5 * (gan_loss(real_logits, True) + gan_loss(fake_logits, False))
                loss_d.backward()
                opt_d.step()
                # generator: D frozen and unwrapped (it gets no gradients, so nothing to synchronise)
                _requires_grad(disc, False)
                opt_g.zero_grad(set_to_none=True)
                loss_l1 = l1(fake, y)
                if weight_p > 0:
                    fake_feats, fake_logits = disc.features(torch.cat([x, fake], 1))
                    if vgg is not None:
                        loss_p = vgg(fake, y)
                    else:
                        with torch.no_grad():
                            real_feats = disc.features(torch.cat([x, y], 1))[0]
                        loss_p = perceptual.feature_matching(fake_feats, real_feats)
                    loss_g = gan_loss(fake_logits, True) + lam * loss_l1 + weight_p * loss_p
                else:
                    loss_g = gan_loss(disc(torch.cat([x, fake], 1)), True) + lam * loss_l1
                loss_g.backward()
                opt_g.step()
                losses.append(torch.stack([loss_g.detach(), loss_d.detach(), loss_l1.detach()]))
                images += x.shape[0]
                step += 1
                done_steps += 1
                progress.update(done_steps / total_steps, f"epoch {epoch}/{epochs}")
            train_seconds = time.monotonic() - t0
            local = torch.stack(losses).double().cpu() if losses else torch.zeros(0, 3, dtype=torch.float64)
            step_losses += local.tolist()
            totals = distributed.all_reduce(
                torch.cat([local.sum(0) if len(local) else torch.zeros(3, dtype=torch.float64),
                           torch.tensor([len(local), images], dtype=torch.float64)]).to(dev), info).cpu()
            mean = (totals[:3] / max(totals[3].item(), 1)).tolist()
            throughput = totals[4].item() / max(train_seconds, 1e-9)
            stop = time_limit_passed(config.get("time_limit"), started, info, dev)
            rng = distributed.gather_objects(rng_state(), info)
            if info.is_main:
                val_psnr, val_ssim = _validate(gen, val_set, dev)
                _write_samples(gen, sample_set, dev, run_dir / "samples" / f"epoch_{epoch:04d}.png")
                row = {"epoch": epoch, "step": step, "loss_G": mean[0], "loss_D": mean[1], "loss_L1": mean[2],
                       "val_psnr": val_psnr, "val_ssim": val_ssim, "seconds": time.monotonic() - t0,
                       "images_per_s": throughput}
                history.append(row)
                _write_log(run_dir / "log.csv", history)
                if logger is not None:
                    logger.log(row)
                payload = {"epoch": epoch, "step": step, "generator": gen.state_dict(),
                           "discriminator": disc.state_dict(), "optimizer_G": opt_g.state_dict(),
                           "optimizer_D": opt_d.state_dict(), "rng": rng[0],
                           "rng_ranks": rng if info.enabled else [], "config": config, "history": history}
                latest = run_dir / "latest.pth.tar"
                if epoch % config["save_every"] == 0 or epoch == epochs or stop:
                    save_checkpoint(payload, run_dir / f"gen_epoch_{epoch}.pth.tar", also=[latest])
                else:
                    save_checkpoint(payload, latest)
                progress.log(f"epoch {epoch}/{epochs}: loss_G {mean[0]:.4f} loss_D {mean[1]:.4f} "
                             f"L1 {mean[2]:.4f} val PSNR {val_psnr:.2f} dB SSIM {val_ssim:.4f} "
                             f"({throughput:.1f} images/s)")
            else:
                history.append({"epoch": epoch, "step": step, "loss_G": mean[0], "loss_D": mean[1],
                                "loss_L1": mean[2]})
            if stop:
                progress.log(f"time limit of {config['time_limit']} s reached after epoch {epoch}")
                break
        distributed.barrier(info)
    finally:
        if logger is not None:
            logger.close()
    progress.update(1.0, "done")
    return TrainResult(run_dir, history, step_losses, latest, config)


# --- helpers --------------------------------------------------------------------------------------------------
def patient_summary(config: dict) -> str:
    """The data set's pairs per patient, and which patients validate (a split by patient)."""
    patients = config.get("patients") or {}
    if not patients:
        return "pairs carry no patient ids (one unnamed patient)"
    val = set(config.get("val_names", []))
    counts = pairs_per_patient(patients)
    held = sorted({patients[n] for n in val if n in patients}) if config.get("split_by") == "patient" else []
    text = f"{len(counts)} patient(s): " + ", ".join(f"{p} {k} pair{'s' * (k != 1)}" for p, k in counts.items())
    return text + (f"; validation on held-out patient(s) {', '.join(held)}" if held else "")


def _check_numbers(epochs, batch_size, lr, lambda_l1, save_every, workers) -> None:
    for name, value, flag in (("epochs", epochs, "--epochs"), ("batch size", batch_size, "--batch-size"),
                              ("save interval", save_every, "--save-every")):
        if int(value) < 1:
            raise InputError(f"{name} must be at least 1, got {value}", None, f"pass {flag} 1 or more")
    if not lr > 0:
        raise InputError(f"learning rate must be positive, got {lr}", None, "pass --lr 2e-4")
    if lambda_l1 < 0:
        raise InputError(f"lambda L1 must not be negative, got {lambda_l1}", None, "pass --lambda-l1 100")
    if workers < 0:
        raise InputError(f"workers must not be negative, got {workers}", None, "pass --workers 0")


def _check_run_dir(run_dir: Path, data: Path, resume) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError("run folder is a file", run_dir, "give a folder name for -o")
    for sub in ("xray", "drr"):
        if run_dir == data / sub or (data / sub) in run_dir.parents:
            raise InputError(f"run folder lies inside the data's {sub}/ folder", run_dir,
                             "write the run elsewhere (-o runs/NAME)")
    if resume is None and (run_dir / "latest.pth.tar").exists():
        raise InputError("already holds a training run (latest.pth.tar)", run_dir,
                         "continue it with --resume RUN/latest.pth.tar, or choose another -o")


def time_limit_passed(limit, started: float, info, dev) -> bool:
    """Rank 0's clock decides, so every process stops after the same epoch."""
    flag = torch.tensor([1.0 if (limit and time.monotonic() - started > float(limit) and info.is_main) else 0.0],
                        device=dev)
    return bool(distributed.all_reduce(flag, info).item() > 0)


def _requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


@torch.no_grad()
def _predict_batches(gen, dataset, dev, batch: int = 8):
    """Yield (input, prediction, target) batches in [-1, 1] with the generator in eval mode (no dropout)."""
    was_training = gen.training
    gen.eval()
    try:
        for start in range(0, len(dataset), batch):
            items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
            x = torch.stack([a for a, _ in items]).to(dev)
            y = torch.stack([b for _, b in items]).to(dev)
            yield x, gen(x), y
    finally:
        gen.train(was_training)


def _validate(gen, val_set, dev) -> tuple[float, float]:
    if val_set is None or len(val_set) == 0:
        return float("nan"), float("nan")
    psnrs, ssims = [], []
    for _, pred, y in _predict_batches(gen, val_set, dev):
        p01, y01 = ((pred + 1) / 2).clamp(0, 1), ((y + 1) / 2).clamp(0, 1)
        psnrs += list(np.atleast_1d(psnr(p01, y01)))
        ssims += list(np.atleast_1d(ssim(p01, y01)))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def _write_samples(gen, dataset, dev, path: Path) -> None:
    """A grid PNG: one row per pair, input | prediction | target, 8-bit."""
    import SimpleITK as sitk

    n = min(SAMPLE_ROWS, len(dataset))
    if n == 0:
        return
    rows = []
    for x, pred, y in _predict_batches(gen, torch.utils.data.Subset(dataset, range(n)), dev):
        for i in range(x.shape[0]):
            tiles = [t[i, 0].float().cpu().numpy() for t in (x, pred, y)]
            gap = np.full((tiles[0].shape[0], 2), -1.0, np.float32)
            rows.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))
    grid = np.concatenate([np.concatenate([r, np.full((2, r.shape[1]), -1.0, np.float32)]) for r in rows])[:-2]
    img = np.round(np.clip((grid + 1) / 2, 0, 1) * 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(img), str(tmp))


def _write_log(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if isinstance(row.get(k), float) and math.isnan(row[k]) else row.get(k, ""))
                         for k in LOG_COLUMNS})
    write_text(path, buffer.getvalue())


def read_log(path: str | Path) -> list[dict]:
    """log.csv rows with numbers parsed (empty cells -> nan)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        out.append({k: (int(v) if k in ("epoch", "step") else (float(v) if v != "" else float("nan")))
                    for k, v in row.items()})
    return out


def _versions() -> dict:
    import platform

    out = {"torch": str(torch.__version__), "python": platform.python_version()}
    try:
        from importlib.metadata import version

        out["xraytodrr"] = version("xraytodrr")
    except Exception:
        pass
    return out


# --- optional loggers -----------------------------------------------------------------------------------------
class _TensorBoard:
    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, row: dict) -> None:
        for key in LOG_COLUMNS[2:]:
            value = row.get(key)
            if isinstance(value, float) and not math.isnan(value):
                self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, config: dict):
        import os

        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project="xraytodrr", name=run_dir.name, dir=str(run_dir), mode="offline",
                              config={k: v for k, v in config.items() if not k.endswith("_names")})

    def log(self, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def close(self) -> None:
        self.run.finish()


def _logger_factory(kind: str):
    """Check the optional logger is installed before anything is written; return a constructor (or a no-op)."""
    if kind == "tensorboard":
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise InputError("TensorBoard logging was requested but the tensorboard package is not installed",
                             None, "pip install tensorboard, or use --log csv") from None
        return _TensorBoard
    if kind == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise InputError("Weights & Biases logging was requested but wandb is not installed", None,
                             "pip install wandb, or use --log csv") from None
        return _Wandb
    return lambda run_dir, config: None
