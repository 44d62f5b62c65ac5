"""The demo's registration stage: start from the true pose moved by several degrees and millimetres, register the
simulated X-ray back, and evaluate against the truth (figure + metrics with mTRE)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from XrayToDRRLib.pose import perturb
from XrayToDRRLib.progress import Progress
from XrayToDRRLib.volumes import center_ras, read_volume

from .batch import RegistrationOptions, register
from .evaluate import evaluate
from .initialize import Initializer

# Per-axis offset of the start from the true pose (signs drawn from the seed); quick mode (tests, 64 px on a coarse
# CT) starts closer and stops sooner.
START_OFFSET = {False: {"rotation_deg": 6.0, "translation_mm": 12.0}, True: {"rotation_deg": 3.0, "translation_mm": 6.0}}


def run(context: dict, progress: Progress) -> dict:
    out = Path(context["out"]) / "registration"
    out.mkdir(parents=True, exist_ok=True)
    truth, quick = context["pose"], bool(context.get("quick"))
    offset = START_OFFSET[quick]
    rng = np.random.default_rng(int(context["seed"]) + 7)
    signs = lambda: rng.choice([-1.0, 1.0], 3)  # noqa: E731
    start = perturb(truth, offset["rotation_deg"] * signs(), offset["translation_mm"] * signs(),
                    center_ras(read_volume(context["volume"])))
    start_path = start.save(out / "start_pose.json")
    options = RegistrationOptions(volume=str(Path(context["volume"]).resolve()), device=context["device"],
                                  renderer="fast", max_n_itrs=100 if quick else 200,
                                  scales="2,1" if quick else "auto")
    progress.log(f"registration: from {offset['rotation_deg']} deg / {offset['translation_mm']} mm "
                 "off the true pose")
    register(context["xray"], options, Initializer("pose", str(start_path)), out / "result", progress.sub(0, 0.85))
    written = evaluate(out / "result", gt_pose=context["true_pose"], progress=progress.sub(0.85, 1.0))
    metrics = json.loads((out / "result" / "metrics.json").read_text())
    progress.log("registration: " + ", ".join(f"{k} {metrics[k]:.2f}" for k in ("mtre", "ncc") if k in metrics))
    figure = next((Path(p) for p in written if str(p).endswith(".png")), out / "result" / "evaluation.png")
    return {"registration": out / "result", "registration_figure": figure}
