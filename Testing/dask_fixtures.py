"""Stand-in tasks for test_registration_dask.py: Dask workers import this module by name (its folder is on their
sys.path, inherited from the test process), so it imports nothing heavy at the top."""

import os
from pathlib import Path


def crashing_or_flaky_task(progress, path, out_dir, *args):
    """The real task, except that X-rays named crash* kill their worker (as the out-of-memory killer would) and
    flaky* raise the first time (a marker beside the output folder remembers it)."""
    from XrayToDRRRegistrationLib.dask_batch import register_task

    name = Path(path).name
    if name.startswith("crash"):
        os._exit(3)
    marker = Path(out_dir).parent.parent / "flaky-tried"
    if name.startswith("flaky") and not marker.exists():
        marker.write_text("once")
        raise RuntimeError("a transient failure")
    return register_task(progress, path, out_dir, *args)


def loaded_modules():
    """Where this worker's project modules come from, and how many Sessions it holds."""
    import XrayToDRRLib
    import XrayToDRRRegistrationLib
    from XrayToDRRLib import dask_cluster

    return {"lib": XrayToDRRLib.__file__, "registration": XrayToDRRRegistrationLib.__file__,
            "cached": len(dask_cluster._cache)}
