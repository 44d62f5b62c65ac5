"""A folder over several devices (one worker process each): the same poses and summary.csv as in-process, a bad
X-ray or a crashed worker reported as failed while the others succeed, and --device validated up front."""

import csv
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from parallel_fixtures import crashing_worker, idle_worker
from registration_fixtures import listing, run_ok, xray_folder

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.pose import load_pose
from XrayToDRRLib.progress import Progress
from XrayToDRRRegistrationLib import parallel
from XrayToDRRRegistrationLib import results as R
from XrayToDRRRegistrationLib.batch import RegistrationOptions, parse_devices
from XrayToDRRRegistrationLib.initialize import Initializer

QUICK = ("--init-view", "ap", "--max-n-itrs", "4", "--scales", "1", "--renderer", "fast")


@pytest.fixture(scope="module")
def xrays(tmp_path_factory, small_ct):
    return xray_folder(tmp_path_factory.mktemp("parallel") / "xrays", small_ct)


def summary(folder: Path) -> list[dict]:
    with open(folder / R.SUMMARY, newline="") as f:
        return list(csv.DictReader(f))


def test_two_cpu_workers_match_the_in_process_run(xrays, small_ct_path, tmp_path):
    run_ok("register", xrays, "--volume", small_ct_path, "-o", tmp_path / "one", *QUICK, "--device", "cpu",
           "--progress", "none")
    result = run_ok("register", xrays, "--volume", small_ct_path, "-o", tmp_path / "two", *QUICK,
                    "--device", "cpu,cpu", "--progress", "jsonl")
    one, two = summary(tmp_path / "one"), summary(tmp_path / "two")
    assert [r["xray"] for r in two] == [r["xray"] for r in one] == [str(p) for p in sorted(xrays.glob("*.dcm"))]
    assert [r["status"] for r in two] == ["ok", "failed", "ok"]  # the corrupt X-ray fails, the others go on
    for a, b in zip(one, two):
        assert (a["status"], a["error"], a["iterations"], a["stopped"]) == (
            b["status"], b["error"], b["iterations"], b["stopped"])
        assert b["folder"] == (str(tmp_path / "two" / Path(b["xray"]).stem) if b["status"] == "ok" else "")
        if a["status"] == "ok":
            assert float(a["ncc"]) == pytest.approx(float(b["ncc"]), abs=1e-3)
            pa, pb = (load_pose(Path(r["folder"]) / R.POSE).world_from_camera for r in (a, b))
            assert np.abs(pa[:3, :3] - pb[:3, :3]).max() < 1e-3 and np.abs(pa[:3, 3] - pb[:3, 3]).max() < 0.05
    assert "b_corrupt.dcm" in two[1]["xray"] and two[1]["error"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["a_ap", "c_lateral", R.SUMMARY]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert any(m.startswith("failed: b_corrupt.dcm") for m in logs)
    assert any(m.startswith("a_ap.dcm: done: NCC") for m in logs)  # the workers' log lines, named by X-ray
    assert events[-1]["event"] == "done" and len(events[-1]["outputs"]) == 3


def test_a_crashed_worker_fails_its_xray_and_the_other_goes_on(xrays, small_ct_path, tmp_path):
    files = [xrays / "a_ap.dcm", tmp_path / "crash.dcm", xrays / "c_lateral.dcm"]
    files[1].write_bytes(files[0].read_bytes())
    options = RegistrationOptions(volume=str(small_ct_path), max_n_itrs=4, scales="1", renderer="fast",
                                  device="cpu,cpu")
    logs = []
    progress = Progress()
    progress.log = logs.append
    rows = parallel.register_in_workers(files, [tmp_path / "out" / p.stem for p in files], options,
                                        Initializer("view", "ap"), parse_devices("cpu,cpu"), progress,
                                        target=crashing_worker)
    assert [r["xray"] for r in rows] == [str(p) for p in files]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "stopped (exit code 3) while registering it" in rows[1]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_ap", "c_lateral"]  # no half-written folder


def test_an_interrupted_parent_stops_its_workers(tmp_path):
    class CtrlC(Progress):
        def log(self, message):  # when the first X-ray is handed out
            raise KeyboardInterrupt

    files = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        parallel.register_in_workers(files, [tmp_path / "a", tmp_path / "b"], None, None, parse_devices("cpu,cpu"),
                                     CtrlC(), target=idle_worker)
    assert not multiprocessing.active_children() and time.monotonic() - started < 60


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend this machine has two CUDA GPUs (only parsing is tested: nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_device_lists(two_gpus):
    assert parse_devices("auto") == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert parse_devices("cuda:1, cuda:0") == [torch.device("cuda", 1), torch.device("cuda", 0)]
    assert parse_devices("cpu,cpu") == [torch.device("cpu")] * 2
    with pytest.raises(InputError, match="has 2 CUDA GPUs") as e:
        parse_devices("cuda:0,cuda:3")
    assert "--device cuda:0,cuda:1 or auto" in str(e.value)


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse_devices("auto") == [torch.device("cpu")]


@pytest.mark.parametrize("device, message", [("gpu", "unknown device 'gpu'"), ("cpu,", "unknown device ''"),
                                             ("auto,cpu", "auto cannot be listed"), ("cuda:3", "has 2 CUDA GPUs")])
def test_a_bad_device_exits_2_and_writes_nothing(xrays, small_ct_path, tmp_path, two_gpus, device, message):
    before = listing(xrays)
    result = run_cli("register", xrays, "--volume", small_ct_path, "-o", tmp_path / "out", *QUICK,
                     "--device", device, "--progress", "none")
    assert result.exit_code == 2 and result.output.startswith("error:") and message in result.output, result.output
    assert "--device" in result.output  # the fix names the option
    assert not (tmp_path / "out").exists() and listing(xrays) == before


def test_a_single_xray_uses_the_first_device_in_process(xrays, small_ct_path, tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "register_in_workers", None)  # any worker process would fail here
    run_ok("register", xrays / "a_ap.dcm", "--volume", small_ct_path, "-o", tmp_path / "out", *QUICK,
           "--device", "cpu,cpu", "--progress", "none")
    assert (tmp_path / "out" / R.POSE).exists()
