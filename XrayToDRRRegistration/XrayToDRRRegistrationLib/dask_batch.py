"""A folder of X-rays on a Dask distributed cluster (`xraytodrr register DIR ... --dask ADDRESS`).

The same shape as parallel.py's pool: every worker builds one Session (the CT, mask, warp and the fast renderer's
pyramid) the first time it gets an X-ray of this run's options and keeps it for the next ones
(XrayToDRRLib.dask_cluster.worker_cached); each X-ray is one task writing its result folder atomically into the
shared output folder; the caller gathers the summary rows in file order and writes summary.csv. Bad input of one
X-ray (InputError) is its failed row at once; any other error, or a worker lost while registering it, has it run
once more, and what still fails is a failed row: the others go on. Paths travel as absolute paths, since workers
have their own working folders.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from XrayToDRRLib.dask_cluster import cache_key, map_in_order, worker_cached
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.progress import Progress

from .batch import RegistrationOptions, Session, _check_output, failed_row
from .initialize import Initializer


def check_run(options: RegistrationOptions, many: bool) -> None:
    """What --dask cannot be combined with (checked before anything is read or written)."""
    if not many:
        raise InputError("--dask distributes a folder or several X-rays; one X-ray runs here", None,
                         "drop --dask, or give a folder of X-rays")
    if "," in str(options.device):
        raise InputError(f"--dask with several devices (--device {options.device}): the cluster's workers are "
                         "the devices", None,
                         "give one --device (auto: each worker takes its own GPU, else its CPU), and start one "
                         "worker per GPU (README: Many X-rays on a cluster)")


def absolute(options: RegistrationOptions, init: Initializer) -> tuple[RegistrationOptions, Initializer]:
    """The options and initialiser with every file as an absolute path (a worker's folder is not ours)."""
    files = {name: str(Path(getattr(options, name)).absolute()) for name in ("volume", "mask", "warp")
             if getattr(options, name)}
    if init.kind in ("pose", "landmarks", "model") and init.value:
        init = dataclasses.replace(init, value=str(Path(init.value).absolute()))
    return dataclasses.replace(options, **files), init


def register_task(progress: Progress, path: str, out_dir: str, options: RegistrationOptions,
                  init: Initializer) -> dict:
    """One X-ray, on a worker: its summary row (bad input: a failed row; anything else raises to be retried)."""
    try:  # bad input here too (e.g. a CT the worker cannot see): a failed row, not retried
        with worker_cached(cache_key("register", options, init), lambda: Session(options, init)) as session:
            _check_output(Path(out_dir), many=False)  # never replace a folder that is not an earlier result
            return session.register(Path(path), Path(out_dir), progress)
    except InputError as e:
        return failed_row(Path(path), str(e))


def register_on_cluster(client, files: list[Path], out_dirs: list[Path], options: RegistrationOptions,
                        init: Initializer, progress: Progress, task=register_task) -> list[dict]:
    """Register files[i] into out_dirs[i] on the cluster of `client` (closed when done); the summary rows in file
    order. `task` is the workers' function (tests pass one that fails)."""
    options, init = absolute(options, init)

    def failed(index: int, error: BaseException) -> dict:
        # the same text as register_one's for the errors it reports, the exception's type for the others
        plain = isinstance(error, (InputError, RuntimeError, ValueError, OSError))
        return finished(index, failed_row(files[index], str(error) if plain else f"{type(error).__name__}: {error}"))

    def finished(index: int, row: dict) -> dict:
        # a worker names the files by their absolute paths: the rows name them as given, like the in-process batch
        row = {**row, "xray": str(files[index]), "folder": str(out_dirs[index]) if row.get("folder") else ""}
        if row["status"] == "failed":
            progress.log(f"failed: {files[index].name}: {row['error']}")
        return row

    try:
        tasks = [(str(Path(f).absolute()), str(Path(d).absolute()), options, init) for f, d in zip(files, out_dirs)]
        return map_in_order(client, task, tasks, [f.name for f in files], progress, failed, finished)
    finally:
        client.close()
