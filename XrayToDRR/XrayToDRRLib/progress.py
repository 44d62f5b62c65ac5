"""Progress reporting shared by every long engine function.

Engine functions take a `Progress` and call `update(fraction, message)` / `log(message)`. The CLI picks the sink:
a tqdm bar on a terminal, JSON lines on stdout for a parent process (`--progress jsonl`, see jobs.py), or nothing.
"""

import json
import sys
import time


class Progress:
    """Silent reporter; subclasses print. `sub(start, stop)` maps a child task's 0..1 onto part of this one."""

    def __init__(self, start: float = 0.0, stop: float = 1.0, parent: "Progress | None" = None):
        self.start, self.stop, self.parent = start, stop, parent

    def update(self, fraction: float, message: str = "") -> None:
        if self.parent is not None:
            self.parent.update(self.start + (self.stop - self.start) * min(max(fraction, 0.0), 1.0), message)

    def log(self, message: str) -> None:
        if self.parent is not None:
            self.parent.log(message)

    def sub(self, start: float, stop: float) -> "Progress":
        return Progress(start, stop, parent=self)

    def close(self) -> None:
        pass


class JsonLinesProgress(Progress):
    """One JSON object per line on stdout: the child-process protocol read by jobs.Job and the Slicer modules."""

    def __init__(self, stream=None, min_interval: float = 0.1):
        super().__init__()
        self.stream = stream or sys.stdout
        self.min_interval = min_interval
        self._last = 0.0

    def emit(self, event: str, **fields) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()

    def update(self, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < self.min_interval:
            return
        self._last = now
        self.emit("progress", fraction=round(float(fraction), 4), message=message)

    def log(self, message: str) -> None:
        self.emit("log", message=message)


class BarProgress(Progress):
    """A tqdm progress bar on stderr for people at a terminal."""

    def __init__(self, description: str = ""):
        super().__init__()
        from tqdm import tqdm

        self.bar = tqdm(total=1000, desc=description, unit="‰", leave=False, file=sys.stderr,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def update(self, fraction: float, message: str = "") -> None:
        self.bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        if message:
            self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()

    def log(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def make_progress(mode: str, description: str = "") -> Progress:
    """mode: 'bar' (default on a terminal), 'jsonl' (for a parent process) or 'none'."""
    if mode == "jsonl":
        return JsonLinesProgress()
    if mode == "bar" and sys.stderr.isatty():
        return BarProgress(description)
    if mode == "bar":
        return _PlainLog()
    return Progress()


class _PlainLog(Progress):
    """Non-terminal 'bar': log lines only, so CI logs stay readable."""

    def log(self, message: str) -> None:
        print(message, file=sys.stderr)
