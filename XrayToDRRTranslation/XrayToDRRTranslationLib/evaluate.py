"""Evaluate a trained generator on held-out pairs: PSNR, SSIM, MAE per pair and summarised, bone Dice with masks.

Each X-ray is translated at its own size (predict.translate_image); the target DRR is normalised the way training
normalised it (dataset.normalize) and mapped to [0, 1], so prediction and target share a data range of 1.
Metrics follow skimage.metrics (see metrics.py).

Bone Dice (`masks`: a folder with one mask image per pair name, bone > 0, at the pair's size): the prediction and
the target are thresholded at `bone_threshold` (default: Otsu's threshold of the target) and compared with the mask:
`dice` for the prediction, `dice_target` for the target itself (what a perfect translation would reach).

Output folder (written as a whole, atomically): metrics.csv (one row per pair), summary.json (mean, median, std,
min, max of each metric; best/median/worst case names), and best.png / median.png / worst.png (by PSNR: input,
prediction, target on one [0, 1] grey scale; |prediction - target| in colour, black = 0).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from XrayToDRRLib.atomic import atomic_dir
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.figures import panels
from XrayToDRRLib.progress import Progress

from .dataset import images_by_name, few, check_pairs, image_info, list_pairs, normalize, read_gray, to_unit
from .metrics import dice, mae, psnr, ssim
from .outputs import check_output_dir
from .predict import load_generator, translate_image

METRICS = ("psnr", "ssim", "mae")


def evaluate(pairs_dir: str | Path, checkpoint: str | Path, output: str | Path, masks: str | Path | None = None,
             bone_threshold: float | None = None, device: str = "auto", progress: Progress | None = None) -> dict:
    """Evaluate `checkpoint` on the pairs in `pairs_dir`; write the report folder `output`; return the summary."""
    progress = progress or Progress()
    pairs = list_pairs(pairs_dir)
    check_pairs(pairs)
    mask_files = _masks_for(pairs, masks) if masks is not None else {}
    if bone_threshold is not None and not 0.0 <= bone_threshold <= 1.0:
        raise InputError(f"bone threshold must be in [0, 1], got {bone_threshold}", None,
                         "pass --bone-threshold 0.6 (intensity of the [0, 1] DRR), or leave it out for Otsu")
    out = check_output_dir(output, [pairs_dir, masks, checkpoint], "-o")
    gen, config, dev = load_generator(checkpoint, device)
    norm = config.get("normalization")

    rows = []
    for n, pair in enumerate(pairs):
        progress.update(0.9 * n / len(pairs), f"{n + 1}/{len(pairs)} {pair.name}")
        x, pred, target = _case(gen, config, dev, pair)
        row = {"name": pair.name, "psnr": psnr(pred, target), "ssim": ssim(pred, target), "mae": mae(pred, target)}
        if mask_files:
            bone = read_gray(mask_files[pair.name]) > 0
            t = bone_threshold if bone_threshold is not None else _otsu(target)
            row.update(dice=dice(pred > t, bone), dice_target=dice(target > t, bone), threshold=float(t))
        rows.append(row)

    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["psnr"], rows[i]["name"]))
    picks = {"best": order[0], "median": order[len(order) // 2], "worst": order[-1]}
    keys = list(METRICS) + (["dice", "dice_target"] if mask_files else [])
    summary = {
        "n_pairs": len(rows), "pairs": str(Path(pairs_dir).resolve()), "checkpoint": str(Path(checkpoint).resolve()),
        "image_size": config["image_size"], "normalization": norm,
        "metrics": {k: _stats([r[k] for r in rows]) for k in keys},
        **{f"{label}_case": rows[i]["name"] for label, i in picks.items()},
    }
    if mask_files:
        summary["bone_threshold"] = bone_threshold if bone_threshold is not None else "otsu of each target"

    progress.update(0.9, "writing the report")
    with atomic_dir(out) as tmp:
        tmp = Path(tmp)
        columns = ["name"] + keys + (["threshold"] if mask_files else [])
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r[k] for k in columns})
        (tmp / "metrics.csv").write_text(buffer.getvalue())
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for label, i in picks.items():
            pair = pairs[i]
            x, pred, target = _case(gen, config, dev, pair)
            r = rows[i]
            same_scale = [np.repeat(np.clip(v, 0, 1)[..., None], 3, axis=-1) for v in (x, pred, target)]
            error = np.abs(pred - target)
            peak = max(float(error.max()), 1e-6)
            panels([*same_scale, _colour(error / peak)],
                   ["input X-ray", "prediction", "target DRR", f"|error|, MAE {r['mae']:.3f} (bright = {peak:.2f})"],
                   tmp / f"{label}.png",
                   suptitle=f"{label}: {pair.name}  PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.3f}")
    progress.log(f"{len(rows)} pairs: PSNR {summary['metrics']['psnr']['mean']:.2f} dB, "
                 f"SSIM {summary['metrics']['ssim']['mean']:.4f}, MAE {summary['metrics']['mae']['mean']:.4f}")
    progress.update(1.0, "done")
    return summary


def _case(gen, config, dev, pair):
    """(input, prediction, target) in [0, 1] at the pair's own size."""
    norm = config.get("normalization")
    xray = read_gray(pair.xray)
    pred = translate_image(gen, config, xray, dev)
    target = to_unit(normalize(read_gray(pair.drr), norm))
    return to_unit(normalize(xray, norm)), pred, target


def _colour(img01: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["magma"](np.clip(img01, 0, 1))[..., :3]


def _otsu(img: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(img)) if float(img.max()) > float(img.min()) else 0.5


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max())}


def _masks_for(pairs, masks) -> dict:
    root = Path(masks)
    if not root.is_dir():
        raise InputError("mask folder not found", root, "give a folder with one bone mask per pair name (NAME.png)")
    found = images_by_name(root)
    missing = [p.name for p in pairs if p.name not in found]
    if missing:
        raise InputError(f"{len(missing)} pair(s) have no mask: {few(missing)}", root,
                         "give a mask NAME.png for every pair NAME")
    for pair in pairs:
        h, w, _ = image_info(pair.drr)
        mh, mw, _ = image_info(found[pair.name])
        if (mh, mw) != (h, w):
            raise InputError(f"mask size {mh}x{mw} differs from the pair's {h}x{w}", found[pair.name],
                             "give masks at the DRR's size")
    return {p.name: found[p.name] for p in pairs}
