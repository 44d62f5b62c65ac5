"""FastRenderer's backends: the choice, the triton backend (nanodrr's fused kernel) against the torch backend, and
CPU against CUDA (run on a GPU machine; skipped without one)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.fast_render import FastRenderer
from XrayToDRRLib.pose import perturb, standard_view
from XrayToDRRLib.volumes import center_ras

HAS_TRITON = all(importlib.util.find_spec(name) for name in ("triton", "nanodrr"))
HERE = Path(__file__).parent


def ncc(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_auto_never_picks_triton_on_cpu_and_triton_needs_cuda(small_ct, monkeypatch):
    from XrayToDRRLib import numba_render

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert FastRenderer(small_ct, device="cpu").backend == ("numba" if numba_render.available() else "torch")
    with pytest.raises(InputError, match="triton backend needs a CUDA GPU"):
        FastRenderer(small_ct, device="cpu", backend="triton")
    with pytest.raises(InputError, match="unknown backend 'metal'"):
        FastRenderer(small_ct, device="cpu", backend="metal")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="triton and nanodrr are not installed")
def test_triton_backend_matches_torch_backend_under_the_interpreter(small_ct_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, str(HERE / "fused_interpreted.py"), str(small_ct_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    ours, fused = np.array(result["torch"]), np.array(result["triton"])
    assert result["backend"] == "triton"
    assert ncc(ours, fused) >= 0.999
    assert fused.mean() == pytest.approx(ours.mean(), rel=0.01)
    # The sample count depends on the level, never on the pose: a batch is exactly its poses one by one.
    assert np.array_equal(fused, np.array(result["one_by_one"]))
    analytic, numeric = np.array(result["analytic"]), np.array(result["numeric"])
    assert np.linalg.norm(analytic - numeric) < 0.1 * np.linalg.norm(numeric)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_cuda_backends_match_the_cpu(small_ct):
    centre = center_ras(small_ct)
    poses = [perturb(standard_view(v, centre, 1020, 96, 80, 4.0), [5, -3, 4], [6, 8, -10], centre)
             for v in ("ap", "lateral")]
    cpu = FastRenderer(small_ct, device="cpu")
    auto = FastRenderer(small_ct, device="cuda")
    assert auto.backend == ("triton" if HAS_TRITON else "torch")
    cuda_torch = FastRenderer(small_ct, device="cuda", backend="torch")
    for mode in ("preview", "hq", "full"):
        reference = cpu.render(poses, mode)
        for engine in (auto, cuda_torch):
            image = engine.render(poses, mode)
            assert ncc(image, reference) >= 0.999, (mode, engine.backend)
            assert image.mean() == pytest.approx(reference.mean(), rel=0.01)

    def gradient(engine):
        m = torch.as_tensor(poses[0].world_from_camera[None], dtype=torch.float32, device=engine.device)
        m.requires_grad_(True)
        engine.render_tensor(m, poses[0], 1, step_factor=0.5).square().mean().backward()
        return m.grad[0, :3, 3].cpu().numpy()

    expected = gradient(cpu)
    for engine in (auto, cuda_torch):
        assert np.linalg.norm(gradient(engine) - expected) < 0.05 * np.linalg.norm(expected), engine.backend
