"""CLI verbs: register, evaluate, view3d, animate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from XrayToDRRLib.cli import DeviceOption, LabelsOption, ProgressOption, parse_labels, verb
from XrayToDRRLib.errors import InputError

from .batch import FINAL_RENDERERS, RegistrationOptions
from .similarity import SIMILARITIES

_D = RegistrationOptions(volume="")


def _itrs(text: str) -> list[int] | int:
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"--max-n-itrs must be integers, got '{text}'", None, "e.g. --max-n-itrs 200 or 300,200,100") \
            from None
    if not values:
        raise InputError("--max-n-itrs is empty", None, "e.g. --max-n-itrs 200")
    return values[0] if len(values) == 1 else values


@verb("register", "Registering")
def register(
    xray: Annotated[list[Path], typer.Argument(help="X-ray file (DICOM, PNG + --sdd/--pixel-spacing, NIfTI); several, "
                                                    "or folders of them: one result folder each + summary.csv")],
    volume: Annotated[Path, typer.Option("--volume", help="CT volume (NIfTI, NRRD or DICOM folder)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="result folder (for a folder of X-rays: the parent "
                                                                "of one folder per X-ray)")],
    model: Annotated[Optional[Path], typer.Option("--model", help="initialise: pose-regressor checkpoint")] = None,
    init_pose: Annotated[Optional[Path], typer.Option(
        "--init-pose", help="initialise: pose.json or an earlier registration's parameters.pt")] = None,
    init_view: Annotated[Optional[str], typer.Option(
        "--init-view", help="initialise: search about a view: ap | pa | lateral | right-lateral, or auto (all four)")
    ] = None,
    init_dicom: Annotated[bool, typer.Option(
        "--init-dicom", help="initialise: search about the DICOM's PositionerPrimary/SecondaryAngle")] = False,
    init_landmarks: Annotated[Optional[Path], typer.Option(
        "--init-landmarks", help='initialise: >= 4 2D/3D points, {"points": \\[{"pixel": \\[col, row], "ras": '
                                 '\\[x, y, z]}, ...]} (pixels of the file as stored, RAS mm) -> PnP with RANSAC')] = None,
    mask: Annotated[Optional[Path], typer.Option(help="label map on the CT grid: register only --labels")] = None,
    labels: LabelsOption = None,
    sdd: Annotated[Optional[float], typer.Option(help="source-to-detector distance in mm (overrides the file)")] = None,
    pixel_spacing: Annotated[Optional[str], typer.Option(
        "--pixel-spacing", help="detector pixel spacing in mm: one number or ROW,COL (overrides the file)")] = None,
    crop: Annotated[int, typer.Option(help="pixels removed from every border of the X-ray")] = _D.crop,
    subtract_background: Annotated[bool, typer.Option(
        "--subtract-background", help="subtract the most common intensity (background) and clip below it")] = False,
    linearize: Annotated[bool, typer.Option(
        "--linearize", help="log-transform an intensity-like X-ray into attenuation-like values")] = False,
    reducefn: Annotated[str, typer.Option(help="multi-frame DICOM -> one image: max | mean | first")] = _D.reducefn,
    collimator: Annotated[str, typer.Option(
        help="auto: leave flat border regions (collimation) out of the similarity | none")] = _D.collimator,
    warp: Annotated[Optional[Path], typer.Option(
        help="rigid SimpleITK .tfm mapping the initial pose's frame onto the volume's (e.g. from coregister)")] = None,
    invert: Annotated[bool, typer.Option("--invert", help="apply the inverse of --warp")] = False,
    scales: Annotated[str, typer.Option(
        help="detector downsampling per stage, coarse to fine (e.g. 8,4,2); auto: about 32, 64, 128, 256 px")] = _D.scales,
    similarity: Annotated[str, typer.Option(help=" | ".join(SIMILARITIES))] = _D.similarity,
    renderer: Annotated[str, typer.Option(help=f"final HQ DRR: {' | '.join(FINAL_RENDERERS)}")] = _D.renderer,
    lr_rot: Annotated[float, typer.Option("--lr-rot", help="rotation step (rad) at the first stage")] = _D.lr_rot,
    lr_xyz: Annotated[float, typer.Option("--lr-xyz", help="translation step (mm) at the first stage")] = _D.lr_xyz,
    patience: Annotated[int, typer.Option(help="iterations without improvement before a plateau")] = _D.patience,
    threshold: Annotated[float, typer.Option(help="relative similarity gain that counts as improvement")] = _D.threshold,
    max_n_itrs: Annotated[str, typer.Option("--max-n-itrs", help="iterations per stage (one, or one per stage)")] = str(
        _D.max_n_itrs),
    max_n_plateaus: Annotated[int, typer.Option(
        "--max-n-plateaus", help="a stage ends at this plateau (lr / 10 at each earlier one)")] = _D.max_n_plateaus,
    finest_max_itrs: Annotated[int, typer.Option(
        "--finest-max-itrs", help="at most this many iterations in the finest of several stages (the costliest)")
    ] = _D.finest_max_itrs,
    depth_gain: Annotated[Optional[float], typer.Option(
        "--depth-gain", help="steps along the beam are this many times --lr-xyz (default: SDD / the detector's rms "
                             "radius, so depth moves the image as fast as the in-plane position)")] = _D.depth_gain,
    mask_cut_rays: Annotated[bool, typer.Option(
        "--mask-cut-rays/--keep-cut-rays", help="the X-ray may see the patient past the CT's scan range: leave "
                                                "those pixels out of the similarity, and search, rank candidates "
                                                "and assess with the body continued past the CT's ends "
                                                "(--keep-cut-rays: the CT is the whole patient)")
    ] = _D.mask_cut_rays,
    search: Annotated[bool, typer.Option(
        "--search/--no-search", help="global pose search for --init-view/--init-dicom (off: the nominal pose as is)")
    ] = _D.search,
    search_top_k: Annotated[int, typer.Option(
        "--search-top-k", help="distinct candidates of the search refined (and listed in candidates.json)")] = _D.search_top_k,
    search_angle: Annotated[float, typer.Option(
        "--search-angle", help="view angles searched: +- this many degrees about the nominal view")] = _D.search_angle,
    search_distance: Annotated[str, typer.Option(
        "--search-distance", help="source-to-patient distances searched, MIN,MAX mm")] = _D.search_distance,
    search_shift: Annotated[float, typer.Option(
        "--search-shift", help="in-plane offsets of the patient searched, +- mm")] = _D.search_shift,
    init_only: Annotated[bool, typer.Option(
        "--init-only", help="write the initial pose's results (after the search, if any), no optimisation")] = False,
    save_images: Annotated[bool, typer.Option("--save-images", help="also write registration.png and .gif")] = False,
    pattern: Annotated[Optional[str], typer.Option(help="glob for the X-rays of a folder (default: image types)")] = None,
    seed: Annotated[int, typer.Option(help="random seed (landmark RANSAC)")] = _D.seed,
    translate: Annotated[Optional[Path], typer.Option(
        "--translate", help="pix2pix checkpoint (xraytodrr translate train): translate the X-ray into a DRR-like "
                            "image before the similarity; gt.png and the metrics keep the original")] = None,
    multiview: Annotated[Optional[str], typer.Option(
        "--multiview", help="the X-rays are views of one patient, one result folder: rigid-rig (one pose, the views' "
                            "relative C-arm geometry known: --rig or DICOM angles) | independent (a pose per view, "
                            "their consistency reported)")] = None,
    rig: Annotated[Optional[Path], typer.Option(
        "--rig", help='--multiview: rig.json, {"views": \[{"file": ..., "first_camera_from_camera": 4x4}, ...]} '
                      "(default: the DICOM positioner angles and distances)")] = None,
    frames: Annotated[Optional[str], typer.Option(
        "--frames", help="--multiview: the frames of a multi-frame DICOM (a rotational run) as views, each with its "
                         "own C-arm angles: auto (up to 4 evenly spaced; the default for one file) | all | 1,5,9")
    ] = None,
    device: Annotated[str, typer.Option(
        help="auto (every CUDA GPU, else cpu) | cpu | cuda | cuda:N, or a comma-separated list (cuda:0,cuda:1; "
             "cpu,cpu): a folder runs one worker process per device, a single X-ray uses the first")] = _D.device,
    dask: Annotated[Optional[str], typer.Option(
        "--dask", help="a Dask scheduler's address (tcp://HOST:8786): the X-rays of a folder go to its workers, "
                       "each keeping the CT between X-rays; the output folder must be shared with them")] = None,
    progress: ProgressOption = "bar",
):
    """Register an X-ray (or a folder of X-rays) to a CT: find the C-arm pose; write pose.json, parameters.pt, the
    X-ray as seen, DRRs, trajectory.csv and metrics.json. With --multiview: several views of one patient jointly
    (-o OUT holds metrics.json, multiview.png and one result folder per view)."""
    from .batch import register as run
    from .initialize import choose_initializer

    init = choose_initializer(model, init_pose, init_view, init_dicom, init_landmarks)
    options = RegistrationOptions(
        volume=str(volume), mask=str(mask) if mask else None, labels=parse_labels(labels),
        warp=str(warp) if warp else None, invert=invert, sdd=sdd, pixel_spacing=pixel_spacing, reducefn=reducefn,
        crop=crop, subtract_background=subtract_background, linearize=linearize, collimator=collimator,
        similarity=similarity, scales=scales, lr_rot=lr_rot, lr_xyz=lr_xyz, patience=patience, threshold=threshold,
        max_n_itrs=_itrs(max_n_itrs), max_n_plateaus=max_n_plateaus, finest_max_itrs=finest_max_itrs,
        depth_gain=depth_gain, mask_cut_rays=mask_cut_rays, renderer=renderer, init_only=init_only,
        save_images=save_images, pattern=pattern, device=device, seed=seed, search=search,
        search_top_k=search_top_k, search_angle=search_angle, search_distance=search_distance,
        search_shift=search_shift, translate=str(translate) if translate else _D.translate)
    if multiview is None:
        if rig is not None:
            raise InputError("--rig needs --multiview", rig, "add --multiview rigid-rig or --multiview independent")
        if frames is not None:
            raise InputError("--frames needs --multiview (without it a multi-frame DICOM is one image, by "
                             "--reducefn)", None, "add --multiview rigid-rig or --multiview independent")
        return run(xray, options, init, output, progress, dask=dask)
    if dask:
        raise InputError("--dask spreads separate X-rays over a cluster; --multiview registers views of one patient "
                         "together in one process", None, "drop --dask for a multi-view registration")
    from .multiview import register_views

    return register_views(xray, options, init, output, multiview, rig, progress, frames=frames)


@verb("evaluate", "Evaluating")
def evaluate(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="a register result folder (or a batch's folder)")],
    title_suffix: Annotated[str, typer.Option("--title-suffix", help="appended to the figure's title")] = "",
    gt_name: Annotated[str, typer.Option("--gt-name", help="the X-ray image in the folder")] = "gt.png",
    output_name: Annotated[str, typer.Option("--output-name", help="figure file name")] = "evaluation.png",
    gt_pose: Annotated[Optional[Path], typer.Option(
        "--gt-pose", help="true pose (default: X.pose.json beside a simulated X-ray X)")] = None,
    volume: Annotated[Optional[Path], typer.Option(help="CT for mTRE (default: the one registered)")] = None,
    progress: ProgressOption = "bar",
):
    """Figure (X-ray, initial/final/HQ DRRs, difference maps) and metrics (MSE, SSIM, NMI, NCC; mTRE, mRPE,
    rotation and translation errors when the true pose is known), merged into metrics.json."""
    from .evaluate import evaluate as run

    if "/" in output_name or not output_name.lower().endswith(".png"):
        raise InputError(f"--output-name must be a .png file name, got '{output_name}'", None, "e.g. evaluation.png")
    return run(data_dir, title_suffix, gt_name, output_name, gt_pose, volume, progress)


@verb("view3d", "Drawing the 3D scene")
def view3d(
    volume: Annotated[Path, typer.Option("--volume", help="CT volume")],
    pose: Annotated[Path, typer.Option("--pose", help="pose.json or registration parameters.pt")],
    output: Annotated[Path, typer.Option("-o", "--output", help="folder for view3d.png and view3d.html")],
    image: Annotated[Optional[Path], typer.Option(help="texture the detector with this image (default: the DRR)")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="label map: DRR of --labels only")] = None,
    labels: LabelsOption = None,
    device: DeviceOption = "auto",
    progress: ProgressOption = "bar",
):
    """The C-arm scene in 3D: bone surface, X-ray source, detector plane with the DRR, ray cone (PNG + HTML)."""
    from .visualize import view3d_file

    progress.update(0.1, "rendering")
    out = view3d_file(volume, pose, output, image, mask, parse_labels(labels), device)
    progress.update(1.0, "done")
    return out


@verb("animate", "Animating")
def animate(
    volume: Annotated[Path, typer.Option("--volume", help="CT volume")],
    parameters: Annotated[Path, typer.Option("--parameters", help="parameters.pt of a registration")],
    output: Annotated[Path, typer.Option("-o", "--output", help="animation (.gif)")],
    frames: Annotated[int, typer.Option(help="at most this many frames")] = 40,
    mask: Annotated[Optional[Path], typer.Option(help="label map: DRR of --labels only")] = None,
    labels: LabelsOption = None,
    device: DeviceOption = "auto",
    progress: ProgressOption = "bar",
):
    """GIF of the registration: the DRR over the X-ray at (subsampled) iterations, with the loss curve."""
    from .visualize import animate_file

    if frames < 1:
        raise InputError(f"--frames must be at least 1, got {frames}")
    progress.update(0.1, "rendering")
    out = animate_file(volume, parameters, output, mask, parse_labels(labels), device, frames)
    progress.update(1.0, "done")
    return out
