"""Capture and restore a process's random generators (torch, numpy, python, CUDA) as tensors and plain values, so
a training checkpoint holding them loads with `torch.load(..., weights_only=True)` and resumes bit for bit."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """This process's random states: {"torch": ByteTensor, "numpy": {...}, "python": {...}, "cuda": [ByteTensor...]}
    ("cuda" only once CUDA is in use)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() captured (tensors may come back on any device from a checkpoint)."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if state.get("cuda") and torch.cuda.is_available():
        states = state["cuda"][: torch.cuda.device_count()]  # a machine with fewer GPUs restores the ones it has
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in states])
