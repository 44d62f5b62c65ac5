"""CLI verbs: train and finetune (the pose regressor that gives registration its initial pose)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from XrayToDRRLib.cli import DeviceOption, ProgressOption, verb
from XrayToDRRLib.errors import InputError

Range = Optional[tuple[float, float]]

RANGE_HELP = {
    "r1": "C-arm rotation about the S (head-feet) axis through the volume centre, degrees, MIN MAX "
          "(+ takes an AP source towards the patient's left) [default: -30 30]",
    "r2": "C-arm rotation about the R (left-right) axis, degrees (+ towards the head) [default: -15 15]",
    "r3": "C-arm rotation about the A (front-back) axis, degrees (in-plane for AP) [default: -15 15]",
    "tx": "source offset along R from the volume centre before rotating, mm (shifts the volume across the image) "
          "[default: -50 50]",
    "ty": "source offset along A: the source-to-volume-centre distance, mm; positive for AP, negative for PA "
          "[default: 600 900 for AP, -900 -600 for PA]",
    "tz": "source offset along S before rotating, mm (shifts the volume up/down the image) [default: -50 50]",
}

# Options that define the run; with --resume they come from the checkpoint and may not be given.
RECIPE = ("volume", "r1", "r2", "r3", "tx", "ty", "tz", "sdd", "height", "delx", "renderer", "orientation",
          "reverse_x_axis", "parameterization", "convention", "model_name", "norm_layer", "pretrained", "lr",
          "weight_geo", "weight_ncc", "batch_size", "n_epochs", "n_batches_per_epoch", "name", "seed", "save_every")


@verb("train", "Training the pose regressor")
def train_verb(
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="run folder: last.pth, step_N.pth, log.csv, config.json")],
    volume: Annotated[Optional[Path], typer.Option("-i", "--input", help="CT, DICOM folder, or folder of CTs")] = None,
    r1: Annotated[Range, typer.Option(help=RANGE_HELP["r1"])] = None,
    r2: Annotated[Range, typer.Option(help=RANGE_HELP["r2"])] = None,
    r3: Annotated[Range, typer.Option(help=RANGE_HELP["r3"])] = None,
    tx: Annotated[Range, typer.Option(help=RANGE_HELP["tx"])] = None,
    ty: Annotated[Range, typer.Option(help=RANGE_HELP["ty"])] = None,
    tz: Annotated[Range, typer.Option(help=RANGE_HELP["tz"])] = None,
    sdd: Annotated[Optional[float], typer.Option(help="source-to-detector distance of the DRRs, mm (required)")] \
        = None,
    height: Annotated[Optional[int], typer.Option(help="DRR size, pixels (square; required)")] = None,
    delx: Annotated[Optional[float], typer.Option(help="DRR pixel spacing on the detector, mm (required)")] = None,
    renderer: Annotated[Optional[str], typer.Option(
        help="fast (volume pyramid) | trilinear | siddon (DiffDRR) [default: fast on CPU, trilinear on CUDA]")] = None,
    orientation: Annotated[Optional[str], typer.Option(help="reference view AP | PA [default: AP]")] = None,
    reverse_x_axis: Annotated[Optional[bool], typer.Option(
        "--reverse-x-axis/--no-reverse-x-axis",
        help="DiffDRR camera of the pose frame [default: on for AP, off for PA; the other pairs mirror images]")] \
        = None,
    parameterization: Annotated[Optional[str], typer.Option(
        help="rotation output of the network [default: quaternion_adjugate]")] = None,
    convention: Annotated[Optional[str], typer.Option(help="Euler order for euler_angles [default: ZXY]")] = None,
    model_name: Annotated[Optional[str], typer.Option(help="timm backbone [default: resnet18]")] = None,
    norm_layer: Annotated[Optional[str], typer.Option(help="groupnorm | batchnorm | layernorm | default "
                                                           "[default: groupnorm]")] = None,
    pretrained: Annotated[Optional[bool], typer.Option(
        "--pretrained/--no-pretrained", help="ImageNet weights, from the local timm/Hugging Face cache only "
                                             "(never downloaded) [default: off]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="peak learning rate (warmup, then cosine) [default: 2e-4]")] \
        = None,
    weight_geo: Annotated[Optional[float], typer.Option(help="weight of the geodesic (mm) term [default: 0.01]")] \
        = None,
    weight_ncc: Annotated[Optional[float], typer.Option(
        help="weight of the image term (1 - gradient multiscale NCC); 0 = geodesic only, no second rendering "
             "[default: 1]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="DRRs per step and process [default: 32]")] = None,
    n_epochs: Annotated[Optional[int], typer.Option(help="epochs [default: 100]")] = None,
    n_batches_per_epoch: Annotated[Optional[int], typer.Option(help="steps per epoch [default: 100]")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="checkpoint every N steps [default: once per epoch]")] \
        = None,
    name: Annotated[Optional[str], typer.Option(help="run name (TensorBoard / wandb) [default: the folder's]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed of weights and batches [default: 0]")] = None,
    device: DeviceOption = "auto",
    resume: Annotated[Optional[Path], typer.Option(help="continue the run of this checkpoint exactly")] = None,
    log: Annotated[str, typer.Option(help="csv (always written) | tensorboard | wandb (offline) as well")] = "csv",
    progress: ProgressOption = "bar",
):
    """Train a pose regressor (xvr's network and loss) on DRRs of a CT or of a folder of CTs.

    Poses: the source starts at volume centre + (tx, ty, tz) looking along the reference view (AP: beam anterior
    to posterior), then the C-arm turns about the volume centre by Rz(r1) Rx(r2) Ry(r3) (RAS axes). Under torchrun
    every process trains on its own batches and only rank 0 writes.
    """
    from .train import TrainConfig, train

    _only_rank_0_reports(progress)
    given = {k: v for k, v in locals().items() if k in RECIPE and v is not None}
    if resume is not None:
        if given:
            raise InputError(f"--resume continues the checkpoint's run; it fixes {', '.join(_flag(k) for k in given)}",
                             resume, "drop those options (or start a new run without --resume)")
        return train(None, output, device=device, log=log, resume=resume, progress=progress)
    missing = [_flag(k) for k in ("volume", "sdd", "height", "delx") if k not in given]
    if missing:
        raise InputError(f"missing {', '.join(missing)}", None, "give the CT and the DRR detector (or --resume CKPT)")
    fields = {("volume" if k == "volume" else k): (str(v) if isinstance(v, Path) else v) for k, v in given.items()}
    fields.setdefault("name", output.name)
    return train(TrainConfig(**fields), output, device=device, log=log, progress=progress)


@verb("finetune", "Finetuning the pose regressor")
def finetune_verb(
    volume: Annotated[Path, typer.Option("-i", "--input", help="the patient's CT")],
    checkpoint: Annotated[Path, typer.Option("-c", "--checkpoint", help="pose-regressor checkpoint (.pth)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="run folder for the finetuned model")],
    lr: Annotated[Optional[float], typer.Option(help="peak learning rate [default: the checkpoint's / 10]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="DRRs per step [default: the checkpoint's]")] = None,
    n_epochs: Annotated[Optional[int], typer.Option(help="epochs [default: 10]")] = None,
    n_batches_per_epoch: Annotated[Optional[int], typer.Option(help="steps per epoch [default: 25]")] = None,
    rescale: Annotated[float, typer.Option(help="detector sampling factor: height x R pixels of delx / R mm")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="random seed [default: the checkpoint's]")] = None,
    device: DeviceOption = "auto",
    log: Annotated[str, typer.Option(help="csv | tensorboard | wandb (offline)")] = "csv",
    progress: ProgressOption = "bar",
):
    """Finetune a pose regressor on one patient's CT (lower learning rate, fresh optimiser)."""
    from .finetune import finetune

    _only_rank_0_reports(progress)
    return finetune(volume, checkpoint, output, lr=lr, batch_size=batch_size, n_epochs=n_epochs,
                    n_batches_per_epoch=n_batches_per_epoch, rescale=rescale, seed=seed, device=device, log=log,
                    progress=progress)


def _only_rank_0_reports(progress) -> None:
    """Under torchrun only rank 0 speaks: the others' JSON lines (their `done` event included) go nowhere."""
    import os

    from XrayToDRRLib.distributed import from_env

    if not from_env().is_main and hasattr(progress, "stream"):
        progress.stream = open(os.devnull, "w")


def _flag(name: str) -> str:
    return "-i" if name == "volume" else "--" + name.replace("_", "-")
