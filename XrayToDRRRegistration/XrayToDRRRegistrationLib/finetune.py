"""Patient-specific finetuning (xvr's idea): start from a trained pose regressor and keep training it on one
patient's CT, with a lower learning rate and a fresh optimiser and schedule.

The new run keeps the checkpoint's recipe (pose ranges, detector, network, loss weights, renderer, frame) except
what is given here. `rescale` changes the virtual detector's sampling, not its field of view: height x rescale
pixels of delx / rescale mm (as xvr's `finetune --rescale`); the network's global pooling accepts the new size.
The result is an ordinary pose-regressor run (config.finetuned_from names the checkpoint): resume it with
`xraytodrr train --resume OUTDIR/last.pth`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.progress import Progress

from .model import load_checkpoint
from .train import TrainConfig, find_volumes, train

DEFAULT_EPOCHS = 10
DEFAULT_BATCHES = 25
LR_FACTOR = 0.1  # default finetuning learning rate: a tenth of the checkpoint's


def finetune_config(ckpt: dict, volume: str | Path, checkpoint_path: str | Path, lr: float | None = None,
                    batch_size: int | None = None, n_epochs: int | None = None,
                    n_batches_per_epoch: int | None = None, rescale: float = 1.0,
                    seed: int | None = None) -> TrainConfig:
    base = TrainConfig.from_dict(ckpt["config"], checkpoint_path)
    if not (rescale > 0):
        raise InputError(f"--rescale must be positive, got {rescale}", None, "give e.g. --rescale 0.5 or 2")
    height = int(round(base.height * rescale))
    if height < 16:
        raise InputError(f"--rescale {rescale:g} leaves a {height}-pixel detector", None,
                         "keep height x rescale at 16 pixels or more")
    return dataclasses.replace(
        base,
        volume=str(volume),
        lr=float(lr) if lr is not None else base.lr * LR_FACTOR,
        batch_size=int(batch_size) if batch_size is not None else base.batch_size,
        n_epochs=int(n_epochs) if n_epochs is not None else DEFAULT_EPOCHS,
        n_batches_per_epoch=int(n_batches_per_epoch) if n_batches_per_epoch is not None else DEFAULT_BATCHES,
        height=height,
        delx=base.delx * base.height / height,  # same field of view
        warmup_fraction=0.0,
        save_every=None,
        seed=int(seed) if seed is not None else base.seed,
        pretrained=False,
        finetuned_from=str(checkpoint_path),
    )


def finetune(volume: str | Path, checkpoint: str | Path, output: str | Path, lr: float | None = None,
             batch_size: int | None = None, n_epochs: int | None = None, n_batches_per_epoch: int | None = None,
             rescale: float = 1.0, seed: int | None = None, device: str = "auto", log: str = "csv",
             progress: Progress | None = None) -> list[Path]:
    """Finetune `checkpoint` on the CT `volume`; writes a training run to `output` (see train.py)."""
    if len(find_volumes(volume)) > 1:
        raise InputError("finetuning takes one patient's CT, not a folder of CTs", volume, "give one CT file")
    ckpt = load_checkpoint(checkpoint, "cpu")
    config = finetune_config(ckpt, volume, checkpoint, lr, batch_size, n_epochs, n_batches_per_epoch, rescale, seed)
    return train(config, output, device=device, log=log, progress=progress, init_state=ckpt["model_state_dict"])
