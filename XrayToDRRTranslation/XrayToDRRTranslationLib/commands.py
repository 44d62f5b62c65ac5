"""CLI verbs of this Lib (plugged into `xraytodrr` through the xraytodrr.commands entry point):
`pairs`, `augment`, and the `translate` group (`train`, `predict`, `evaluate`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from XrayToDRRLib.cli import DeviceOption, ProgressOption, app, verb
from XrayToDRRLib.errors import InputError

from .pairs import DEFAULT_MIN_CONFIDENCE

translate = typer.Typer(help="Learn X-ray -> DRR translation (pix2pix): train, predict, evaluate.",
                        no_args_is_help=True)
app.add_typer(translate, name="translate")


class Logger(str, Enum):
    csv = "csv"
    tensorboard = "tensorboard"
    wandb = "wandb"


class GanMode(str, Enum):
    vanilla = "vanilla"
    lsgan = "lsgan"


class PerceptualNet(str, Enum):
    discriminator = "discriminator"
    vgg16 = "vgg16"


class Augment(str, Enum):
    none = "none"
    cross_patient = "cross-patient"


class SplitBy(str, Enum):
    pair = "pair"
    patient = "patient"


class Axis(str, Enum):
    x = "x"
    y = "y"
    z = "z"


@verb("pairs", "Building pairs")
def pairs_verb(
    output: Annotated[Path, typer.Option("-o", "--output", help="paired-data folder to write (xray/, drr/, csv)")],
    folders: Annotated[Optional[list[Path]], typer.Argument(
        help="registration output folders (pose.json, gt.png, metrics.json, parameters.pt), or folders of them",
        show_default=False)] = None,
    min_ncc: Annotated[Optional[float], typer.Option(
        "--min-ncc", help="drop cases registered with an NCC below this (listed in the output and pairs.csv)")] = None,
    min_confidence: Annotated[float, typer.Option(
        "--min-confidence", help="drop cases whose registration confidence is below this (0: keep all; default: "
                                 "the level below which register warns)")] = DEFAULT_MIN_CONFIDENCE,
    masked: Annotated[bool, typer.Option(
        "--masked", help="render the DRR from the registration's mask labels only (default: the whole CT)")] = False,
    volumes: Annotated[Optional[tuple[Path, Path]], typer.Option(
        "--volumes", help="instead of registration folders: INPUT TARGET volumes on the same grid (e.g. MRI CT), "
                          "cut into slice pairs", show_default=False)] = None,
    axis: Annotated[Axis, typer.Option(help="slice axis for --volumes (the volume's index axes)")] = Axis.z,
    renderer: Annotated[str, typer.Option(
        help="DRR renderer: fast (volume pyramid, see --mode) | siddon (exact) | trilinear (DiffDRR)")] = "fast",
    mode: Annotated[str, typer.Option(help="with --renderer fast: hq (detector-matched) | full (original voxels)")] = "hq",
    patient_id_from: Annotated[Optional[str], typer.Option(
        "--patient-id-from", help="patient id of each pair (pairs.csv column `patient`, for translate train "
                                  "--split-by patient): parent | grandparent (folder names) | csv:FILE (columns "
                                  "folder, patient); default: none (one unnamed patient)")] = None,
    device: DeviceOption = "auto",
    dask: Annotated[Optional[str], typer.Option(
        "--dask", help="a Dask scheduler's address (tcp://HOST:8786): the DRRs are rendered by its workers, each "
                       "keeping the CT between cases; the output's parent folder must be shared with them")] = None,
    progress: ProgressOption = "bar",
):
    """Build aligned (X-ray, DRR) training pairs from registration results, or slice pairs from two volumes."""
    from .pairs import build_pairs, pairs_from_volumes

    use_volumes = volumes is not None and volumes[0] is not None
    if use_volumes and patient_id_from:
        raise InputError("--patient-id-from applies to registration folders, not --volumes", None,
                         "drop --patient-id-from")
    if use_volumes and folders:
        raise InputError("give either registration folders or --volumes, not both", None,
                         "run `xraytodrr pairs` once for each kind")
    if use_volumes and dask:
        raise InputError("--dask distributes the DRRs of registration folders, not --volumes slices", None,
                         "drop --dask (slicing two volumes is quick here)")
    if use_volumes:
        report = pairs_from_volumes(volumes[0], volumes[1], output, axis=axis.value, progress=progress)
    elif folders:
        report = build_pairs(folders, output, min_ncc=min_ncc, min_confidence=min_confidence, masked=masked,
                             device=device, progress=progress, renderer=renderer, mode=mode,
                             patient_id_from=patient_id_from, dask=dask)
    else:
        raise InputError("no inputs", None, "give registration output folders, or --volumes INPUT TARGET")
    typer.echo(f"wrote {len(report.kept)} pair(s) to {report.output}")
    if report.patient_summary():
        typer.echo(report.patient_summary())
    if report.dropped:
        typer.echo(f"dropped {len(report.dropped)}: " + "; ".join(f"{d['name']} ({d['reason']})"
                                                                   for d in report.dropped))
    return [report.output]


@verb("augment", "Augmenting pairs")
def augment_verb(
    input: Annotated[Path, typer.Option("-i", "--input", help="paired-data folder (xray/ and drr/)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="new folder (never inside the input)")],
    copies: Annotated[int, typer.Option(help="augmented copies of each pair")] = 4,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same files")] = 0,
    originals: Annotated[bool, typer.Option("--originals/--no-originals", help="also copy the original pairs")]
    = True,
    rotation: Annotated[float, typer.Option(help="largest rotation, degrees")] = 10.0,
    scale: Annotated[float, typer.Option(help="largest relative scale change")] = 0.1,
    translate_by: Annotated[float, typer.Option("--translate", help="largest shift, fraction of the size")] = 0.05,
    elastic: Annotated[float, typer.Option(help="largest elastic displacement, fraction of the size")] = 0.01,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="random horizontal flips")] = True,
    photometric: Annotated[bool, typer.Option(
        "--photometric/--no-photometric", help="gamma, contrast, blur and noise on the X-ray only")] = True,
    progress: ProgressOption = "bar",
):
    """Augment paired data: one random geometric transform on both images, photometric changes on the X-ray only."""
    from .augment import Settings, augment

    settings = Settings(flip=flip, rotation=rotation, scale=scale, translate=translate_by, elastic=elastic,
                        photometric=photometric)
    out = augment(input, output, copies=copies, seed=seed, keep_originals=originals, settings=settings,
                  progress=progress)
    return [out]


@verb("train", "Training pix2pix", group=translate)
def train_verb(
    output: Annotated[Path, typer.Option("-o", "--output", help="run folder (checkpoints, log.csv, samples/)")],
    data: Annotated[Optional[Path], typer.Option(
        "-i", "--input", help="paired-data folder (xray/ and drr/); with --resume, defaults to the run's")] = None,
    epochs: Annotated[int, typer.Option(help="total epochs (a resumed run continues up to this)")] = 200,
    batch_size: Annotated[int, typer.Option("--batch-size", help="pairs per step (per process under torchrun)")] = 1,
    lr: Annotated[float, typer.Option(help="Adam learning rate (both networks)")] = 2e-4,
    beta1: Annotated[float, typer.Option(help="Adam beta1")] = 0.5,
    lambda_l1: Annotated[float, typer.Option("--lambda-l1", help="weight of the L1 term")] = 100.0,
    image_size: Annotated[int, typer.Option(
        "--image-size", help="network input size; a multiple of 2**depth (256 and up: of 256)")] = 256,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="pairs (or, --split-by patient, patients) held out for validation")] = 0.1,
    split_by: Annotated[SplitBy, typer.Option(
        "--split-by", help="pair: random validation pairs; patient: whole patients held out (ids from `pairs "
                           "--patient-id-from`), none in both sets")] = SplitBy.pair,
    resume: Annotated[Optional[Path], typer.Option(help="checkpoint to continue (latest.pth.tar)")] = None,
    log: Annotated[Logger, typer.Option(help="csv; tensorboard (if installed) or wandb (offline) too")] = Logger.csv,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (torchrun: one GPU per process)")] = "auto",
    seed: Annotated[int, typer.Option(help="random seed (initialisation, split, data order, dropout)")] = 0,
    ngf: Annotated[int, typer.Option(help="generator base channels")] = 64,
    ndf: Annotated[int, typer.Option(help="discriminator base channels")] = 64,
    gan_mode: Annotated[GanMode, typer.Option("--gan-mode", help="vanilla: BCEWithLogits (paper); lsgan: MSE")]
    = GanMode.vanilla,
    dropout: Annotated[float, typer.Option(help="dropout in the U-Net's inner decoder levels")] = 0.5,
    save_every: Annotated[int, typer.Option("--save-every", help="write gen_epoch_N.pth.tar every N epochs")] = 5,
    workers: Annotated[int, typer.Option(help="data-loading worker processes")] = 0,
    time_limit: Annotated[Optional[float], typer.Option(
        "--time-limit", help="stop (and save) after the first epoch that ends past this many seconds")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's choice)")] = None,
    perceptual_loss: Annotated[float, typer.Option(
        "--perceptual-loss", help="weight of a feature loss added to the generator's (0: off, pix2pix)")] = 0.0,
    perceptual_net: Annotated[PerceptualNet, typer.Option(
        "--perceptual-net", help="discriminator: feature matching on the PatchGAN's activations; vgg16: "
                                 "torchvision's, only if its weights are already in the torch cache")
    ] = PerceptualNet.discriminator,
    attention: Annotated[bool, typer.Option(
        "--attention", help="attention gates in the U-Net's skip connections (Oktay et al.)")] = False,
    augment: Annotated[Augment, typer.Option(
        "--augment", help="cross-patient: per-epoch body size, exposure, processing, blur and noise "
                          "(geometry on both images, the rest on the X-ray)")] = Augment.none,
    progress: ProgressOption = "bar",
):
    """Train pix2pix (U-Net generator + 70x70 PatchGAN) on X-ray -> DRR pairs; launch with torchrun for DDP."""
    from .train import train

    result = train(data, output, epochs=epochs, batch_size=batch_size, lr=lr, beta1=beta1, lambda_l1=lambda_l1,
                   image_size=image_size, val_fraction=val_fraction, resume=resume, log=log.value, device=device,
                   seed=seed, ngf=ngf, ndf=ndf, gan_mode=gan_mode.value, dropout=dropout, save_every=save_every,
                   workers=workers, time_limit=time_limit, threads=threads, split_by=split_by.value,
                   perceptual_loss=perceptual_loss, perceptual_net=perceptual_net.value, attention=attention,
                   augment=augment.value, progress=progress)
    return [result.checkpoint] if result.checkpoint else []


@verb("predict", "Translating X-rays", group=translate)
def predict_verb(
    input: Annotated[Path, typer.Option("-i", "--input", help="X-ray file or folder (DICOM, PNG/TIFF/JPEG, NIfTI)")],
    checkpoint: Annotated[Path, typer.Option(help="training checkpoint (gen_epoch_N.pth.tar / latest.pth.tar)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder (same names and file types)")],
    device: DeviceOption = "auto",
    progress: ProgressOption = "bar",
):
    """Translate X-rays into DRR-like images; keeps each input's size, spacing and DICOM geometry tags."""
    from .predict import predict

    return predict(input, checkpoint, output, device=device, progress=progress)


@verb("evaluate", "Evaluating", group=translate)
def evaluate_verb(
    pairs: Annotated[Path, typer.Option("--pairs", help="held-out paired-data folder (xray/ and drr/)")],
    checkpoint: Annotated[Path, typer.Option(help="training checkpoint")],
    output: Annotated[Path, typer.Option("-o", "--output", help="report folder (metrics.csv, summary.json, PNGs)")],
    masks: Annotated[Optional[Path], typer.Option(help="bone masks NAME.png per pair: adds bone Dice")] = None,
    bone_threshold: Annotated[Optional[float], typer.Option(
        "--bone-threshold", help="bone threshold on the [0, 1] images (default: Otsu of each target)")] = None,
    device: DeviceOption = "auto",
    progress: ProgressOption = "bar",
):
    """PSNR, SSIM and MAE of translated X-rays against their DRRs (CSV, JSON, best/median/worst figures)."""
    from .evaluate import evaluate

    summary = evaluate(pairs, checkpoint, output, masks=masks, bone_threshold=bone_threshold, device=device,
                       progress=progress)
    m = summary["metrics"]
    typer.echo(f"{summary['n_pairs']} pairs: PSNR {m['psnr']['mean']:.2f} dB, SSIM {m['ssim']['mean']:.4f}, "
               f"MAE {m['mae']['mean']:.4f}" + (f", bone Dice {m['dice']['mean']:.3f}" if "dice" in m else ""))
    return [Path(output) / name for name in ("metrics.csv", "summary.json")]
