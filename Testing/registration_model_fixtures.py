"""Helpers for the pose-regressor tests: a tiny training recipe, cancellation, simulated X-rays, gloo DDP."""

from __future__ import annotations

import dataclasses
import os
import socket
import traceback

import numpy as np
import torch

from XrayToDRRLib.progress import Progress
from XrayToDRRLib.xray import Xray

# timm's own test network: 99k parameters with GroupNorm, so batches of 4 at 32 px train in a fraction of a second.
TINY_MODEL = ("test_efficientnet_gn", "default")

TINY_CLI = ["--sdd", 1020, "--height", 32, "--delx", 8.0, "--batch-size", 4, "--model-name", TINY_MODEL[0],
            "--norm-layer", TINY_MODEL[1], "--r1", -20, 20, "--r2", -10, 10, "--r3", -10, 10, "--tx", -30, 30,
            "--ty", 650, 850, "--tz", -30, 30, "--lr", 1e-3, "--device", "cpu", "--progress", "none"]


def tiny_config(volume, **overrides):
    from XrayToDRRRegistrationLib.train import TrainConfig

    base = TrainConfig(volume=str(volume), sdd=1020.0, height=32, delx=8.0, batch_size=4, model_name=TINY_MODEL[0],
                       norm_layer=TINY_MODEL[1], r1=(-20.0, 20.0), r2=(-10.0, 10.0), r3=(-10.0, 10.0),
                       tx=(-30.0, 30.0), ty=(650.0, 850.0), tz=(-30.0, 30.0), lr=1e-3, n_epochs=2,
                       n_batches_per_epoch=2)
    return dataclasses.replace(base, **overrides)


class CancelAt(Progress):
    """Acts like SIGTERM (cli.py turns it into SystemExit) once `steps` training steps are done."""

    def __init__(self, steps: int, total: int):
        super().__init__()
        self.at = steps / total

    def update(self, fraction: float, message: str = "") -> None:
        if fraction >= self.at - 1e-9:
            raise SystemExit(143)


def simulated_xray(ct, pose, mode: str = "full") -> Xray:
    """A DRR of `ct` at `pose`, as an Xray with the pose's detector geometry."""
    from XrayToDRRLib.fast_render import FastRenderer

    pixels = FastRenderer(ct, device="cpu").render(pose, mode)
    return Xray(pixels=np.asarray(pixels, np.float32), sdd=pose.sdd, delx=pose.delx, dely=pose.dely)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config, outputs, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        from XrayToDRRRegistrationLib.train import train

        written = train(config, outputs[rank], device="cpu")
        results.put((rank, [str(p) for p in written], None))
    except BaseException:  # report to the parent instead of hanging it
        results.put((rank, None, traceback.format_exc()))
        raise


def run_ddp(config, outputs: list, timeout: float = 120.0) -> dict:
    """Train `config` in len(outputs) gloo processes (forked from this one, so no re-import), rank r writing to
    outputs[r]; returns {rank: paths returned}."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, len(outputs), port, config, outputs, results))
             for r in range(len(outputs))]
    for p in procs:
        p.start()
    got = {}
    try:
        for _ in procs:
            rank, written, error = results.get(timeout=timeout)
            assert error is None, f"rank {rank} failed:\n{error}"
            got[rank] = written
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return got
