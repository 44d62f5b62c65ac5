"""Reading .pt/.pth/.pth.tar files safely: `weights_only=True` (no code in the file runs), bad files -> InputError."""

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
