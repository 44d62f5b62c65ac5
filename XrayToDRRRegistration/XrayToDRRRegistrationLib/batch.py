"""`xraytodrr register`: one X-ray or a folder of X-rays against one CT, each into its own result folder.

Everything that can be checked before any work (volume, mask and labels, warp, initialiser, options, and for a
single X-ray the X-ray itself and its initial pose) is checked first, so bad input writes nothing. In a folder
run an X-ray that fails is reported in summary.csv (with its error) and the others go on. A folder spreads its
X-rays over several devices (`--device cuda:0,cuda:1`, `cpu,cpu`, or auto with several GPUs): parallel.py.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import threading
import time
from pathlib import Path

import numpy as np
import torch

from XrayToDRRLib.atomic import atomic_dir
from XrayToDRRLib.errors import InputError, require_file
from XrayToDRRLib.images import save_image, suffix_of
from XrayToDRRLib.progress import Progress
from XrayToDRRLib.render import RENDERERS, DRRRenderer, label_mask, pick_device
from XrayToDRRLib.volumes import center_ras, read_labels, read_volume

from . import results as R
from .confidence import assess
from .initialize import SEARCHED, Initializer, initial_pose, nominal_poses, read_warp, with_camera
from .preprocess import COLLIMATOR_MODES, PreparedXray, prepare_xray
from .register import OptimizerSettings, Trajectory, check_settings, optimize, resolve_itrs, resolve_scales
from .search import SearchSettings, refine_candidates, search_pose

FINAL_RENDERERS = ("auto", "fast") + RENDERERS
FAST_FINAL_MIN_NCC = 0.999
XRAY_SUFFIXES = (".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy", ".nii",
                 ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclasses.dataclass
class RegistrationOptions:
    """Every option of `xraytodrr register` (stored in parameters.pt as `settings`)."""

    volume: str
    mask: str | None = None
    labels: list[int] | None = None
    warp: str | None = None
    invert: bool = False
    sdd: float | None = None
    pixel_spacing: str | None = None
    reducefn: str = "max"
    crop: int = 0
    subtract_background: bool = False
    linearize: bool = False
    collimator: str = "auto"
    # The optimiser's options and their defaults are OptimizerSettings' (one definition).
    similarity: str = OptimizerSettings.similarity
    scales: str = OptimizerSettings.scales
    lr_rot: float = OptimizerSettings.lr_rot
    lr_xyz: float = OptimizerSettings.lr_xyz
    patience: int = OptimizerSettings.patience
    threshold: float = OptimizerSettings.threshold
    max_n_itrs: list[int] | int = OptimizerSettings.max_n_itrs
    max_n_plateaus: int = OptimizerSettings.max_n_plateaus
    finest_max_itrs: int = OptimizerSettings.finest_max_itrs
    depth_gain: float | None = OptimizerSettings.depth_gain
    mask_cut_rays: bool = OptimizerSettings.mask_cut_rays
    renderer: str = "auto"
    init_only: bool = False
    save_images: bool = False
    pattern: str | None = None
    device: str = "auto"
    seed: int = 0
    # The global pose search (search.py) run by --init-view and --init-dicom.
    search: bool = True
    search_top_k: int = SearchSettings.top_k
    search_angle: float = SearchSettings.angle_range_deg
    search_distance: str = ",".join(f"{v:g}" for v in SearchSettings.distance_mm)
    search_shift: float = SearchSettings.shift_mm
    # --translate: a pix2pix checkpoint translating the X-ray before the similarity (translate_xray.py)
    translate: str | None = None

    def search_settings(self) -> SearchSettings:
        try:
            lo, hi = (float(v) for v in str(self.search_distance).split(","))
        except ValueError:
            raise InputError(f"--search-distance must be two distances in mm, got '{self.search_distance}'", None,
                             "e.g. --search-distance 500,1100") from None
        settings = SearchSettings(angle_range_deg=float(self.search_angle), distance_mm=(lo, hi),
                                  shift_mm=float(self.search_shift), top_k=int(self.search_top_k),
                                  continue_cut_faces=bool(self.mask_cut_rays))
        settings.check()
        return settings

    def optimizer(self) -> OptimizerSettings:
        names = [f.name for f in dataclasses.fields(OptimizerSettings)]
        return OptimizerSettings(**{name: getattr(self, name) for name in names if hasattr(self, name)})

    def check(self) -> None:
        if self.renderer not in FINAL_RENDERERS:
            raise InputError(f"unknown renderer '{self.renderer}'", None, f"use one of {', '.join(FINAL_RENDERERS)}")
        if self.collimator not in COLLIMATOR_MODES:
            raise InputError(f"unknown --collimator '{self.collimator}'", None,
                             f"use one of {', '.join(COLLIMATOR_MODES)}")
        if self.labels and not self.mask:
            raise InputError("--labels needs --mask (the label map they refer to)", None, "pass --mask SEG")
        check_settings(self.optimizer())
        self.search_settings()
        resolve_scales(self.scales, _Square())  # syntax only
        parse_devices(self.device)


def parse_devices(text: str) -> list[torch.device]:
    """--device: auto (every CUDA GPU, else the CPU), cpu, cuda, cuda:N, or a comma-separated list of them. A folder
    runs one worker process per device (cpu,cpu: two CPU workers); a single X-ray uses the first."""
    names = [name.strip() for name in str(text).split(",")]
    fix = "use --device auto, cpu, cuda, cuda:N or a comma-separated list such as cuda:0,cuda:1"
    if "auto" in names:
        if names != ["auto"]:
            raise InputError(f"--device {text}: auto cannot be listed with other devices", None, fix)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device("cuda", i) for i in range(count)] or [torch.device("cpu")]
    devices = []
    for name in names:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            device = None
        if device is None or device.type not in ("cpu", "cuda", "mps"):
            raise InputError(f"unknown device '{name}' in --device {text}", None, fix)
        if device.type == "cuda":
            pick_device(name)  # no CUDA at all: the usual error
            count = torch.cuda.device_count()
            if device.index is not None and device.index >= count:
                raise InputError(f"--device {name}: this machine has {count} CUDA GPU{'s' * (count != 1)} "
                                 f"(cuda:0 to cuda:{count - 1})", None,
                                 f"use --device {','.join(f'cuda:{i}' for i in range(count))} or auto")
        devices.append(device)
    return devices


class _Square:
    height = width = 256


class Session:
    """One CT (with its mask, warp and renderers) registered to any number of X-rays."""

    def __init__(self, options: RegistrationOptions, init: Initializer):
        options.check()
        if init.kind == "view" and init.value == "auto" and not options.search:
            raise InputError("--init-view auto needs the pose search", None,
                             "drop --no-search, or name the view (--init-view ap | pa | lateral | right-lateral)")
        self.options, self.init = options, init
        self.device = parse_devices(options.device)[0]
        self.ct = read_volume(options.volume)
        self.keep = None
        if options.mask:
            self.keep = label_mask(read_labels(options.mask, reference=self.ct), options.labels, options.mask)
        self.warp = read_warp(options.warp, options.invert) if options.warp else None
        self.center = center_ras(self.ct)
        self._fast = None
        self._hq: dict[str, DRRRenderer] = {}
        self._agreement: dict[tuple, float] = {}  # _fast_agreement per detector and view direction
        self._agreement_lock = threading.Lock()
        self._prefetch: threading.Thread | None = None
        self.translator = None
        if options.translate:
            from .translate_xray import XrayTranslator

            self.translator = XrayTranslator(options.translate, self.device)

    @property
    def fast(self):
        if self._fast is None:
            from XrayToDRRLib.fast_render import FastRenderer

            self._fast = FastRenderer(self.ct, mask=self.keep, device=self.device)
        return self._fast

    def render_final(self, pose) -> tuple[np.ndarray, dict]:
        """The final DRR by --renderer, and what made it. `auto`: the fast renderer's full mode where it matches
        DiffDRR's Siddon to NCC >= 0.999 (checked on a cross of detector rows and columns through the centre, once
        per detector and view direction), else Siddon: a coarse CT's blocky voxels or its cut edges are where the
        two differ."""
        name, record = self.options.renderer, {}
        if name == "auto":
            if self._prefetch is not None:
                self._prefetch.join()
                self._prefetch = None
            agreement = self._fast_agreement(pose)
            name = "fast" if agreement >= FAST_FINAL_MIN_NCC else "siddon"
            record = {"chosen_by": "auto", "fast_vs_siddon_ncc": round(agreement, 5)}
        return self._render(name, pose), {"renderer": name, **record}

    def _render(self, name: str, pose, band_pixels: int = 8192) -> np.ndarray:
        """DiffDRR renders in bands of rows (each a window of the same detector) so its memory stays bounded
        whatever the X-ray's size."""
        if name == "fast":
            return self.fast.render(pose, "full")
        if self._hq.get(name) is None:
            self._hq[name] = DRRRenderer(self.ct, mask=self.keep, renderer=name, device=self.device)
        rows = max(1, band_pixels // pose.width)
        return np.concatenate([self._hq[name].render(pose.window((r0, min(pose.height, r0 + rows)), (0, pose.width)))
                               for r0 in range(0, pose.height, rows)], axis=0)

    def prefetch_final_check(self, pose) -> None:
        """Start `--renderer auto`'s check (the Siddon renderer's set-up and its cross of lines, about 2 s for a
        fine CT) in a thread while the optimisation runs: its coarse stages use one CPU thread (register.cpu_threads),
        so the other core is free. Keyed by detector and view direction, the start pose's check almost always serves
        the final pose; when it does not, render_final checks again."""
        busy = self._prefetch is not None and self._prefetch.is_alive()
        if self.options.renderer != "auto" or self._agreement_key(pose) in self._agreement or busy:
            return

        def run():
            try:
                self._fast_agreement(pose)
            except Exception:  # noqa: BLE001 - render_final redoes the check and reports any error itself
                pass

        self._prefetch = threading.Thread(target=run, name="final-renderer-check", daemon=True)
        self._prefetch.start()

    @staticmethod
    def _agreement_key(pose) -> tuple:
        axis = int(np.argmax(np.abs(pose.principal_ray)))
        return (pose.height, pose.width, pose.delx, pose.dely, pose.sdd, pose.x0, pose.y0, axis,
                bool(pose.principal_ray[axis] > 0))

    def _fast_agreement(self, pose, lines: int = 8) -> float:
        key = self._agreement_key(pose)
        with self._agreement_lock:  # a prefetch thread and render_final never render the cross twice at once
            if key in self._agreement:
                return self._agreement[key]
            h, w = pose.height, pose.width
            r0, c0 = max(0, h // 2 - lines // 2), max(0, w // 2 - lines // 2)
            cross = [pose.window((r0, min(h, r0 + lines)), (0, w)), pose.window((0, h), (c0, min(w, c0 + lines)))]
            fast = np.concatenate([self._render("fast", p).ravel() for p in cross])
            siddon = np.concatenate([self._render("siddon", p).ravel() for p in cross])
            self._agreement[key] = _ncc(fast, siddon)
            return self._agreement[key]

    # --- one X-ray ------------------------------------------------------------------------------------------
    def find_pose(self, prepared: PreparedXray, start, progress: Progress | None = None, log=None):
        """The global search about `start` (or about every view of `--init-view auto`), its best candidates
        refined briefly: (candidates best first, summary for metrics.json)."""
        progress = progress or Progress()
        log = log or (lambda message: None)
        nominal = nominal_poses(self.init, start, self.ct)
        found = search_pose(self.fast, prepared, nominal, self.center, self.options.search_settings(),
                            progress.sub(0.0, 0.4))
        started = time.perf_counter()
        candidates = refine_candidates(self.fast, prepared, found.candidates, self.center, self.options.optimizer(),
                                       progress=progress.sub(0.4, 1.0))
        found.candidates = candidates  # best refined first: what candidates.json and metrics.json list
        summary = {**found.summary(), "refine_seconds": round(time.perf_counter() - started, 3),
                   "views": list(nominal)}
        log(f"pose search over {', '.join(nominal)}: {found.hypotheses} hypotheses from {found.renders} DRRs in "
            f"{found.seconds:.1f} s, {len(candidates)} candidates refined in {summary['refine_seconds']:.1f} s")
        for n, c in enumerate(candidates):
            log(f"  candidate {n + 1}: {c.view} tilt {c.tilt_deg[0]:+.0f}/{c.tilt_deg[1]:+.0f} deg, spin "
                f"{c.spin_deg:+.0f} deg, source {c.distance_mm:.0f} mm, search {c.score:.3f}, refined "
                f"{c.refined_score:.4f}")
        return candidates, summary

    def read(self, xray_path, frame: int | None = None) -> PreparedXray:
        """Read and preprocess the X-ray, or its `frame` (0-based) (the options' checks included)."""
        o = self.options
        prepared = prepare_xray(xray_path, o.sdd, o.pixel_spacing, o.reducefn, o.crop, o.subtract_background,
                                o.linearize, o.collimator, frame)
        resolve_itrs(o.max_n_itrs, len(resolve_scales(o.scales, prepared.detector)))
        return prepared

    def prepare(self, xray_path, frame: int | None = None) -> tuple[PreparedXray, object, dict]:
        """Read and preprocess the X-ray (or its `frame`) and find its initial pose (all the checks, no heavy
        work)."""
        o = self.options
        started = time.perf_counter()
        prepared = self.read(xray_path, frame)
        logs: list[str] = []
        init, info = initial_pose(self.init, prepared, self.ct, self.device, self.warp, logs.append, o.seed)
        info["log"] = logs
        if self.translator is not None:  # after the initialisers, before anything compares it with DRRs
            prepared, seconds = self.translator(prepared)
            info["translate"] = self.translator.record(seconds)
            logs.append(f"X-ray translated by {self.translator.checkpoint.name} in {seconds:.2f} s")
        info["prepare_seconds"] = round(time.perf_counter() - started, 3)
        return prepared, init, info

    def register(self, xray_path, out_dir, progress: Progress | None = None, prepared=None) -> dict:
        """Register one X-ray and write its result folder `out_dir` (atomically). Returns its summary row."""
        progress = progress or Progress()
        started = time.perf_counter()
        o = self.options
        if prepared is None:
            prepared = self.prepare(xray_path)
        prep, init, info = prepared
        clock = StepClock({"prepare": info.pop("prepare_seconds", 0.0)})
        lines, log = self.start_log(xray_path, prep, info, progress)
        candidates = None
        if o.search and self.init.kind in SEARCHED:
            progress.update(0.02, "searching the pose")
            candidates, info["search"] = self.find_pose(prep, init, progress.sub(0.02, 0.3), log)
            init = candidates[0].refined_pose
            clock("search")
        if o.init_only:
            traj = Trajectory(init=init.world_from_camera.copy(), final=init.world_from_camera.copy(),
                              stopped="init_only", message="--init-only: no optimisation")
            log(traj.message)
        else:
            progress.update(0.02 if candidates is None else 0.3, "preparing the volume")  # never backwards
            fast = self.fast  # the pyramid first: the check's thread would otherwise build a second one
            self.prefetch_final_check(with_camera(prep.detector, init.world_from_camera))
            traj = optimize(fast, prep, init, self.center, o.optimizer(), progress.sub(0.3, 0.88), log)
        clock("optimisation")
        metrics = self.write_result(xray_path, out_dir, prep, init, traj, info, candidates, lines, log, started,
                                    progress, clock=clock)
        confidence = metrics["confidence"]
        progress.update(1.0, "done")
        return {"xray": str(xray_path), "folder": str(out_dir), "status": "ok", "error": "",
                **{k: _fmt(metrics[k]) for k in ("ncc", "ncc_init", "loss", "iterations", "seconds", "stopped")},
                "confidence": _fmt(confidence["confidence"]), "warning": confidence["warning"]}

    def start_log(self, xray_path, prep: PreparedXray, info: dict, progress: Progress):
        """The log's first lines (the X-ray, its initialiser, collimation) and a `log` that adds to them."""
        lines = [f"X-ray {xray_path}: {prep.detector.height}x{prep.detector.width} px, "
                 f"{prep.detector.delx:.4g} x {prep.detector.dely:.4g} mm, SDD {prep.detector.sdd:g} mm",
                 f"initial pose from {info['initializer']}"] + info.pop("log", [])
        if prep.mask is not None:
            lines.append(f"collimation: {100 * (1 - prep.mask.mean()):.1f} % of the X-ray excluded from the "
                         "similarity")

        def log(message):
            lines.append(message)
            progress.log(message)

        for line in lines[:]:
            progress.log(line)
        return lines, log

    def write_result(self, xray_path, out_dir, prep: PreparedXray, init, traj: Trajectory, info: dict, candidates,
                     lines: list[str], log, started: float, progress: Progress, extra: dict | None = None,
                     clock: "StepClock | None" = None) -> dict:
        """Assess the optimised pose, render the final DRRs and write the result folder `out_dir` (atomically);
        `extra` is recorded in parameters.pt's settings. Returns metrics.json's content."""
        o = self.options
        clock = clock or StepClock()
        scales = resolve_scales(o.scales, prep.detector)
        final = with_camera(prep.detector, traj.final)
        progress.update(0.88, "assessing the result")
        beyond = traj.stage_info[-1].get("cut_rays_left_out", 0.0) if traj.stage_info else 0.0
        confidence = assess(self.fast, prep, final, self.center, o.similarity, candidates, beyond, o.mask_cut_rays)
        clock("confidence")
        progress.update(0.9, "rendering the final DRRs")
        init_img = self.fast.render(init, "preview")
        final_img = self.fast.render(final, "preview")
        hq, final_renderer = self.render_final(final)
        clock("final_drr")
        metrics = {
            "ncc": _ncc(prep.shown, hq), "ncc_init": _ncc(prep.shown, init_img), "ncc_fast": _ncc(prep.shown, final_img),
            "loss": traj.final_loss, "iterations": traj.iterations, "seconds": time.perf_counter() - started,
            "optimisation_seconds": traj.seconds, "stopped": traj.stopped, "message": traj.message,
            "similarity": o.similarity, "scales": scales, "renderer": final_renderer["renderer"],
            "final_drr": final_renderer, "timings": clock.timings, "stage_seconds": stage_seconds(traj),
            "backend": self.fast.backend,
            "stages": R.plain(traj.stage_info), "initializer": {k: v for k, v in info.items() if k != "inlier_mask"},
            "confidence": confidence,
        }
        if "translate" in info:
            metrics["translate"] = {**metrics["initializer"].pop("translate"), "ncc_translated": _ncc(prep.image, hq)}
        if traj.stopped == "nan":
            log("WARNING: " + traj.message)
        if confidence["warning"]:
            log("WARNING: " + confidence["warning"])
        log(f"done: NCC {metrics['ncc_init']:.4f} -> {metrics['ncc']:.4f}, {traj.iterations} iterations, "
            f"{metrics['seconds']:.1f} s, stopped: {traj.stopped}, confidence {confidence['confidence']:.2f}")
        settings = dataclasses.asdict(o)
        settings.update({"xray": _absolute(xray_path), "volume": _absolute(o.volume), "mask": _absolute(o.mask),
                         "warp": _absolute(o.warp),
                         "labels": list(o.labels) if o.labels else None, "initializer": self.init.kind,
                         "init_value": self.init.value, "scales_resolved": scales, **(extra or {})})
        settings["translate"] = _absolute(o.translate)
        params = R.parameters_dict(init, final, traj, scales, settings, self.center)
        out_dir = Path(out_dir)
        with atomic_dir(out_dir) as tmp:
            final.save(tmp / R.POSE)
            R.save_parameters(params, tmp / R.PARAMETERS)
            spacing = (prep.detector.dely, prep.detector.delx)
            save_image(prep.shown, tmp / R.GT, spacing)
            save_image(init_img, tmp / R.INIT_IMAGE, spacing)
            save_image(final_img, tmp / R.FINAL_IMAGE, spacing)
            save_image(hq, tmp / R.HQ_DRR, spacing)
            if prep.mask is not None:
                save_image(prep.mask.astype(np.float32), tmp / R.FIELD, spacing)
            R.write_trajectory_csv(traj, scales, tmp / R.TRAJECTORY)
            if candidates:
                R.write_json(tmp / R.CANDIDATES, {"candidates": info["search"]["candidates"]})
            if o.save_images:
                from . import visualize

                progress.update(0.95, "figure and animation")
                visualize.evaluation_figure(tmp, tmp / R.FIGURE)
                visualize.animate(self.fast, params, prep.shown, tmp / R.ANIMATION)
            (tmp / R.LOG).write_text("\n".join(lines) + "\n")
            clock("write")
            R.write_json(tmp / R.METRICS, R.plain(metrics))  # last, so its timings hold the writing's own
        return metrics


class StepClock:
    """Seconds per step of one registration (metrics.json `timings`): each call charges the time since the last."""

    def __init__(self, first: dict | None = None):
        self.timings = dict(first or {})
        self._lap = time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        self.timings[step] = round(self.timings.get(step, 0.0) + now - self._lap, 3)
        self._lap = now


def stage_seconds(traj: Trajectory) -> list[float]:
    """Seconds spent in each optimisation stage (from the trajectory's clock)."""
    ends = {}
    for stage, t in zip(traj.stages, traj.times):
        ends[stage] = t
    out, before = [], 0.0
    for stage in sorted(ends):
        out.append(round(ends[stage] - before, 3))
        before = ends[stage]
    return out


def _ncc(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / den) if den > 0 else 0.0


def _absolute(path) -> str | None:
    """Paths recorded in parameters.pt are absolute, so evaluate/animate find them from anywhere."""
    return None if path is None else str(Path(path).absolute())


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


# --- inputs and outputs ----------------------------------------------------------------------------------------
def find_xrays(folder: Path, pattern: str | None) -> list[Path]:
    """X-ray files in `folder` (not recursive) matching `pattern` (default: every known image type, not the
    `*.pose.json` truths written beside simulated X-rays)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if pattern:
        return [p for p in files if fnmatch.fnmatch(p.name, pattern)]
    return [p for p in files if suffix_of(p) in XRAY_SUFFIXES]


def result_names(files: list[Path]) -> list[str]:
    """A folder name per X-ray: the file name without its image suffix (the full name where two would clash)."""
    stems = [p.name[: len(p.name) - len(suffix_of(p))] if suffix_of(p) else p.name for p in files]
    return [p.name if stems.count(s) > 1 else s for p, s in zip(files, stems)]


def register_one(session: Session, path: Path, out_dir: Path, progress: Progress) -> dict:
    """One X-ray of a folder: its summary row, "failed" with the error instead of raising it."""
    try:
        _check_output(out_dir, many=False)  # never replace a folder that is not an earlier result
        return session.register(path, out_dir, progress)
    except (InputError, RuntimeError, ValueError, OSError) as e:
        return failed_row(path, str(e))


def failed_row(path: Path, error: str) -> dict:
    return {"xray": str(path), "folder": "", "status": "failed", "error": error}


def _check_output(output: Path, many: bool) -> None:
    if output.exists() and not output.is_dir():
        raise InputError("output exists and is a file", output, "give a folder path for -o")
    if not many and output.exists() and any(output.iterdir()) and not (output / R.PARAMETERS).exists():
        raise InputError("output folder is not empty and is not a registration result (it would be replaced)",
                         output, "give a new folder, or an earlier registration's folder to replace")


def register(xray: str | Path | list[str | Path], options: RegistrationOptions, init: Initializer,
             output: str | Path, progress: Progress | None = None, dask: str | None = None) -> list[Path]:
    """Register one X-ray (into `output`), or several: a list of X-ray files and folders of them, every X-ray of
    each folder (into `output`/<name>/, with summary.csv); with `dask` (a scheduler's address) on the workers of
    that Dask cluster (dask_batch.py)."""
    progress = progress or Progress()
    paths = [require_file(p, "X-ray") for p in ([xray] if isinstance(xray, (str, Path)) else xray)]
    if not paths:
        raise InputError("no X-ray given", None, "give X-ray files or a folder of them")
    xray, output = paths[0], Path(output)
    many = len(paths) > 1 or xray.is_dir()
    files = [f for p in paths for f in (find_xrays(p, options.pattern) if p.is_dir() else [p])]
    if many and not files:
        raise InputError(f"no X-ray files{' matching ' + repr(options.pattern) if options.pattern else ''}", xray,
                         "point to a folder of X-rays (.dcm, .png, ...) or pass --pattern")
    if len(set(result_names(files))) != len(files):
        raise InputError("two X-rays have the same file name", xray, "give X-rays with distinct file names")
    if dask:
        from .dask_batch import check_run

        check_run(options, many)
    _check_output(output, many)
    session = Session(options, init)
    if not many:
        prepared = session.prepare(xray)  # bad X-ray or initial pose: an error before anything is written
        session.register(xray, output, progress, prepared)
        return [output]
    rows, names = [], result_names(files)
    if dask:
        from XrayToDRRLib.dask_cluster import connect

        client = connect(dask)  # a wrong or unreachable address fails here, before anything is written
    output.mkdir(parents=True, exist_ok=True)
    devices = parse_devices(options.device)[: len(files)]
    if dask:
        from .dask_batch import register_on_cluster

        del session  # each worker reads its own, once
        rows = register_on_cluster(client, files, [output / name for name in names], options, init, progress)
    elif len(devices) > 1:
        from .parallel import register_in_workers

        del session  # each worker reads its own
        rows = register_in_workers(files, [output / name for name in names], options, init, devices, progress)
    else:
        for n, (path, name) in enumerate(zip(files, names)):
            progress.log(f"[{n + 1}/{len(files)}] {path.name}")
            sub = progress.sub(n / len(files), (n + 1) / len(files))
            rows.append(register_one(session, path, output / name, sub))
            if rows[-1]["status"] == "failed":
                progress.log(f"failed: {path.name}: {rows[-1]['error']}")
    summary = R.write_summary(rows, output / R.SUMMARY)
    ok = sum(r["status"] == "ok" for r in rows)
    progress.log(f"{ok}/{len(rows)} X-rays registered; summary in {summary}")
    progress.update(1.0, "done")
    if ok == 0:
        raise InputError(f"no X-ray could be registered (see {summary})", xray, "fix the errors listed there")
    return [output / name for name, r in zip(names, rows) if r["status"] == "ok"] + [summary]
