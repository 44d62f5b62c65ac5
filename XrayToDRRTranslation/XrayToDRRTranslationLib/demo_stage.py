"""The demo's translation stage: a short pix2pix run on simulated (X-ray, DRR) pairs around the demo pose, then the
demo X-ray (held out) translated into a DRR-like image beside the true DRR."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from XrayToDRRLib.atomic import atomic_dir
from XrayToDRRLib.fast_render import FastRenderer
from XrayToDRRLib.figures import panels
from XrayToDRRLib.images import save_image
from XrayToDRRLib.pose import perturb
from XrayToDRRLib.progress import Progress
from XrayToDRRLib.simulate import simulate_xray
from XrayToDRRLib.volumes import center_ras, read_volume
from XrayToDRRLib.xray import read_xray

from .dataset import read_gray
from .predict import load_generator, translate_image
from .train import train

# Full demo: 24 pairs at 128 px and a 90 s training budget on 2 CPU cores; quick (tests): 6 pairs, 64 px, 10 s.
SETTINGS = {False: dict(pairs=24, size=128, budget_s=90.0, width=16), True: dict(pairs=6, size=64, budget_s=10.0, width=8)}


def write_pairs(ct, pose, folder: Path, n: int, size: int, seed: int, device: str, progress: Progress) -> Path:
    """Simulated X-rays and DRRs at `n` poses scattered around `pose` (up to 8 degrees, 15 mm)."""
    rng = np.random.default_rng(seed + 1000)
    detector = pose.with_detector(height=size, width=size)
    renderer = FastRenderer(ct, device=device)
    centre = center_ras(ct)
    with atomic_dir(folder) as tmp:
        for k in range(n):
            progress.update(k / n, f"pair {k + 1}/{n}")
            p = perturb(detector, rng.uniform(-8, 8, 3), rng.uniform(-15, 15, 3), centre)
            save_image(simulate_xray(ct, p, seed=seed + 1 + k, device=device), Path(tmp) / "xray" / f"pose{k:03d}.png")
            save_image(renderer.render(p, "hq"), Path(tmp) / "drr" / f"pose{k:03d}.png")
    return folder


def run(context: dict, progress: Progress) -> dict:
    settings = SETTINGS[bool(context.get("quick"))]
    out = Path(context["out"]) / "translation"
    ct = read_volume(context["volume"])
    pose = dataclasses.replace(context["pose"])
    progress.log(f"translation: simulating {settings['pairs']} X-ray/DRR pairs around the demo pose")
    pairs = write_pairs(ct, pose, out / "pairs", settings["pairs"], settings["size"], int(context["seed"]),
                        context["device"], progress.sub(0.0, 0.4))
    progress.log(f"translation: training pix2pix for about {settings['budget_s']:.0f} s")
    run_dir = out / "run"
    with atomic_dir(run_dir) as tmp:  # a second `make demo` replaces the demo's own run (train keeps any other)
        result = train(pairs, tmp, epochs=10_000, image_size=settings["size"], ngf=settings["width"],
                       ndf=settings["width"], val_fraction=0.2, time_limit=settings["budget_s"], save_every=10_000,
                       device=context["device"], seed=int(context["seed"]), progress=progress.sub(0.4, 0.95))
    checkpoint = run_dir / Path(result.checkpoint).name  # latest.pth.tar, at the top of the run folder
    gen, config, device = load_generator(checkpoint, context["device"])
    xray = read_xray(context["xray"]).pixels
    predicted = translate_image(gen, config, xray, device)
    true_drr = read_gray(context["drr"])
    figure = panels([xray, predicted, true_drr], ["demo X-ray (held out)", "pix2pix prediction", "true DRR"],
                    out / "translation.png", suptitle=f"X-ray -> DRR after {len(result.history)} short epochs")
    return {"translation_checkpoint": checkpoint, "translation_figure": figure}
