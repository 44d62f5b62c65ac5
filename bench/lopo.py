"""Leave-one-patient-out for bench/translation.py (`--lopo --ct-dir DIR`): does translation generalise to a patient
it never saw, and do the training options help? See translation.py's docstring and bench/README.md."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
VARIANTS = {  # name -> train() keyword arguments beside the default
    "default": {},
    "perceptual": {"perceptual_loss": 10.0},
    "attention": {"attention": True},
    "augment": {"augment": "cross-patient"},
}
MIN_PATIENTS = 3


def find_cts(folder: Path | None) -> tuple[list[Path], list[str]]:
    """(CT files or DICOM folders in `folder`, what was skipped and why)."""
    if folder is None:
        return [], ["no --ct-dir given"]
    if not folder.is_dir():
        return [], [f"--ct-dir {folder} does not exist"]
    found, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.name in ("previews",):
            continue
        if p.is_file() and any(p.name.lower().endswith(s) for s in CT_SUFFIXES):
            found.append(p)
        elif p.is_dir() and any(f.suffix.lower() == ".dcm" for f in p.iterdir()):
            found.append(p)
        elif p.is_file() and not p.name.lower().endswith((".md", ".txt", ".json", ".csv", ".png")):
            skipped.append(f"{p.name}: not a CT file")
    return found, skipped


def patient_name(path: Path) -> str:
    name = path.name
    for s in CT_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def resampled(path: Path, voxel: float) -> sitk.Image:
    from XrayToDRRLib.volumes import read_volume

    ct = read_volume(path)
    size = [max(1, int(round(n * s / voxel))) for n, s in zip(ct.GetSize(), ct.GetSpacing())]
    return sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(), [voxel] * 3,
                         ct.GetDirection(), -1024.0, sitk.sitkFloat32)


def copy_pairs(sources: dict[str, Path], target: Path) -> Path:
    """One paired-data folder from several patients' (names are unique: each carries its patient's prefix), with
    the patient column `pairs --patient-id-from` writes."""
    for sub in ("xray", "drr"):
        (target / sub).mkdir(parents=True)
    rows = ["name,patient,status"]
    for patient, src in sources.items():
        for f in sorted((src / "xray").iterdir()):
            shutil.copyfile(f, target / "xray" / f.name)
            shutil.copyfile(src / "drr" / f.name, target / "drr" / f.name)
            rows.append(f"{f.name[:-4]},{patient},kept")
    (target / "pairs.csv").write_text("\n".join(rows) + "\n")
    return target


def patient_pairs(ct_path: Path, patient: str, work: Path, args, device: str, first_seed: int) -> dict:
    """Train and test pairs of one CT: {"train": folder, "test": folder}."""
    from translation import draw_poses, registration_folders

    from XrayToDRRTranslationLib.pairs import build_pairs

    ct = resampled(ct_path, args.voxel)
    root = work / "patients" / patient
    root.mkdir(parents=True)
    local = root / "ct.nii.gz"
    sitk.WriteImage(ct, str(local))
    out = {}
    for split, n, stream, seed in (("train", args.train_poses, 0, first_seed), ("test", args.test_poses, 1,
                                                                                first_seed + 50000)):
        poses = draw_poses(ct, n, stream, args.seed, args.image_size, args.fov)
        regs = registration_folders(ct, local, poses, root / f"reg_{split}", seed, device)
        # names carry the patient, so the pairs of several CTs can share one folder
        for r in regs:
            r.rename(r.with_name(f"{patient}_{r.name}"))
        regs = [r.with_name(f"{patient}_{r.name}") for r in regs]
        out[split] = build_pairs(regs, root / split / "pairs", device=device).output
    return out


def run_lopo(args) -> None:
    import platform

    import psutil
    import torch
    from translation import baselines

    from XrayToDRRLib.render import pick_device
    from XrayToDRRTranslationLib.evaluate import evaluate
    from XrayToDRRTranslationLib.train import train

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "default" not in variants:
        raise SystemExit(f"--variants: unknown {unknown} (known: {', '.join(VARIANTS)}); default must be one")
    cts, skipped = find_cts(args.ct_dir)
    for line in skipped:
        print(f"skipped: {line}")
    if len(cts) < MIN_PATIENTS:
        print(f"skipped: leave-one-patient-out needs CTs of at least {MIN_PATIENTS} patients, found {len(cts)}"
              + (f" in {args.ct_dir}" if args.ct_dir else ""))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="xraytodrr-bench-lopo-"))
    work.mkdir(parents=True, exist_ok=True)
    device = str(pick_device(args.device))
    try:
        t0 = time.monotonic()
        data = {}
        for k, path in enumerate(cts):
            patient = patient_name(path)
            try:
                data[patient] = patient_pairs(path, patient, work, args, device, 1000 * k)
            except Exception as e:  # an unreadable CT is reported and left out, the others go on
                print(f"skipped: {path.name}: {type(e).__name__}: {str(e)[:160]}")
        if len(data) < MIN_PATIENTS:
            print(f"skipped: only {len(data)} CT(s) gave pairs, leave-one-patient-out needs {MIN_PATIENTS}")
            return
        data_seconds = time.monotonic() - t0
        print(f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} CPU cores, device "
              f"{device}; torch {torch.__version__} with {args.threads} thread(s); Python {platform.python_version()}")
        print(f"data: {len(data)} CTs of different patients ({', '.join(data)}) at {args.voxel} mm, "
              f"{args.image_size} px detector ({args.fov:.0f} mm), {args.train_poses} training / {args.test_poses} "
              f"test poses per CT, simulated X-rays -> `pairs` DRRs; built in {data_seconds:.0f} s")
        print(f"training: {args.budget:.0f} s per variant and fold, ngf {args.ngf}, ndf {args.ndf}, batch "
              f"{args.batch_size}, seed {args.seed}; variants {', '.join(variants)}")
        print()
        rows = []
        for held in data:
            fold = work / "folds" / held
            train_dir = copy_pairs({p: data[p]["train"] for p in data if p != held}, fold / "train")
            base = baselines(train_dir, data[held]["test"])
            row = {"patient": held, "baselines": base, "variants": {}}
            for name in variants:
                result = train(train_dir, fold / f"run_{name}", epochs=100000, batch_size=args.batch_size,
                               image_size=args.image_size, ngf=args.ngf, ndf=args.ndf, val_fraction=0.05,
                               device=device, seed=args.seed, save_every=100000, time_limit=args.budget,
                               threads=args.threads, **VARIANTS[name])
                summary = evaluate(data[held]["test"], result.checkpoint, fold / f"eval_{name}", device=device)
                row["variants"][name] = {"psnr": summary["metrics"]["psnr"]["mean"],
                                         "ssim": summary["metrics"]["ssim"]["mean"],
                                         "steps": result.history[-1]["step"]}
            rows.append(row)
        report(rows, variants)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def report(rows: list[dict], variants: list[str]) -> None:
    head = "| held-out patient | x-ray itself | histogram matched | " + " | ".join(variants) + \
        " | default gain over better baseline |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    gains = []
    for r in rows:
        b = r["baselines"]
        best = max(v["psnr"] for v in b.values())
        v = r["variants"]
        gains.append(v["default"]["psnr"] - best)
        cells = [f"{v[n]['psnr']:.2f} / {v[n]['ssim']:.3f} ({v[n]['steps']} steps)" for n in variants]
        print(f"| {r['patient']} | {b['x-ray itself']['psnr']:.2f} / {b['x-ray itself']['ssim']:.3f} | "
              f"{b['x-ray, histogram matched']['psnr']:.2f} / {b['x-ray, histogram matched']['ssim']:.3f} | "
              + " | ".join(cells) + f" | {gains[-1]:+.2f} dB |")
    print("(PSNR dB / SSIM, means over the held-out patient's test pairs)")
    print()
    for name in variants[1:]:
        deltas = [r["variants"][name]["psnr"] - r["variants"]["default"]["psnr"] for r in rows]
        word = "gain" if np.mean(deltas) > 0 else "loss"
        print(f"{name} vs default: {word} of {np.mean(deltas):+.2f} dB PSNR on average "
              f"(per patient: {', '.join(f'{d:+.2f}' for d in deltas)})")
    met = all(g >= 6.0 for g in gains)
    print(f"default PSNR gain over the better baseline: {min(gains):+.2f} dB at worst over {len(rows)} held-out "
          f"patients (target >= +6 on every one: {'met' if met else 'NOT met'})")
