"""Atomic output: write to a temporary sibling, then rename, so a failed or cancelled job leaves nothing half-written."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp/mkdtemp create private (0600/0700) entries; outputs get the permissions of any other new file.
    umask = os.umask(0)
    os.umask(umask)
    prefix = f".{path.name}.tmp-"
    if is_dir:
        name = tempfile.mkdtemp(prefix=prefix, dir=path.parent)
        os.chmod(name, 0o777 & ~umask)
        return Path(name)
    # Keep the real suffixes (writers such as SimpleITK pick the format from them).
    fd, name = tempfile.mkstemp(prefix=prefix, suffix="".join(path.suffixes[-2:]), dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary file path; on success it replaces `path`, on any exception it is removed."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=False)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary directory; on success it becomes `path` (replacing an older one), else it is removed."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=True)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)
