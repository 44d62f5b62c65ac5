"""The Registration panel's "Find pose" over slicer-core: the Logic runs the global pose search alone as a job
(`register --init-view VIEW --init-only`) and turns its candidates into transform nodes and a table, best first;
a result's confidence warning is read back for the panel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from registration_fixtures import carm_pose  # noqa: E402
from test_slicer_registration_panel import logic, module, scene  # noqa: E402,F401  (fixtures)

from XrayToDRRLib import mrml  # noqa: E402
from XrayToDRRLib.pose import Pose  # noqa: E402
from XrayToDRRLib.simulate import simulate_xray  # noqa: E402
from XrayToDRRLib.volumes import center_ras  # noqa: E402
from XrayToDRRLib.xray import Xray  # noqa: E402
from XrayToDRRRegistrationLib import mrml as review  # noqa: E402
from XrayToDRRRegistrationLib.evaluate import bone_points, pose_errors  # noqa: E402


def column(table, name: str) -> list:
    t = table.GetTable()
    array = t.GetColumnByName(name)
    return [array.GetValue(r) for r in range(t.GetNumberOfRows())]


def test_find_pose_gives_a_transform_per_candidate_best_first(logic, scene, small_ct):
    ct = mrml.sitk_to_volume_node(small_ct, scene, "CT")
    true = carm_pose(small_ct, "lateral", 700.0, (5.0, 4.0), 6.0, (10.0, 5.0), size=48)
    image = simulate_xray(small_ct, true, seed=2, device="cpu")
    xray = mrml.xray_to_volume_node(Xray(image, true.sdd, true.delx, true.dely), scene, "X-ray", true)

    nodes, table = logic.findPose(xray, ct, view="lateral", topK=3)

    folder = Path(nodes[0].GetAttribute("XrayToDRR.registrationFolder"))
    listed = json.loads((folder / "candidates.json").read_text())["candidates"]
    assert len(nodes) == len(listed) == table.GetNumberOfRows() >= 2
    for rank, (node, cand) in enumerate(zip(nodes, listed), start=1):
        pose = mrml.pose_from_transform_node(node)
        assert np.allclose(pose.world_from_camera, Pose.from_dict(cand["pose"]).world_from_camera, atol=1e-6)
        assert node.GetAttribute("XrayToDRR.candidateRank") == str(rank) and f"candidate {rank}" in node.GetName()
    scores = column(table, "refined_score")
    assert scores == sorted(scores, reverse=True) and column(table, "view")[0] == "lateral"
    best = mrml.pose_from_transform_node(nodes[0])
    assert pose_errors(true, best, bone_points(small_ct), center_ras(small_ct))["mtre_mm"] < 25.0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["stopped"] == "init_only" and metrics["initializer"]["initializer"] == "--init-view lateral"


def test_find_pose_runs_the_search_alone_with_the_verbs_defaults(logic, scene, small_ct):
    ct = mrml.sitk_to_volume_node(small_ct, scene, "CT")
    pose = carm_pose(small_ct, "ap", 600.0, size=24)
    xray = mrml.xray_to_volume_node(Xray(np.zeros((24, 24), np.float32), pose.sdd, pose.delx, pose.dely), scene,
                                    "X-ray", pose)
    task = logic.findPose(xray, ct, wait=False)
    task.cancel()
    command = task.job.command[3:]
    assert command[command.index("--init-view") + 1] == "auto" and "--init-only" in command
    assert command[command.index("--search-top-k") + 1] == "4"
    for default in ("--search-angle", "--search-distance", "--search-shift", "--no-search"):
        assert default not in command  # left to the verb


def test_confidence_and_candidates_are_read_back_with_clear_errors(tmp_path, scene):
    (tmp_path / "metrics.json").write_text(json.dumps({"confidence": {"confidence": 0.2, "warning": "low ..."}}))
    assert review.confidence_of(tmp_path) == (0.2, "low ...")
    assert review.confidence_of(tmp_path / "missing") == (None, "")
    with pytest.raises(Exception, match="no candidates.json"):
        review.read_candidates(tmp_path)
