"""Training the pose regressor on DRRs of one CT (patient-specific) or of a folder of CTs: xvr's recipe in our loop.

Each step draws `batch_size` C-arm poses with xvr's sampler (`get_random_pose`), renders their DRRs, regresses the
poses from the (augmented) DRRs with xvr's PoseRegressor, renders the DRRs at the predicted poses and minimises xvr's
`PoseRegressionLoss`: weight_ncc x (1 - gradient-multiscale NCC of the two DRRs) + weight_geo x double geodesic
(mm) between the true and predicted poses (weight_ncc = 0: the geodesic alone, without the second rendering, as
xvr's geodesic_only). Adam, xvr's warmup + cosine learning rate, timm's adaptive gradient clipping. DRRs that
catch less than `img_threshold` of the volume are left out of the loss (as xvr).

Pose ranges (what `--r1 .. --tz` mean, in canonical terms; `diffdrr_frames.xvr_sampler_pose` is the definition):
the reference view puts the X-ray source at volume centre + (tx, ty, tz) (RAS mm) with the camera of `orientation`
(AP: the beam runs anterior -> posterior, so ty > 0 is the source-to-centre distance; PA: the beam runs posterior ->
anterior and ty < 0), image rows running head -> feet; then the whole C-arm turns about the volume centre by
Rz(r1) Rx(r2) Ry(r3), degrees, right-handed about the RAS axes: r1 about S (orbital, LAO/RAO-like: +r1 takes an AP
source towards the patient's left), r2 about R (cranial/caudal: +r2 takes it towards the head), r3 about A (an
in-plane turn of an AP image). tx and tz move the source sideways (R) and up (S) before the turn, i.e. they shift
the volume centre across the image. The centre is the middle of each CT's voxel grid (`volumes.center_ras`).

Renderers: `fast` (XrayToDRRLib.fast_render.FastRenderer at the `hq` level of the reference pose: the default on
the CPU), `trilinear` / `siddon` (DiffDRR, as xvr; trilinear is the default on CUDA). The choice is recorded.

Reproducibility: the random state of step s is re-seeded from (seed, s, rank) (poses, augmentations), so a run
resumed from a checkpoint draws the same batches and, with the restored weights, optimiser and scheduler, gives the
same losses. Files (rank 0 only, each written atomically): OUTDIR/config.json, OUTDIR/log.csv (step, loss,
geodesic, ncc, lr, seconds; rewritten at each checkpoint, so it always matches last.pth), OUTDIR/step_NNNNNNN.pth
every `save_every` steps (the newest `keep_checkpoints` kept) and OUTDIR/last.pth. A cancelled run (SIGTERM) keeps
the last complete checkpoint and leaves no partial file.

Multi-GPU with torchrun (XrayToDRRLib.distributed): every process renders its own `batch_size` DRRs per step (its
poses seeded by (seed, step, rank)), so the effective batch is world_size x batch size; DDP averages the gradients
and the logged losses are the mean over the processes.

Checkpoint (plain data, `torch.load(..., weights_only=True)`): kind, format_version, step (steps done), epoch,
config (the full TrainConfig), frame (how to turn the network's DiffDRR pose into a canonical Pose: orientation,
reorient, reverse_x_axis, isocenter = "volume_center", detector), model_state_dict, optimizer_state_dict,
scheduler_state_dict, rng (torch/numpy/python/CUDA states as tensors), history (N x 6 float64 log rows),
elapsed (s), versions, run (device, world size, renderer level).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from XrayToDRRLib import diffdrr_frames as frames
from XrayToDRRLib import distributed
from XrayToDRRLib.atomic import write_text
from XrayToDRRLib.errors import InputError, require_file
from XrayToDRRLib.fast_render import MODES
from XrayToDRRLib.pose import Pose
from XrayToDRRLib.progress import Progress
from XrayToDRRLib.rng import rng_state, set_rng_state
from XrayToDRRLib.torchfiles import plain_data
from XrayToDRRLib.volumes import VOLUME_SUFFIXES, center_ras, read_volume

from .model import (FORMAT_VERSION, KIND, NORM_LAYERS, PARAMETERIZATIONS, augmentations, build_model,
                    load_checkpoint, preprocess, save_checkpoint, standardize, xvr_model)

RANGES = ("r1", "r2", "r3", "tx", "ty", "tz")
DEFAULT_TY = {"AP": (600.0, 900.0), "PA": (-900.0, -600.0)}
RENDERERS = ("fast", "trilinear", "siddon")
LOGGERS = ("csv", "tensorboard", "wandb")
LOG_COLUMNS = ("step", "loss", "geodesic", "ncc", "lr", "seconds")
ORIENTATIONS = ("AP", "PA")


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint; plain values only)."""

    volume: str
    sdd: float
    height: int
    delx: float
    r1: tuple[float, float] = (-30.0, 30.0)
    r2: tuple[float, float] = (-15.0, 15.0)
    r3: tuple[float, float] = (-15.0, 15.0)
    tx: tuple[float, float] = (-50.0, 50.0)
    ty: tuple[float, float] | None = None          # default: DEFAULT_TY[orientation]
    tz: tuple[float, float] = (-50.0, 50.0)
    orientation: str = "AP"
    reverse_x_axis: bool | None = None             # default: True for AP, False for PA (the rigid pairs)
    renderer: str = "auto"                         # auto: fast on the CPU, trilinear on CUDA
    render_mode: str = "hq"                        # FastRenderer level rule (see fast_render.MODES)
    parameterization: str = "quaternion_adjugate"
    convention: str | None = "ZXY"
    model_name: str = "resnet18"
    norm_layer: str = "groupnorm"
    pretrained: bool = False
    unit_conversion_factor: float = 1000.0
    p_augmentation: float = 0.333
    lr: float = 2e-4
    weight_ncc: float = 1.0
    weight_geo: float = 1e-2
    batch_size: int = 32
    n_epochs: int = 100
    n_batches_per_epoch: int = 100
    warmup_fraction: float = 0.05
    img_threshold: float = 0.1
    save_every: int | None = None                  # default: once per epoch
    keep_checkpoints: int = 3
    seed: int = 0
    name: str | None = None
    finetuned_from: str | None = None

    @property
    def total_steps(self) -> int:
        return self.n_epochs * self.n_batches_per_epoch

    def resolved(self, device: torch.device | None = None) -> "TrainConfig":
        """Defaults that depend on other fields filled in (and checked)."""
        c = dataclasses.replace(self)
        c.orientation = str(c.orientation).upper()
        if c.orientation not in ORIENTATIONS:
            raise InputError(f"unknown orientation '{self.orientation}'", None, "use AP or PA")
        if c.reverse_x_axis is None:
            c.reverse_x_axis = c.orientation == "AP"
        if c.ty is None:
            c.ty = DEFAULT_TY[c.orientation]
        if c.renderer == "auto" and device is not None:
            c.renderer = "trilinear" if device.type == "cuda" else "fast"
        if c.save_every is None:
            c.save_every = c.n_batches_per_epoch
        for name in RANGES:
            setattr(c, name, tuple(float(v) for v in getattr(c, name)))
        c.validate()
        return c

    def validate(self) -> None:
        for name in RANGES:
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise InputError(f"--{name} must be finite, got {lo} {hi}", None, f"give --{name} MIN MAX")
            if lo > hi:
                raise InputError(f"--{name} min {lo:g} is greater than max {hi:g}", None, f"give --{name} MIN MAX")
        positive = {"sdd": self.sdd, "delx": self.delx, "lr": self.lr}
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise InputError(f"--{name} must be positive, got {value}", None, f"give a positive --{name}")
        for name in ("height", "batch_size", "n_epochs", "n_batches_per_epoch"):
            minimum = 16 if name == "height" else 1
            if int(getattr(self, name)) < minimum:
                raise InputError(f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(self, name)}",
                                 None, f"give --{name.replace('_', '-')} >= {minimum}")
        if self.save_every is not None and self.save_every < 1:
            raise InputError(f"save_every must be at least 1, got {self.save_every}", None, "save every N >= 1 steps")
        rigid = (self.orientation == "AP") == bool(self.reverse_x_axis)
        if not rigid:
            raise InputError(f"--orientation {self.orientation} with reverse_x_axis={self.reverse_x_axis} renders "
                             "mirrored images, which no C-arm pose can produce", None,
                             "use AP with --reverse-x-axis or PA with --no-reverse-x-axis (the defaults)")
        lo, hi = self.ty
        want_positive = self.orientation == "AP"
        if (want_positive and lo <= 0) or (not want_positive and hi >= 0):
            sign = "positive (the source sits anterior)" if want_positive else "negative (the source sits posterior)"
            raise InputError(f"--ty {lo:g} {hi:g}: for {self.orientation} views ty must be {sign}", None,
                             f"give --ty as the source-to-volume-centre distance, e.g. {DEFAULT_TY[self.orientation]}")
        if max(abs(lo), abs(hi)) >= self.sdd:
            raise InputError(f"--ty {lo:g} {hi:g} puts the volume centre behind the detector (sdd {self.sdd:g} mm)",
                             None, "keep |ty| below --sdd")
        if self.renderer not in RENDERERS + ("auto",):
            raise InputError(f"unknown renderer '{self.renderer}'", None, f"use {', '.join(RENDERERS)}")
        if self.render_mode not in MODES:
            raise InputError(f"unknown render mode '{self.render_mode}'", None, f"use {', '.join(MODES)}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise InputError(f"unknown parameterization '{self.parameterization}'", None,
                             f"use one of {', '.join(PARAMETERIZATIONS)}")
        if self.parameterization == "euler_angles" and not (
                self.convention and len(self.convention) == 3 and set(self.convention) <= set("XYZ")):
            raise InputError(f"euler_angles need a convention such as ZXY, got {self.convention}", None,
                             "give --convention ZXY")
        if self.norm_layer not in NORM_LAYERS:
            raise InputError(f"unknown norm layer '{self.norm_layer}'", None, f"use {', '.join(NORM_LAYERS)}")
        if not 0.0 <= self.p_augmentation <= 1.0:
            raise InputError(f"augmentation probability must be in [0, 1], got {self.p_augmentation}", None,
                             "give a probability")
        if self.weight_ncc < 0 or self.weight_geo < 0 or self.weight_ncc + self.weight_geo <= 0:
            raise InputError("loss weights must be >= 0 and not both 0", None, "give --weight-geo >= 0")

    def to_dict(self) -> dict:
        return plain_data(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict, source=None) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        missing = [n for n in ("volume", "sdd", "height", "delx") if n not in data]
        if unknown or missing:
            raise InputError(f"training config has {'unknown ' + ', '.join(unknown) if unknown else ''}"
                             f"{'; missing ' + ', '.join(missing) if missing else ''}", source,
                             "give a checkpoint written by this version of xraytodrr")
        values = {k: (tuple(v) if k in RANGES and v is not None else v) for k, v in data.items()}
        return cls(**values)


# --- random state ---------------------------------------------------------------------------------------------

def seed_step(seed: int, step: int, rank: int = 0) -> int:
    """Seed every generator from (seed, step, rank): the batch of a step never depends on the steps before it."""
    s = int(np.random.SeedSequence([int(seed), int(step), int(rank)]).generate_state(1, np.uint64)[0] % (2 ** 63))
    torch.manual_seed(s)
    np.random.seed(s % (2 ** 32))
    random.seed(s)
    return s


# --- volumes and rendering ------------------------------------------------------------------------------------

def find_volumes(path: str | Path) -> list[Path]:
    """One CT file, a DICOM series folder, or a folder of CT files (sorted by name)."""
    p = require_file(path, "CT volume or folder")
    if p.is_file():
        return [p]
    found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                   and any(f.name.lower().endswith(s) for s in VOLUME_SUFFIXES))
    if found:
        return found
    return [p]  # read_volume reads a DICOM series folder or says why it cannot


def detector(config: TrainConfig) -> Pose:
    """The training detector (square, centred principal point); its world_from_camera is unused."""
    return Pose(np.eye(4), config.sdd, config.height, config.height, config.delx, config.delx)


def frame_description(config: TrainConfig) -> dict:
    """What turns the network's DiffDRR pose E into a canonical world_from_camera (stored in checkpoints)."""
    return {
        "world_from_camera": "T(isocenter) @ E @ reorient @ camera_flip(reverse_x_axis) (diffdrr_frames)",
        "orientation": config.orientation,
        "reorient": frames.reorient_matrix(config.orientation).tolist(),
        "reverse_x_axis": bool(config.reverse_x_axis),
        "isocenter": "volume_center",
        "detector": {k: v for k, v in detector(config).to_dict().items() if k != "world_from_camera"},
    }


def reference_rotation_translation(config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    rot = np.array([sum(getattr(config, n)) / 2 for n in RANGES[:3]])
    xyz = np.array([sum(getattr(config, n)) / 2 for n in RANGES[3:]])
    return rot, xyz


class TrainingVolume:
    """One CT prepared for rendering batches of canonical poses on the training detector."""

    def __init__(self, path: Path, config: TrainConfig, device: torch.device):
        from XrayToDRRLib.fast_render import FastRenderer
        from XrayToDRRLib.render import DRRRenderer

        ct = read_volume(path)
        self.path = path
        self.isocenter = center_ras(ct)
        self.detector = detector(config)
        self.renderer = config.renderer
        self.level, self.stride = 0, 1
        if config.renderer == "fast":
            self.engine = FastRenderer(ct, device=device)
            self.backend = self.engine.backend
            rot, xyz = reference_rotation_translation(config)
            reference = frames.xvr_sampler_pose(rot, xyz, config.orientation, self.isocenter, config.reverse_x_axis)[0]
            self.level, self.stride = self.engine.plan(Pose(reference, **_detector_fields(self.detector)),
                                                       config.render_mode)
        else:
            self.engine = DRRRenderer(ct, renderer=config.renderer, device=device)
            self.backend = "diffdrr"

    def render(self, world_from_camera: torch.Tensor) -> torch.Tensor:
        """(B,4,4) canonical poses (float32, differentiable) -> (B,1,H,W) DRRs."""
        if self.renderer == "fast":
            return self.engine.render_tensor(world_from_camera, self.detector, self.level, self.stride)[:, None]
        return self.engine.render_extrinsics(frames.to_diffdrr_extrinsic(world_from_camera), self.detector)[:, None]


def _detector_fields(pose: Pose) -> dict:
    return {k: v for k, v in pose.to_dict().items() if k != "world_from_camera"}


# --- logs -----------------------------------------------------------------------------------------------------

class RunLog:
    """log.csv rows (always), plus TensorBoard or offline wandb when asked; only rank 0 has one."""

    def __init__(self, output: Path, kind: str, config: TrainConfig, history: torch.Tensor | None):
        self.output = output
        self.rows: list[list[float]] = [] if history is None else history.cpu().double().tolist()
        self.tensorboard = self.wandb = None
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(output / "tensorboard"))
        elif kind == "wandb":
            import os

            import wandb

            os.environ["WANDB_MODE"] = "offline"
            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb = wandb.init(project="xraytodrr", name=config.name, dir=str(output), mode="offline",
                                    config=config.to_dict())

    def add(self, row: list[float]) -> None:
        self.rows.append(row)
        values = dict(zip(LOG_COLUMNS, row))
        step = int(values.pop("step"))
        if self.tensorboard is not None:
            for k, v in values.items():
                self.tensorboard.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def history(self) -> torch.Tensor:
        return torch.tensor(self.rows, dtype=torch.float64).reshape(-1, len(LOG_COLUMNS))

    def write_csv(self) -> Path:
        lines = [",".join(LOG_COLUMNS)]
        for row in self.rows:
            lines.append(",".join([str(int(row[0]))] + [f"{v:.8g}" for v in row[1:]]))
        return write_text(self.output / "log.csv", "\n".join(lines) + "\n")

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def check_logger(kind: str) -> None:
    """Fail before anything is written when the asked-for logger is not installed."""
    if kind not in LOGGERS:
        raise InputError(f"unknown log '{kind}'", None, f"use {', '.join(LOGGERS)}")
    module = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(kind)
    if module is not None:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            raise InputError(f"--log {kind} needs the '{module}' package, which is not installed", None,
                             f"pip install {module}, or use --log csv")


# --- the trainer ----------------------------------------------------------------------------------------------

class Trainer:
    """Model, optimiser, scheduler, loss and volumes of one run; `step(s)` runs optimisation step s."""

    def __init__(self, config: TrainConfig, device: torch.device, info: distributed.DistInfo | None = None,
                 init_state: dict | None = None):
        from timm.utils.agc import adaptive_clip_grad

        self.info = info or distributed.DistInfo()
        self.device = device
        self.config = config
        self.paths = find_volumes(config.volume)
        self._volume: tuple[int, TrainingVolume] | None = None
        self.volume(0)  # read the first CT now: a bad file fails before anything is written
        torch.manual_seed(int(config.seed))
        # ImageNet weights only for a fresh network (a resumed or finetuned one gets its weights from a checkpoint).
        model = build_model(dict(config.to_dict(), pretrained=config.pretrained and init_state is None), device)
        if init_state is not None:
            try:
                model.load_state_dict(init_state)
            except RuntimeError as e:
                raise InputError(f"the checkpoint's weights do not fit this network ({str(e).splitlines()[0][:120]})",
                                 None, "finetune with the checkpoint's own --model-name and --norm-layer") from None
        self.model = distributed.wrap(model, self.info, device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        scheduler = xvr_model("scheduler")
        warmup = int(round(config.warmup_fraction * config.total_steps))
        self.scheduler = scheduler.WarmupCosineSchedule(self.optimizer, warmup, config.total_steps)
        loss = xvr_model("loss")
        # Masks are not rendered: Dice and Hausdorff terms are off (weight 0); the device is passed explicitly.
        self.lossfn = loss.PoseRegressionLoss(config.sdd, config.weight_ncc, config.weight_geo, 0.0, 0.0,
                                              device=device)
        self.augment = augmentations(config.p_augmentation).to(device)
        self.sampler = xvr_model("sampler").get_random_pose
        self.clip = adaptive_clip_grad
        self.reorient = frames.reorient_matrix(config.orientation)

    @property
    def network(self) -> torch.nn.Module:
        return distributed.unwrap(self.model)

    def volume(self, epoch: int) -> TrainingVolume:
        """The CT of an epoch: a folder's CTs take turns in a seeded order (ranks start at different ones)."""
        n = len(self.paths)
        order = np.random.default_rng(int(self.config.seed)).permutation(n) if n > 1 else [0]
        index = int(order[(epoch * self.info.world_size + self.info.rank) % n])
        if self._volume is None or self._volume[0] != index:
            self._volume = (index, None)  # release the previous CT before reading the next
            self._volume = (index, TrainingVolume(self.paths[index], self.config, self.device))
        return self._volume[1]

    def sample(self, step: int, volume: TrainingVolume):
        """The true poses of step `step`: xvr's DiffDRR poses and their canonical world_from_camera."""
        c = self.config
        pose = self.sampler(*c.r1, *c.r2, *c.r3, *c.tx, *c.ty, *c.tz, c.batch_size)
        extrinsic = pose.matrix.to(self.device, torch.float32)
        world = frames.from_diffdrr_extrinsic(extrinsic, self.reorient, volume.isocenter, c.reverse_x_axis)
        return extrinsic, world

    def step(self, step: int, optimize: bool = True) -> dict:
        """One optimisation step on the batch of `step` (seeded from (seed, step, rank)); returns its metrics."""
        from diffdrr.pose import RigidTransform

        c = self.config
        seed_step(c.seed, step, self.info.rank)
        volume = self.volume(step // c.n_batches_per_epoch)
        extrinsic, world = self.sample(step, volume)
        with torch.no_grad():
            img = volume.render(world)
            keep = ((img > 0).flatten(1).float().mean(1) > c.img_threshold).float()
            # xvr's augmentations expect [0, 1] images (their own Standardize is batch-wide: a no-op on these).
            x = preprocess(self.augment(standardize(img)), c.height)
        pred = self.model(x)
        truth = RigidTransform(extrinsic)
        if c.weight_ncc > 0:
            pred_world = frames.from_diffdrr_extrinsic(pred.matrix, self.reorient, volume.isocenter,
                                                       c.reverse_x_axis)
            pred_img = volume.render(pred_world.float())
            true_img, pred_img = preprocess(img, c.height), preprocess(pred_img, c.height)
            metrics = self.lossfn(true_img, (img > 0).float(), truth, pred_img, (pred_img > 0).float(), pred)
            per_sample, dgeo, ncc = metrics.loss, metrics.dgeo, metrics.mncc
        else:  # geodesic only (xvr's geodesic_only): no DRRs at the predicted poses
            dgeo = self.lossfn.geodesic(truth, pred)[2]
            per_sample, ncc = c.weight_geo * dgeo, torch.full_like(dgeo, float("nan"))
        n_kept = keep.sum().clamp(min=1.0)
        per_sample = torch.where(keep > 0, per_sample, torch.zeros_like(per_sample))
        loss = per_sample.sum() / n_kept
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        finite = bool(torch.isfinite(loss)) and bool(torch.stack([g.norm() for g in grads]).isfinite().all())
        if optimize and finite:
            self.clip(self.model.parameters())
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if optimize:
            self.scheduler.step()
        values = torch.stack([loss.detach(), (dgeo.detach() * keep).sum() / n_kept,
                              (ncc.detach() * keep).sum() / n_kept]).double()
        values = distributed.all_reduce(values, self.info, "mean")
        return {"loss": float(values[0]), "geodesic": float(values[1]), "ncc": float(values[2]), "lr": float(lr),
                "skipped": not finite, "kept": float(keep.mean())}

    # --- checkpoints --------------------------------------------------------------------------------------------
    def payload(self, steps_done: int, history: torch.Tensor, elapsed: float) -> dict:
        import importlib.metadata

        import timm

        c = self.config
        return {
            "kind": KIND, "format_version": FORMAT_VERSION,
            "step": int(steps_done), "epoch": int(steps_done // c.n_batches_per_epoch),
            "config": c.to_dict(), "frame": frame_description(c),
            "model_state_dict": self.network.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": plain_data(self.scheduler.state_dict()),
            "rng": rng_state(), "history": history, "elapsed": float(elapsed),
            "versions": {"torch": str(torch.__version__), "xvreg": importlib.metadata.version("xvreg"),
                         "timm": str(timm.__version__)},
            "run": {"device": str(self.device), "world_size": self.info.world_size,
                    "renderer": c.renderer, "level": int(self._volume[1].level) if self._volume else 0,
                    "backend": self._volume[1].backend if self._volume else None},
        }

    def load_state(self, ckpt: dict) -> None:
        self.network.load_state_dict(ckpt["model_state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        self.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])


def _prune(output: Path, keep: int) -> None:
    if keep <= 0:
        return
    periodic = sorted(output.glob("step_*.pth"), key=lambda p: p.name)
    for old in periodic[:-keep]:
        if re.fullmatch(r"step_\d+\.pth", old.name):
            old.unlink(missing_ok=True)


def _check_output(output: Path, resume: Path | None) -> None:
    if output.exists() and not output.is_dir():
        raise InputError("output exists and is not a folder", output, "give a folder for -o")
    last = output / "last.pth"
    if last.exists():
        same = resume is not None and resume.resolve().parent == output.resolve()
        if not same:
            raise InputError("already holds a training run (last.pth)", output,
                             f"resume it with --resume {last}, or choose another -o")


def train(config: TrainConfig | None, output: str | Path, device: str = "auto", log: str = "csv",
          resume: str | Path | None = None, progress: Progress | None = None,
          init_state: dict | None = None) -> list[Path]:
    """Train (or, with `resume`, continue) a pose regressor; returns [last.pth, log.csv] (rank 0)."""
    progress = progress or Progress()
    output = Path(output)
    check_logger(log)
    info, here = distributed.setup(device)
    try:
        ckpt = None
        if resume is not None:
            resume = Path(resume)
            ckpt = load_checkpoint(resume, here)
            config = TrainConfig.from_dict(ckpt["config"], resume)
        if config is None:
            raise InputError("nothing to train", None, "give a training config or --resume CKPT")
        config = config.resolved(here)
        _check_output(output, resume)
        trainer = Trainer(config, here, info, init_state=ckpt["model_state_dict"] if ckpt is not None else init_state)
        start, elapsed, history = 0, 0.0, None
        if ckpt is not None:
            trainer.load_state(ckpt)
            start, elapsed, history = int(ckpt["step"]), float(ckpt.get("elapsed", 0.0)), ckpt.get("history")
            if history is not None:
                history = history[history[:, 0] < start]
        if not info.is_main:
            progress = Progress()
        return _loop(trainer, output, log, start, elapsed, history, progress, info)
    finally:
        distributed.shutdown(info)


def _loop(trainer: Trainer, output: Path, log: str, start: int, elapsed: float, history, progress: Progress,
          info: distributed.DistInfo) -> list[Path]:
    c = trainer.config
    total = c.total_steps
    runlog = None
    if info.is_main:
        output.mkdir(parents=True, exist_ok=True)
        write_text(output / "config.json", json.dumps({"config": c.to_dict(), "frame": frame_description(c)},
                                                      indent=2) + "\n")
        runlog = RunLog(output, log, c, history)
        progress.log(f"training {c.model_name} on {len(trainer.paths)} CT(s) with the {c.renderer} renderer on "
                     f"{trainer.device}" + (f" x {info.world_size} processes" if info.enabled else "")
                     + f": {total} steps of {c.batch_size} DRRs ({c.height}x{c.height})")
    outputs = [output / "last.pth", output / "log.csv"]
    t0 = time.monotonic() - elapsed
    try:
        for step in range(start, total):
            m = trainer.step(step)
            seconds = time.monotonic() - t0
            if runlog is not None:
                runlog.add([step, m["loss"], m["geodesic"], m["ncc"], m["lr"], seconds])
                if m["skipped"]:
                    progress.log(f"step {step}: non-finite loss or gradient, update skipped")
            done = step + 1
            if info.is_main and (done % c.save_every == 0 or done == total):
                paths = [output / "last.pth"]
                if done % c.save_every == 0:
                    paths.insert(0, output / f"step_{done:07d}.pth")
                save_checkpoint(trainer.payload(done, runlog.history(), seconds), paths)
                runlog.write_csv()
                _prune(output, c.keep_checkpoints)
                progress.log(f"checkpoint {paths[0].name} (step {done}/{total}, loss {m['loss']:.4f})")
            progress.update(done / total, f"step {done}/{total} loss {m['loss']:.4f} "
                                          f"geodesic {m['geodesic']:.1f} mm")
    finally:
        if runlog is not None:
            runlog.close()
    return outputs if info.is_main else []
