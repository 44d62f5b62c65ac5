"""`xraytodrr register --translate CKPT`: the prepared X-ray translated into a DRR-like image by a pix2pix generator
trained with `xraytodrr translate train`, before the pose search, the optimiser and the confidence compare it
with DRRs. The initialisers (pose model, landmarks) still see the X-ray, and the original stays the one written to
gt.png and evaluated (PreparedXray.shown); metrics.json records the translation under `translate`.

The translation runs once per X-ray on the prepared image (cropped, rescaled, background and log options
applied), normalised and resized as in training (XrayToDRRTranslationLib.predict.translate_image), then rescaled
to [0, 1] like every prepared image; the collimation mask is the original's.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .preprocess import PreparedXray


class XrayTranslator:
    """A loaded generator; a checkpoint of another kind raises InputError naming it (before anything is written)."""

    def __init__(self, checkpoint: str | Path, device):
        from XrayToDRRTranslationLib.predict import load_generator

        self.checkpoint = Path(checkpoint).absolute()
        self.gen, self.config, self.device = load_generator(checkpoint, device)

    def __call__(self, prepared: PreparedXray) -> tuple[PreparedXray, float]:
        """(the prepared X-ray with its image translated, seconds)."""
        from XrayToDRRTranslationLib.predict import translate_image

        started = time.perf_counter()
        image = translate_image(self.gen, self.config, prepared.image, self.device).astype(np.float64)
        lo, hi = float(image.min()), float(image.max())
        image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
        translated = dataclasses.replace(prepared, image=image.astype(np.float32), original=prepared.shown)
        return translated, time.perf_counter() - started

    def record(self, seconds: float) -> dict:
        """metrics.json `translate`: which generator, how it was trained, how long the translation took."""
        c = self.config
        return {"checkpoint": str(self.checkpoint), "image_size": int(c["image_size"]),
                "attention": bool(c.get("attention", False)), "augment": c.get("augment", "none"),
                "perceptual_loss": float(c.get("perceptual_loss", 0.0)), "trained_on": c.get("data"),
                "seconds": round(float(seconds), 3)}
