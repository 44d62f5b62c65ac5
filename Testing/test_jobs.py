"""jobs.Job / run_job: real `python -m XrayToDRRLib drr` children run to the end, fail on bad input, and cancel
without leaving half-written images, temporary files or processes behind; atomic.atomic_path on its own."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from job_fixtures import (CHILD_ENV, alive, drr_args, temporary_files, write_atomic_child, write_pose_ring,
                          write_tiny_ct)
from XrayToDRRLib.atomic import atomic_path
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.jobs import Job, JobError, run_job

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("jobs")
    return {"root": root, "ct": write_tiny_ct(root / "ct.nii.gz"), "poses": write_pose_ring(root / "poses", 300)}


def read_png(path: Path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_drr_job_runs_to_done_with_increasing_progress(workspace):
    root, poses = workspace["root"], workspace["poses"][:60]
    out = root / "done"
    events = []
    job = run_job(drr_args(workspace["ct"], poses, out, root), on_event=events.append, cwd=root, env=CHILD_ENV,
                  outputs=[out])

    assert job.state == "done" and job.returncode == 0 and job.error is None
    assert job.command[1:3] == ["-m", "XrayToDRRLib"] and job.command[-2:] == ["--progress", "jsonl"]
    # `python -m XrayToDRRLib drr ... --progress jsonl` prints nothing but JSON lines on stdout.
    assert events and not [e for e in events if e.get("raw")]
    assert {e["event"] for e in events} <= {"progress", "log", "done"}
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert len(set(fractions)) >= 3
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert events[-1]["event"] == "done" and job.fraction == 1.0
    written = [e["message"] for e in events if e["event"] == "log"]
    assert len(written) == 60 and all(m.startswith("wrote ") for m in written)

    expected = [out / f"{p.stem}.png" for p in poses]
    assert [root / p for p in job.outputs] == expected
    assert sorted(out.iterdir()) == expected and not temporary_files(out)
    image = read_png(expected[0])
    assert image.shape == (64, 64) and image.max() > 10000 and image.min() < image.max()

    # cancel after the end changes nothing
    before = {p: p.stat().st_mtime_ns for p in expected}
    job.cancel(grace=0.5)
    job.cancel(wait=True)
    assert job.state == "done" and job.returncode == 0 and not job.cancel_requested
    assert {p: p.stat().st_mtime_ns for p in expected} == before


def test_bad_input_fails_with_a_message_naming_the_file(workspace):
    root = workspace["root"]
    broken = root / "broken_ct.nii.gz"
    broken.write_bytes(b"this is not a NIfTI file")
    out = root / "bad"
    job = Job(drr_args(broken, workspace["poses"][:3], out, root), cwd=root, env=CHILD_ENV, outputs=[out])
    assert job.state in ("running", "failed") and job.poll() is not None  # non-blocking from the start
    assert job.wait(90) == "failed"

    assert job.returncode == 2
    assert "broken_ct.nii.gz" in job.error and "cannot read CT volume" in job.error
    errors = [e for e in job.poll() if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["message"] == job.error
    assert "broken_ct.nii.gz" in job.stderr and job.outputs == []
    assert not out.exists() or not any(out.iterdir())


def test_cancelled_drr_job_leaves_whole_images_only_and_no_process(workspace):
    root, poses = workspace["root"], workspace["poses"]
    out = root / "cancelled"
    job = Job(drr_args(workspace["ct"], poses, out, root), cwd=root, env=CHILD_ENV, outputs=[out])
    events = []
    deadline = time.monotonic() + 90
    # Cancel at the first progress event that reports work done (so some images exist and one is being written).
    while not any(e["event"] == "progress" and e["fraction"] > 0 for e in events):
        assert job.running and time.monotonic() < deadline, job.stderr
        events += job.poll()
        time.sleep(0.01)
    tree = job.pids + [p.pid for p in _children(job.pid)]
    t0 = time.monotonic()
    job.cancel(grace=10.0)
    assert job.cancel_requested and job.wait(30) == "cancelled"
    took = time.monotonic() - t0
    events += job.poll()

    assert job.state == "cancelled" and job.error == "cancelled"
    assert job.returncode == (143 if os.name != "nt" else 1)  # POSIX: SIGTERM -> SystemExit, no SIGKILL needed
    assert took < 10.0
    assert not [e for e in events if e["event"] == "done"] and job.outputs == []
    assert not [pid for pid in set(tree + job.pids) if alive(pid)]

    files = sorted(out.iterdir())
    assert not temporary_files(out)
    assert 0 < len(files) < len(poses)
    # The images on disk are exactly the first ones, each complete: the one being written when the job was
    # stopped is not there. At most one image may have been renamed into place before its "wrote" line.
    assert files == [out / f"{p.stem}.png" for p in poses[:len(files)]]
    logged = [e["message"].removeprefix("wrote ") for e in events if e["event"] == "log"]
    assert len(files) - 1 <= len(logged) <= len(files)
    assert all((root / m).exists() for m in logged)
    for f in files:
        assert read_png(f).shape == (64, 64)

    job.cancel(wait=True)
    job.cancel(grace=0.0)  # idempotent
    assert job.state == "cancelled" and job.returncode == (143 if os.name != "nt" else 1)


def test_atomic_path_leaves_nothing_when_the_writer_raises(tmp_path):
    target = tmp_path / "drr.png"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(b"half")
            assert tmp.parent == tmp_path and tmp.name.startswith(".drr.png.tmp-") and tmp.name.endswith(".png")
            raise RuntimeError("renderer crashed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(b"whole")
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"whole"


def _start_atomic_child(tmp_path: Path, mode: str, **kwargs) -> tuple[Job, dict, Path]:
    write_atomic_child(tmp_path)
    target = tmp_path / "out" / "image.png"
    job = Job([mode, target], module="atomic_child", env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path, **kwargs)
    deadline = time.monotonic() + 30
    while True:
        ready = [e for e in job.poll() if e["event"] == "progress"]
        if ready:
            return job, ready[0], target
        assert job.running and time.monotonic() < deadline, job.stderr
        time.sleep(0.01)


@posix_only
def test_sigterm_in_the_middle_of_a_write_leaves_nothing(tmp_path):
    job, ready, target = _start_atomic_child(tmp_path, "term")  # no outputs declared: no fallback cleanup
    tmp = Path(ready["tmp"])
    assert tmp.read_bytes() == b"half an image" and not target.exists()

    job.cancel(grace=10.0, wait=True)
    assert job.state == "cancelled" and job.returncode == 143  # the child exited on SystemExit, not SIGKILL
    assert not tmp.exists() and not target.exists() and list(target.parent.iterdir()) == []
    assert not alive(job.pid)


@posix_only
def test_cancel_kills_the_whole_tree_and_removes_what_sigkill_left(tmp_path, request):
    job, ready, target = _start_atomic_child(tmp_path, "ignore", outputs=[Path("out") / "image.png"])
    tmp, grandchild = Path(ready["tmp"]), ready["grandchild"]
    request.addfinalizer(lambda: _kill(grandchild))  # should this test fail, leave no sleeper behind
    assert tmp.exists() and alive(grandchild)

    t0 = time.monotonic()
    job.cancel(grace=0.5, wait=True)
    assert 0.5 <= time.monotonic() - t0 < 10.0
    assert job.state == "cancelled" and job.returncode == -9  # it ignored SIGTERM
    assert grandchild in job.pids  # found through psutil although it left the process group
    assert not [pid for pid in job.pids if alive(pid)] and not alive(grandchild)
    assert not tmp.exists() and not target.exists() and list(target.parent.iterdir()) == []

    job.cancel()  # idempotent
    assert job.wait(0) == "cancelled"


def test_run_job_raises_the_childs_message(tmp_path):
    write_atomic_child(tmp_path)
    target = tmp_path / "ct.nii.gz"
    events = []
    with pytest.raises(JobError) as caught:
        run_job(["fail", target, "--progress", "jsonl"], on_event=events.append, module="atomic_child",
                env={"PYTHONPATH": str(tmp_path)}, python=sys.executable)
    e = caught.value
    assert str(e) == f"{target}: cannot read CT volume" and e.returncode == 2 and e.state == "failed"
    assert e.job.command.count("--progress") == 1
    assert events == [{"event": "log", "message": "a line that is not JSON", "raw": True},
                      {"event": "error", "message": str(e)}]


def _children(pid: int):
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill(pid: int) -> None:
    import psutil

    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass


def test_a_missing_python_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as caught:
        Job(["drr", "--help"], python=str(tmp_path / "no-such-python"))
    assert "no-such-python" in str(caught.value)
