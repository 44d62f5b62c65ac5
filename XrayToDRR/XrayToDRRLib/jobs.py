"""Run a CLI verb as a child process and follow it without blocking (the Slicer modules poll it from a QTimer).

    job = Job(["drr", "--volume", "ct.nii.gz", "--pose", "ap.json", "-o", "drrs"], outputs=["drrs"])
    ...                      # every few hundred ms, from any thread:
    for event in job.poll():  # {"event": "progress"|"log"|"done"|"error", ...}, see progress.JsonLinesProgress
        ...
    job.state, job.fraction, job.message, job.outputs, job.error, job.returncode
    job.cancel()             # SIGTERM the process tree, SIGKILL what is left after `grace` s, remove temp files

The child is `python -m XrayToDRRLib VERB ... --progress jsonl` in its own process session (POSIX) or process group
(Windows), so it can be stopped as a whole and a Ctrl-C in the parent's console does not reach it. Reader threads
turn its stdout JSON lines into events (other stdout lines become `log` events with `"raw": True`) and keep the
tail of its stderr. Only `wait()`, `run_job()` and `cancel(wait=True)` block.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import psutil

from .errors import InputError

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
_STDERR_LINES = 2000  # stderr tail kept in memory
_PIPE_DRAIN_S = 5.0  # after the child exits, how long to wait for readers (a stray grandchild may hold the pipe)


class JobError(InputError):
    """A job failed or was cancelled; the message is the child's (its error event, else its last stderr line)."""

    def __init__(self, message: str, job: "Job"):
        super().__init__(message)
        self.job = job
        self.returncode = job.returncode
        self.state = job.state


class Job:
    """One CLI verb running in a child process. Thread-safe; nothing but `wait()` (and `cancel(wait=True)`) blocks.

    args: the verb and its options, as on the command line (`--progress jsonl` is added unless `--progress` is given).
    python: the interpreter to run (in Slicer: its own Python executable). env: variables added to this process's
    environment. cwd: working directory of the child. outputs: files or folders the verb writes; after a cancel or
    failure, temporary siblings left by a killed atomic writer (`.NAME.tmp-*`, see atomic.py) are removed there.
    module: the module run with `python -m` (tests and plug-ins may run another one speaking the same protocol).
    """

    def __init__(self, args: Iterable, python: str = sys.executable, env: dict | None = None,
                 cwd: str | Path | None = None, outputs: Iterable[str | Path] | None = None,
                 module: str = "XrayToDRRLib"):
        args = [str(a) for a in args]
        if not any(a == "--progress" or a.startswith("--progress=") for a in args):
            args += ["--progress", "jsonl"]
        self.command = [str(python), "-m", module, *args]
        self.declared_outputs = [Path(cwd or ".", p) if not Path(p).is_absolute() else Path(p)
                                 for p in (outputs or [])]
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._fraction = 0.0
        self._message = ""
        self._outputs: list[str] = []
        self._error_event: str | None = None
        self._done_event = False
        self._state = RUNNING
        self._cancel_requested = False
        self._finalizing = False
        self._canceller: threading.Thread | None = None
        self._pids: set[int] = set()
        self._exited = threading.Event()  # the child itself has exited (set by the watcher after reaping it)
        self._finished = threading.Event()  # final state known, pipes drained, temp files cleaned
        self.started = time.monotonic()
        self.ended: float | None = None

        popen_kwargs = {}
        if os.name == "nt":
            popen_kwargs["creationflags"] = (getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
                                             | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            popen_kwargs["start_new_session"] = True
        try:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env=_child_env(env), cwd=cwd, **popen_kwargs)
        except OSError as e:
            raise InputError(f"cannot start a job ({e.strerror or e})", python,
                             "check the Python executable and the working folder (cwd)") from None
        self.pid = self._proc.pid
        self._pids.add(self.pid)
        try:
            self._ps = psutil.Process(self.pid)  # psutil remembers the start time: safe against pid reuse
        except psutil.Error:
            self._ps = None  # already gone
        self._readers = [threading.Thread(target=self._read_stdout, name=f"job-{self.pid}-stdout", daemon=True),
                         threading.Thread(target=self._read_stderr, name=f"job-{self.pid}-stderr", daemon=True)]
        for t in self._readers:
            t.start()
        self._watcher = threading.Thread(target=self._watch, name=f"job-{self.pid}-watch", daemon=True)
        self._watcher.start()

    # ---- what the GUI reads ---------------------------------------------------------------------------------------

    def poll(self) -> list[dict]:
        """Events received since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    @property
    def state(self) -> str:
        """'running' until the child has exited and its output is read, then 'done', 'failed' or 'cancelled'."""
        return self._state

    @property
    def running(self) -> bool:
        return self._state == RUNNING

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    @property
    def fraction(self) -> float:
        """Last reported progress, 0..1 (1.0 once done)."""
        return self._fraction

    @property
    def message(self) -> str:
        """Latest progress, log or error message."""
        return self._message

    @property
    def outputs(self) -> list[str]:
        """Paths from the `done` event (empty until then)."""
        with self._lock:
            return list(self._outputs)

    @property
    def error(self) -> str | None:
        """The error event's message, else the last non-empty stderr line; None when the job did not fail."""
        with self._lock:
            if self._error_event:
                return self._error_event
            if self._state in (RUNNING, DONE):
                return None
            if self._state == CANCELLED:
                return "cancelled"
            return self._stderr_tail() or f"exited with code {self._proc.returncode}"

    def _stderr_tail(self) -> str:
        return next((line.strip() for line in reversed(self._stderr) if line.strip()), "")

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self._stderr)

    @property
    def returncode(self) -> int | None:
        """The child's exit code (negative: killed by that signal on POSIX); None while it runs."""
        return self._proc.returncode if self._exited.is_set() else None

    @property
    def pids(self) -> list[int]:
        """Every process id seen in this job's tree (the child, and its descendants seen when cancelling)."""
        with self._lock:
            return sorted(self._pids)

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def wait(self, timeout: float | None = None) -> str:
        """Block until the job has finished (or `timeout` s passed); return its state."""
        self._finished.wait(timeout)
        return self._state

    def cancel(self, grace: float = 5.0, wait: bool = False) -> None:
        """Stop the job: SIGTERM its whole process tree (the CLI turns it into SystemExit so atomic writers remove
        their temporary files), SIGKILL whatever is still alive after `grace` seconds, then remove leftover
        temporary siblings of the declared outputs. Idempotent; harmless once the job has finished.
        Returns at once (the escalation runs in a thread; `state` turns 'cancelled' when all is over, see `wait()`);
        wait=True blocks until then."""
        with self._lock:
            if self._finalizing or self._cancel_requested:
                start = False
            else:
                self._cancel_requested = True
                self._message = "cancelling"
                self._canceller = threading.Thread(target=self._kill_tree, args=(grace,),
                                                   name=f"job-{self.pid}-cancel", daemon=True)
                start = True
            canceller = self._canceller
        if start:
            canceller.start()
        if wait:
            if canceller is not None:
                canceller.join()
            self._finished.wait(_PIPE_DRAIN_S + 1.0)

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc) -> None:
        if self.running:
            self.cancel(wait=True)

    def __repr__(self) -> str:
        return f"<Job pid={self.pid} {self._state} {self._fraction:.0%} {' '.join(self.command[3:])!r}>"

    # ---- threads --------------------------------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        for raw in iter(self._proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict) or "event" not in event:
                event = {"event": "log", "message": line, "raw": True}
            self._record(event)
        self._proc.stdout.close()

    def _read_stderr(self) -> None:
        for raw in iter(self._proc.stderr.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            with self._lock:
                self._stderr.append(line)
        self._proc.stderr.close()

    def _record(self, event: dict) -> None:
        kind = event.get("event")
        with self._lock:
            if kind == "progress":
                try:
                    self._fraction = min(max(float(event.get("fraction", self._fraction)), 0.0), 1.0)
                except (TypeError, ValueError):
                    pass
                self._message = str(event.get("message", "") or self._message)
            elif kind == "log":
                self._message = str(event.get("message", ""))
            elif kind == "done":
                self._done_event = True
                self._fraction = 1.0
                self._outputs = [str(p) for p in event.get("outputs") or []]
            elif kind == "error":
                self._error_event = str(event.get("message", "")) or "error"
                self._message = self._error_event
        self._events.put(event)

    def _watch(self) -> None:
        self._proc.wait()
        self._exited.set()
        with self._lock:
            self._finalizing = True  # a cancel() from now on is a no-op
            canceller = self._canceller
        if canceller is not None:
            canceller.join()
        deadline = time.monotonic() + _PIPE_DRAIN_S
        for t in self._readers:
            t.join(max(0.0, deadline - time.monotonic()))
        rc = self._proc.returncode
        with self._lock:
            if rc == 0 and self._error_event is None and (self._done_event or not self._cancel_requested):
                state = DONE
            elif self._cancel_requested:
                state = CANCELLED
            else:
                state = FAILED
        if state != DONE:
            remove_temporary_siblings(self.declared_outputs)
        with self._lock:
            if state == DONE:
                self._fraction = 1.0
            elif state == CANCELLED:
                self._message = "cancelled"
            self._state = state
            self.ended = time.monotonic()
        self._finished.set()

    def _kill_tree(self, grace: float) -> None:
        """SIGTERM every process of the tree (psutil) and the process group (POSIX), SIGKILL survivors after grace."""
        known: dict[int, psutil.Process] = {}

        def main_alive() -> bool:
            return not self._exited.is_set()

        def discover() -> None:
            roots = ([self._ps] if self._ps is not None and main_alive() else []) + list(known.values())
            for root in roots:
                try:
                    for p in root.children(recursive=True):
                        known.setdefault(p.pid, p)
                except psutil.Error:
                    pass
            with self._lock:
                self._pids.update(known)

        def alive_descendants() -> list[psutil.Process]:
            return [p for p in known.values() if _alive(p)]

        def signal_all(sig) -> None:
            # Windows has no SIGTERM to catch: terminate() and kill() both end a process at once.
            if main_alive():
                try:
                    if os.name == "nt":
                        self._proc.terminate()
                    else:
                        self._proc.send_signal(sig)  # Popen checks the child is not reaped yet
                except OSError:
                    pass
            for p in alive_descendants():
                try:
                    if os.name == "nt":
                        p.kill()
                    else:
                        p.send_signal(sig)  # psutil checks the pid still names the same process
                except psutil.Error:
                    pass
            if os.name != "nt":
                try:  # start_new_session: the group id is the child's pid; catches what psutil missed
                    os.killpg(self.pid, sig)
                except OSError:
                    pass

        discover()
        signal_all(signal.SIGTERM)
        deadline = time.monotonic() + max(0.0, grace)
        while time.monotonic() < deadline:
            discover()  # children started while shutting down
            if not main_alive() and not alive_descendants():
                break
            if main_alive():
                self._exited.wait(0.05)
            else:
                time.sleep(0.05)
        if main_alive() or alive_descendants():
            discover()
            signal_all(signal.SIGKILL if os.name != "nt" else signal.SIGTERM)
            end = time.monotonic() + 5.0
            while (main_alive() or alive_descendants()) and time.monotonic() < end:
                time.sleep(0.02)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _child_env(extra: dict | None) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (extra or {}).items()})
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    # Let `python -m XrayToDRRLib` find this very engine when it is not pip-installed for that interpreter (a
    # Slicer extension's module folder); never hand an installed site-packages folder to another interpreter.
    here = Path(__file__).resolve().parent.parent
    if here.name not in ("site-packages", "dist-packages"):
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(here) not in paths:
            env["PYTHONPATH"] = os.pathsep.join([str(here), *paths])
    return env


def remove_temporary_siblings(outputs: Iterable[str | Path]) -> list[Path]:
    """Remove what a killed atomic writer (atomic.py) leaves: `.NAME.tmp-*` next to each output path and, for an
    output folder, any `.*.tmp-*` inside it. Returns the removed paths."""
    removed = []
    for out in outputs:
        out = Path(out)
        candidates = []
        if out.parent.is_dir():
            candidates += [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]
        if out.is_dir():
            candidates += [p for p in out.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]
        for p in candidates:
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # still open on Windows, or not ours to remove
    return removed


def run_job(args: Iterable, on_event: Callable[[dict], None] | None = None, poll_interval: float = 0.05,
            **job_kwargs) -> Job:
    """Run a verb to the end, calling `on_event(event)` in this thread for each event; return the finished Job.
    A failed or cancelled job raises JobError with the child's message. Ctrl-C cancels the child, then re-raises."""
    job = Job(args, **job_kwargs)
    try:
        while not job._finished.wait(poll_interval):
            for event in job.poll():
                if on_event:
                    on_event(event)
        for event in job.poll():
            if on_event:
                on_event(event)
    except BaseException:
        job.cancel(wait=True)
        raise
    if job.state != DONE:
        raise JobError(job.error or job.state, job)
    return job
