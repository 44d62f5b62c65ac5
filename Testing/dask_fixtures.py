"""Stand-in tasks for test_registration_dask.py: Dask workers import this module by name (its folder is on their
sys.path, inherited from the test process), so it imports nothing heavy at the top."""

import os
from pathlib import Path


def crashing_or_failing_task(progress, path, out_dir, *args):
    """The real task, except that X-rays named lost* kill their worker the first time (as the out-of-memory killer
    would) and broken* always raise; each attempt is noted in a file beside the output folder."""
    name = Path(path).name
    attempts = Path(out_dir).parent.parent / f"{Path(path).stem}.attempts"
    with open(attempts, "a") as f:
        f.write("x")
    if name.startswith("lost") and attempts.read_text() == "x":
        os._exit(3)
    if name.startswith("broken"):
        raise RuntimeError("a persistent failure")
    from XrayToDRRRegistrationLib.dask_batch import register_task

    return register_task(progress, path, out_dir, *args)


def loaded_modules():
    """Where this worker's project modules come from, and how many Sessions it holds."""
    import XrayToDRRLib
    import XrayToDRRRegistrationLib
    from XrayToDRRLib import dask_cluster

    return {"lib": XrayToDRRLib.__file__, "registration": XrayToDRRRegistrationLib.__file__,
            "cached": len(dask_cluster._cache)}


def waits_for_cancel(progress, marker):
    """Reports progress until the caller cancels it, then notes what stopped it in `marker`."""
    import time

    try:
        for _ in range(1200):
            progress.update(0.5, "waiting")
            time.sleep(0.05)
    except Exception as e:
        Path(marker).write_text(type(e).__name__)
        raise
    Path(marker).write_text("never cancelled")
