"""One exception type for bad input: the CLI prints its message and exits 2, the GUI shows it in a dialog."""

from pathlib import Path


class InputError(Exception):
    """Bad user input. The message names the file (when there is one) and says how to fix it."""

    def __init__(self, message: str, path: str | Path | None = None, fix: str | None = None):
        text = f"{path}: {message}" if path is not None else message
        if fix:
            text = f"{text}. Fix: {fix}"
        super().__init__(text)
        self.path = None if path is None else str(path)
        self.fix = fix


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return `path` as a Path, or raise InputError if it does not exist."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found", p, "check the path")
    return p
