"""A folder of X-rays on a Dask cluster (a LocalCluster of two CPU worker processes): the same poses and
summary.csv as in-process; one Session per worker; a failing X-ray, a lost worker and a transient error; a bad
address exits 2 and writes nothing; `pairs --dask` gives the same pairs as without."""

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import run_cli
from dask_fixtures import crashing_or_failing_task, loaded_modules, waits_for_cancel
from registration_fixtures import listing, run_ok, xray_folder

from XrayToDRRLib import dask_cluster
from XrayToDRRLib.pose import load_pose
from XrayToDRRLib.progress import Progress
from XrayToDRRRegistrationLib import results as R
from XrayToDRRRegistrationLib.batch import RegistrationOptions
from XrayToDRRRegistrationLib.dask_batch import register_on_cluster
from XrayToDRRRegistrationLib.initialize import Initializer

distributed = pytest.importorskip("distributed")

QUICK = ("--init-view", "ap", "--no-search", "--max-n-itrs", "4", "--scales", "1", "--renderer", "fast",
         "--device", "cpu")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    import dask

    # a worker lost while registering an X-ray: rerun once elsewhere, then that X-ray fails
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as local:
            yield local


@pytest.fixture(scope="module")
def xrays(tmp_path_factory, small_ct):
    return xray_folder(tmp_path_factory.mktemp("dask") / "xrays", small_ct)


@pytest.fixture(scope="module")
def runs(xrays, small_ct_path, cluster):
    """The folder registered in-process and on the cluster, and the cluster run's JSON-lines events."""
    out = xrays.parent
    run_ok("register", xrays, "--volume", small_ct_path, "-o", out / "here", *QUICK, "--progress", "none")
    result = run_ok("register", xrays, "--volume", small_ct_path, "-o", out / "cluster", *QUICK,
                    "--dask", cluster.scheduler_address, "--progress", "jsonl")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return out / "here", out / "cluster", events


def summary(folder: Path) -> list[dict]:
    with open(folder / R.SUMMARY, newline="") as f:
        return list(csv.DictReader(f))


def test_the_cluster_gives_the_in_process_poses_and_summary(runs, xrays, cluster):
    here, there, events = runs
    one, two = summary(here), summary(there)
    assert [r["xray"] for r in two] == [r["xray"] for r in one] == [str(p) for p in sorted(xrays.glob("*.dcm"))]
    assert [r["status"] for r in two] == ["ok", "failed", "ok"]  # the corrupt X-ray fails, the others go on
    assert list(two[0]) == list(one[0])  # the same columns
    for a, b in zip(one, two):
        assert (a["status"], a["error"], a["iterations"], a["stopped"]) == (
            b["status"], b["error"], b["iterations"], b["stopped"])
        assert b["folder"] == (str(there / Path(b["xray"]).stem) if b["status"] == "ok" else "")
        if a["status"] == "ok":
            assert float(a["ncc"]) == pytest.approx(float(b["ncc"]), abs=1e-3)
            pa, pb = (load_pose(Path(r["folder"]) / R.POSE).world_from_camera for r in (a, b))
            assert np.allclose(pa[:3, :3], pb[:3, :3], atol=1e-3) and np.allclose(pa[:3, 3], pb[:3, 3], atol=0.05)
    assert two[1]["error"] and "b_corrupt.dcm" in two[1]["xray"]
    assert sorted(p.name for p in there.iterdir()) == ["a_ap", "c_lateral", R.SUMMARY]  # no temporary folder left
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert any(m.startswith("failed: b_corrupt.dcm") for m in logs)
    assert any(m.startswith("a_ap.dcm: done: NCC") for m in logs)  # the workers' log lines, named by X-ray
    assert events[-1]["event"] == "done" and len(events[-1]["outputs"]) == 3
    # the workers ran this worktree's code and each built at most one Session (the CT read once per worker)
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        seen = client.run(loaded_modules)
    assert len(seen) == 2
    for info in seen.values():
        assert Path(info["lib"]).is_relative_to(ROOT) and Path(info["registration"]).is_relative_to(ROOT)
        assert info["cached"] <= 1
    assert sum(info["cached"] for info in seen.values()) >= 1


def test_an_interrupted_caller_cancels_the_running_tasks(cluster, tmp_path):
    class CtrlC(Progress):
        def update(self, fraction, message=""):  # once a task reports from its worker
            if "waiting" in message:
                raise KeyboardInterrupt

    markers = [tmp_path / "a", tmp_path / "b"]
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        with pytest.raises(KeyboardInterrupt):
            dask_cluster.map_in_order(client, waits_for_cancel, [(str(m),) for m in markers], ["a", "b"], CtrlC(),
                                      failed=lambda index, error: None)
    deadline = time.monotonic() + 30
    while not all(m.exists() for m in markers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [m.read_text() for m in markers] == ["Cancelled", "Cancelled"]  # both stopped at an update


@pytest.mark.parametrize("address, message", [("tcp://127.0.0.1:1", "no Dask scheduler answered within 1 s"),
                                              ("nonsense::", "invalid address")])
def test_a_bad_address_exits_2_and_writes_nothing(xrays, small_ct_path, tmp_path, monkeypatch, address, message):
    monkeypatch.setattr(dask_cluster, "CONNECT_TIMEOUT", 1.0)
    before = listing(xrays)
    result = run_cli("register", xrays, "--volume", small_ct_path, "-o", tmp_path / "out", *QUICK,
                     "--dask", address, "--progress", "none")
    assert result.exit_code == 2 and result.output.startswith("error: --dask") and message in result.output, \
        result.output
    assert "dask scheduler" in result.output  # the fix says how to start one
    assert not (tmp_path / "out").exists() and listing(xrays) == before


def test_without_dask_installed_the_error_says_how_to_install_it(xrays, small_ct_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # what `import distributed` meets when it is missing
    result = run_cli("register", xrays, "--volume", small_ct_path, "-o", tmp_path / "out", *QUICK,
                     "--dask", "tcp://127.0.0.1:1", "--progress", "none")
    assert result.exit_code == 2 and "xraytodrr[dask]" in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [(("--device", "cpu,cpu"), "several devices"),
                                           (("--pattern", "a_*"), None)])
def test_what_dask_cannot_be_combined_with(xrays, small_ct_path, tmp_path, args, message):
    target = xrays if message else xrays / "a_ap.dcm"  # one X-ray runs here
    result = run_cli("register", target, "--volume", small_ct_path, "-o", tmp_path / "out", *QUICK, *args,
                     "--dask", "tcp://127.0.0.1:1", "--progress", "none")
    assert result.exit_code == 2 and (message or "one X-ray runs here") in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_pairs_on_the_cluster_are_the_pairs_built_here(runs, cluster, tmp_path):
    import torch

    here, threads = runs[0], torch.get_num_threads()
    torch.set_num_threads(1)  # as on the workers: the fast renderer's sample counts are multiples of the threads
    try:
        run_ok("pairs", here, "-o", tmp_path / "here", "--min-confidence", "0", "--device", "cpu",
               "--progress", "none")
    finally:
        torch.set_num_threads(threads)
    run_ok("pairs", here, "-o", tmp_path / "there", "--min-confidence", "0", "--device", "cpu",
           "--dask", cluster.scheduler_address, "--progress", "none")
    assert (tmp_path / "here" / "pairs.csv").read_text() == (tmp_path / "there" / "pairs.csv").read_text()
    assert listing(tmp_path / "here") == listing(tmp_path / "there") == [
        "drr", "drr/a_ap.png", "drr/c_lateral.png", "pairs.csv", "xray", "xray/a_ap.png", "xray/c_lateral.png"]
    for sub in ("xray/a_ap.png", "drr/a_ap.png", "drr/c_lateral.png"):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / d / sub))).astype(float)
                for d in ("here", "there"))
        assert a.max() > 1000 and np.abs(a - b).max() <= 1  # 16-bit DRRs: the same up to rounding
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "there"]  # no temporary folder left


def test_pairs_with_a_bad_address_exits_2_and_writes_nothing(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(dask_cluster, "CONNECT_TIMEOUT", 1.0)
    result = run_cli("pairs", runs[0], "-o", tmp_path / "pairs", "--min-confidence", "0", "--dask", "tcp://127.0.0.1:1",
                     "--progress", "none")
    assert result.exit_code == 2 and "no Dask scheduler answered" in result.output, result.output
    assert listing(tmp_path) == []


def test_a_lost_worker_s_xray_is_rerun_and_a_failing_one_is_tried_twice(runs, xrays, small_ct_path, cluster,
                                                                          tmp_path):
    files = [tmp_path / "lost.dcm", tmp_path / "broken.dcm"]
    for f in files:
        f.write_bytes((xrays / "a_ap.dcm").read_bytes())
    options = RegistrationOptions(volume=str(small_ct_path), max_n_itrs=4, scales="1", renderer="fast", device="cpu",
                                  search=False)
    out = tmp_path / "out" / "folders"
    out.parent.mkdir()
    rows = register_on_cluster(distributed.Client(cluster.scheduler_address, set_as_default=False), files,
                               [out / p.stem for p in files], options, Initializer("view", "ap"), Progress(),
                               task=crashing_or_failing_task)
    assert [r["xray"] for r in rows] == [str(p) for p in files]
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[1]["error"] == "a persistent failure" and rows[1]["folder"] == ""
    attempts = {p.stem: (tmp_path / "out" / f"{p.stem}.attempts").read_text() for p in files}
    assert attempts == {"lost": "xx", "broken": "xx"}  # the worker died once, then the rerun; one retry
    here = load_pose(runs[0] / "a_ap" / R.POSE).world_from_camera
    pose = load_pose(out / "lost" / R.POSE).world_from_camera
    assert np.allclose(pose[:3, :3], here[:3, :3], atol=1e-3) and np.allclose(pose[:3, 3], here[:3, 3], atol=0.05)
    assert sorted(p.name for p in out.iterdir()) == ["lost"]  # nothing of the failed one
