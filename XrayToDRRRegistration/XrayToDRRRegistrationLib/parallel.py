"""A folder of X-rays over several devices: one worker process per device, each with its own Session.

The parent hands out one X-ray at a time to whichever worker is free (dynamic load balance: a worker asks for the
next when it sends a summary row), forwards the workers' progress and log lines, and returns the rows in file
order. Workers are spawned (CUDA cannot be forked) and each talks over its own pipe, so one that dies (a crash,
out of memory, killed) blocks no other: the parent sees its exit, reports its in-flight X-ray as failed, and the
others go on. They are ordinary children: a job's process-tree kill reaches them, and the parent terminates them
whenever it stops early (Ctrl-C, SIGTERM, an error).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections import deque
from multiprocessing import connection, get_context
from pathlib import Path

import torch

from XrayToDRRLib.progress import Progress

from .batch import RegistrationOptions, Session, failed_row, register_one
from .initialize import Initializer

UPDATE_INTERVAL = 0.2  # seconds between a worker's progress messages (pipe traffic, not every iteration)
STOP_GRACE = 10.0      # seconds a worker gets to clean its temporary folder after SIGTERM


class PipeProgress(Progress):
    """A worker's Progress for X-ray `index`: updates (throttled) and log lines go to the parent."""

    def __init__(self, conn, index: int):
        super().__init__()
        self.conn, self.index, self._last = conn, index, 0.0

    def update(self, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < UPDATE_INTERVAL:
            return
        self._last = now
        self.conn.send(("update", self.index, float(fraction), message))

    def log(self, message: str) -> None:
        self.conn.send(("log", self.index, message))


def worker(conn, device: str, options: RegistrationOptions, init: Initializer, threads: int) -> None:
    """A worker process: a Session on `device` registering the X-rays the parent sends until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # atomic_dir cleans up on exit
    here = torch.device(device)
    if here.type == "cpu":
        torch.set_num_threads(threads)  # the CPU workers share the cores
    elif here.type == "cuda" and here.index is not None:
        torch.cuda.set_device(here)  # a bare "cuda" anywhere below means this worker's GPU
    try:
        session = Session(dataclasses.replace(options, device=device), init)
    except Exception as e:
        conn.send(("broken", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready",))
    while (task := conn.recv()) is not None:
        index, path, out_dir = task
        try:
            row = register_one(session, Path(path), Path(out_dir), PipeProgress(conn, index))
        except Exception as e:  # a bug, not bad input: report it with its X-ray, then end this worker
            conn.send(("row", index, failed_row(Path(path), f"{type(e).__name__}: {e}")))
            raise
        conn.send(("row", index, row))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # all sent and written: skip torch's interpreter teardown (seconds, which the parent waits for)


@dataclasses.dataclass
class _Worker:
    process: object
    conn: object
    device: str
    index: int | None = None  # the X-ray it is registering
    stopped: bool = False
    reason: str = ""


def register_in_workers(files: list[Path], out_dirs: list[Path], options: RegistrationOptions, init: Initializer,
                        devices: list[torch.device], progress: Progress, target=worker) -> list[dict]:
    """Register files[i] into out_dirs[i] with one worker process per device; the summary rows in file order.
    `target` is the workers' function (tests pass one that crashes)."""
    ctx = get_context("spawn")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // max(1, sum(d.type == "cpu" for d in devices)))
    rows: list[dict | None] = [None] * len(files)
    fractions = [0.0] * len(files)
    todo = deque(range(len(files)))
    workers: list[_Worker] = []

    def assign(w: _Worker) -> None:
        if w.stopped:
            return
        w.index = todo.popleft() if todo else None
        try:
            w.conn.send(None if w.index is None else (w.index, str(files[w.index]), str(out_dirs[w.index])))
        except OSError:  # it died meanwhile: its exit is handled by finish()
            if w.index is not None:
                todo.appendleft(w.index)
            w.index = None
            return
        if w.index is not None:
            progress.log(f"[{len(files) - len(todo)}/{len(files)}] {files[w.index].name} on {w.device}")

    def record(index: int, row: dict) -> None:
        rows[index], fractions[index] = row, 1.0
        if row["status"] == "failed":
            progress.log(f"failed: {files[index].name}: {row['error']}")
        progress.update(sum(fractions) / len(files), f"{sum(r is not None for r in rows)}/{len(files)} X-rays")

    def handle(w: _Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "update":
            _, index, fraction, text = message
            fractions[index] = max(fractions[index], min(fraction, 1.0))  # the total never goes back
            progress.update(sum(fractions) / len(files), f"{files[index].name}: {text}")
        elif kind == "log":
            progress.log(f"{files[message[1]].name}: {message[2]}")
        elif kind == "row":
            record(message[1], message[2])
            w.index = None
            assign(w)
        elif kind == "ready":
            assign(w)
        elif kind == "broken":
            w.reason = f"the worker on {w.device} could not start: {message[1]}"
            progress.log(w.reason)

    def finish(w: _Worker) -> None:
        """The worker has exited (or closed its pipe): read what it sent last, fail its in-flight X-ray."""
        w.stopped = True
        try:
            while w.conn.poll():
                handle(w, w.conn.recv())
        except (EOFError, OSError):
            pass
        w.process.join(STOP_GRACE)
        if w.index is not None:
            reason = f"the worker on {w.device} stopped (exit code {w.process.exitcode}) while registering it"
            w.reason = w.reason or reason
            record(w.index, failed_row(files[w.index], reason))
            w.index = None

    try:
        for device in devices:
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=target, args=(theirs, str(device), options, init, threads),
                                  name=f"xraytodrr-register-{device}")
            process.start()
            theirs.close()  # so a dead worker reads as EOF here
            workers.append(_Worker(process, mine, str(device)))
        live = list(workers)
        while live:
            ready = set(connection.wait([w.conn for w in live] + [w.process.sentinel for w in live]))
            for w in [w for w in live if w.conn in ready or w.process.sentinel in ready]:
                if w.process.sentinel in ready:
                    finish(w)
                else:
                    try:
                        handle(w, w.conn.recv())
                    except (EOFError, OSError):
                        finish(w)
                if w.stopped:
                    live.remove(w)
    finally:
        for w in workers:
            if w.process.is_alive():
                w.process.terminate()
        for w in workers:
            w.process.join(STOP_GRACE)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
    reasons = "; ".join(dict.fromkeys(w.reason for w in workers if w.reason)) or "every worker stopped"
    return [row or failed_row(path, f"not registered: {reasons}") for path, row in zip(files, rows)]
