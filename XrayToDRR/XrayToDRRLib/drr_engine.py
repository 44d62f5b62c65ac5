"""One prepared CT rendered by renderer name, and the metadata every DRR it writes records.

Used by `xraytodrr drr` and the pairs builder, so both offer the same renderers with the same rules.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .fast_render import MODES, FastRenderer
from .pose import Pose
from .render import RENDERERS, DRRRenderer

ENGINES = ("fast", *RENDERERS)


def check_engine(renderer: str, mode: str = "hq") -> None:
    """Raise the input error for an unknown renderer or mode (call it before any slow work)."""
    if renderer not in ENGINES:
        raise InputError(f"unknown renderer '{renderer}'", None, f"use one of {', '.join(ENGINES)}")
    if renderer == "fast" and mode not in MODES:
        raise InputError(f"unknown mode '{mode}'", None, f"use one of {', '.join(MODES)}")


class DRREngine:
    """`renderer`: fast (FastRenderer in `mode` with `backend`) | siddon | trilinear (DiffDRR)."""

    def __init__(self, ct: sitk.Image, mask: np.ndarray | None = None, renderer: str = "fast", mode: str = "hq",
                 backend: str = "auto", device: str = "auto"):
        check_engine(renderer, mode)
        self.renderer, self.mode = renderer, mode
        if renderer == "fast":
            self.engine = FastRenderer(ct, mask=mask, device=device, backend=backend)
        else:
            self.engine = DRRRenderer(ct, mask=mask, renderer=renderer, device=device)
        self.metadata = {"renderer": renderer, "device": str(self.engine.device),
                         "units": "line integral of attenuation"}
        if renderer == "fast":
            self.metadata.update(mode=mode, backend=self.engine.backend)

    def render(self, pose: Pose) -> np.ndarray:
        return self.engine.render(pose, self.mode) if self.renderer == "fast" else self.engine.render(pose)
