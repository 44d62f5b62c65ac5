"""Reading .pt/.pth/.pth.tar files safely: `weights_only=True` (no code in the file runs), bad files -> InputError;
`plain_data` turns what a checkpoint should hold into the built-in types such a load accepts."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError, require_file


def load_torch_file(path: str | Path, fix: str, map_location="cpu", what: str = "torch file"):
    """torch.load with weights_only=True; a missing, corrupt or code-carrying file raises InputError naming it
    and saying `fix`."""
    import torch

    p = require_file(path, what)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise InputError(f"cannot read as a {what} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})",
                         p, fix) from None


def plain_data(obj):
    """Checkpoint values (configs, histories, scheduler states) as exact built-in types: str subclasses such as
    torch's version string, numpy scalars, paths and tuples would make a weights_only load refuse the file."""
    import numpy as np
    import torch

    if isinstance(obj, dict):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, (str, Path)):
        return str(obj)
    if torch.is_tensor(obj):
        return obj
    raise TypeError(f"checkpoint value of type {type(obj).__name__} is not plain data")
