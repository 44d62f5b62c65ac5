"""Helpers for test_jobs.py: a tiny synthetic CT, a ring of pose files, and a stand-in child speaking the jobs protocol."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import psutil
import SimpleITK as sitk

from XrayToDRRLib.pose import look_at

# Children of the tests render on one thread: the test machine's cores are shared.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_tiny_ct(path: Path, n: int = 40, spacing: float = 2.0) -> Path:
    """An n³ water sphere with a bone rod, in HU, centred on the origin."""
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    hu = np.full((n, n, n), -1000.0, np.float32)
    hu[i ** 2 + j ** 2 + k ** 2 < 0.8] = 40.0
    hu[((i - 0.2) / 0.15) ** 2 + (j / 0.15) ** 2 < 1] = 1200.0
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing([spacing] * 3)
    img.SetOrigin([-spacing * (n - 1) / 2] * 3)
    sitk.WriteImage(img, str(path))
    return path


def write_pose_ring(folder: Path, count: int, size: int = 64) -> list[Path]:
    """`count` pose files p0000.json... on a circle around the CT (source 400 mm away, SDD 800 mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        a = 2 * np.pi * n / count
        pose = look_at([400 * np.cos(a), 400 * np.sin(a), 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 800.0,
                       size, size, 240.0 / size)
        paths.append(pose.save(folder / f"p{n:04d}.json"))
    return paths


def drr_args(ct: Path, poses: list[Path], output: Path, root: Path) -> list[str]:
    """`drr` arguments with paths relative to `root` (the job's cwd) to keep long command lines short."""
    rel = lambda p: str(Path(p).relative_to(root))  # noqa: E731
    args = ["drr", "--volume", rel(ct), "-o", rel(output), "--device", "cpu"]
    for p in poses:
        args += ["--pose", rel(p)]
    return args


def temporary_files(folder: Path) -> list[Path]:
    """What atomic.py leaves behind when it cannot clean up."""
    return [p for p in folder.iterdir() if p.name.startswith(".") and ".tmp-" in p.name] if folder.exists() else []


def alive(pid: int) -> bool:
    """True for a running process (a zombie, merely not yet reaped, counts as gone)."""
    try:
        p = psutil.Process(pid)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# Run as `python -m atomic_child MODE TARGET`: stands in for a verb caught in the middle of writing `TARGET`.
#   term:   SIGTERM -> SystemExit, as in cli.main (atomic_path removes its temp file on the way out)
#   ignore: ignores SIGTERM and starts a grandchild in its own session that ignores it too (needs SIGKILL)
#   fail:   emits an error event naming TARGET and exits 2, as the CLI does for InputError
ATOMIC_CHILD = textwrap.dedent('''
    import json, signal, subprocess, sys, time
    from pathlib import Path
    from XrayToDRRLib.atomic import atomic_path

    mode, target = sys.argv[1], sys.argv[2]

    def emit(event, **fields):
        print(json.dumps({"event": event, **fields}), flush=True)

    if mode == "fail":
        print("a line that is not JSON", flush=True)
        emit("error", message=f"{target}: cannot read CT volume")
        print(f"error: {target}: cannot read CT volume", file=sys.stderr, flush=True)
        sys.exit(2)
    grandchild = None
    if mode == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                       "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"],
                                      start_new_session=True).pid
    else:
        def terminate(signum, frame):
            raise SystemExit(128 + signum)
        signal.signal(signal.SIGTERM, terminate)
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(b"half an image")
        emit("progress", fraction=0.5, message="writing", tmp=str(tmp), grandchild=grandchild)
        time.sleep(120)
        Path(tmp).write_bytes(b"a whole image")
    emit("done", outputs=[target])
''')


def write_atomic_child(folder: Path) -> Path:
    """Write the stand-in child module into `folder` (put `folder` on the job's PYTHONPATH)."""
    path = folder / "atomic_child.py"
    path.write_text(ATOMIC_CHILD)
    return path
