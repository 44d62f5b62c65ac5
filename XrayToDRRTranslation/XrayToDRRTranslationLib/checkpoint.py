"""Training checkpoints: what `gen_epoch_N.pth.tar` / `latest.pth.tar` hold, written atomically, read safely.

A checkpoint is a dict of plain data only (tensors, numbers, strings, lists, dicts), so it loads with
`torch.load(..., weights_only=True)` and no code in the file can run:

    kind "xraytodrr-pix2pix", format_version, epoch, step,
    generator, discriminator (state dicts), optimizer_G, optimizer_D (Adam state dicts),
    rng: rank 0's random states (torch, numpy, python, CUDA; see XrayToDRRLib.rng),
    rng_ranks: [rng of every rank] (distributed runs), config: the full training config (normalisation included),
    history: the log.csv rows so far.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from XrayToDRRLib.atomic import atomic_path
from XrayToDRRLib.errors import InputError, require_file
from XrayToDRRLib.torchfiles import plain_data

KIND = "xraytodrr-pix2pix"
FORMAT_VERSION = 1
FIX = "give a gen_epoch_N.pth.tar or latest.pth.tar written by `xraytodrr translate train`"


def save_checkpoint(payload: dict, path: str | Path, also: list[str | Path] = ()) -> Path:
    """torch.save to a temporary sibling, then rename (a cancelled save leaves the previous file intact);
    `also` are further names that get a (likewise atomic) copy, e.g. latest.pth.tar."""
    path = Path(path)
    payload = {"kind": KIND, "format_version": FORMAT_VERSION, **payload}
    for key in ("config", "history"):
        if key in payload:
            payload[key] = plain_data(payload[key])
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    for other in also:
        with atomic_path(other) as tmp:
            shutil.copyfile(path, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A validated checkpoint dict (tensors on the CPU); InputError naming the file if it is corrupt, unsafe or of
    another kind."""
    p = require_file(path, "checkpoint")
    if p.is_dir():
        raise InputError("is a folder, not a checkpoint", p, FIX)
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt, truncated, foreign or unsafe files
        reason = "holds pickled Python objects a safe load refuses" if "Unsupported global" in str(e) \
            else f"cannot read as a torch checkpoint ({type(e).__name__}; corrupt or truncated?)"
        raise InputError(reason, p, FIX) from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        what = f"keys {sorted(map(str, data))[:6]}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise InputError(f"is not an XrayToDRR pix2pix checkpoint (it holds {what})", p, FIX)
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"checkpoint format {data.get('format_version')} is newer than this version reads "
                         f"({FORMAT_VERSION})", p, "update xraytodrr")
    missing = [k for k in ("generator", "config", "epoch") if k not in data]
    if missing or not isinstance(data.get("config"), dict):
        raise InputError(f"checkpoint lacks {', '.join(missing) or 'a config dict'}", p, FIX)
    return data


def load_state(module: torch.nn.Module, state: dict, path: str | Path, what: str) -> None:
    """load_state_dict, with a mismatch reported as InputError naming the file."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160]
        raise InputError(f"{what} weights do not match the network its config describes ({first})", path,
                         FIX) from None
