"""How far to trust a registration: a confidence in [0, 1] and a warning when the result is probably wrong.

Three pieces of evidence, each mapped to [0, 1] by a fixed ramp (the ramps are properties of the similarity
measures, not of any CT; `bench/registration.py` reports how often the warning fires on failures and on successes):

- `similarity`: the final similarity between the X-ray and the DRR at a 64-px probe (the measure registration
  optimised). Unrelated images score near 0; images of the same anatomy in a different pose still score well
  above 0 (bones and body outline overlap), hence the ramp from `SIMILARITY_RAMP[0]` to `SIMILARITY_RAMP[1]`.
- `sharpness`: how much the similarity drops when the pose moves by 2 degrees about each camera axis and 4 mm
  across the beam (the curvature at the optimum; depth is left out: one view pins it weakly whatever the
  answer). A wrong pose in a flat or noisy landscape barely changes; the ramp ends at `SHARPNESS_RAMP[1]`.
- `margin`: the gap between the best and the runner-up candidate of the global search that projects
  differently (more than `DISTINCT_MM` apart on the detector), after both were refined: two different answers
  that explain the X-ray equally well (typically AP versus PA) mean either may be wrong. 1 without a search.

The probe compares the whole exposed field, the rays that pass anatomy the CT lacks included (registration leaves
those out, see XrayToDRRLib.truncation), against the CT with the body continued past its scan range's ends
(`truncation.continued`). A probe without those rays scored a 24 mm abdomen failure 1.00 (it compares only what
the wrong pose left in view; bench, 2026-12-07 night); against the CT alone (air past its ends) it flagged 4 of 5
abdomen successes, whose X-rays show the patient beyond the CT.

confidence = similarity x sharpness x margin factors; below `WARN_BELOW` the result carries a warning. The ramps
ends are round numbers chosen after looking at four development cases (chest and pelvis, bench seed 0: three
successes with sharpness 0.020-0.024, one failure at 0.012); the bench reports its flag rates on other seeds.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from XrayToDRRLib.fast_render import FastRenderer
from XrayToDRRLib.pose import Pose
from XrayToDRRLib.truncation import continued, field_width

from . import similarity as sim
from .preprocess import PreparedXray, downsampled
from .search import sphere_points

PROBE_PIXELS = 64
PROBE_ROT_DEG = 2.0
PROBE_SHIFT_MM = 4.0
SIMILARITY_RAMP = (0.3, 0.7)
SHARPNESS_RAMP = (0.005, 0.02)
MARGIN_RAMP = (0.0, 0.01)
DISTINCT_MM = 10.0
WARN_BELOW = 0.5
BEYOND_CT_NOTE = 0.2  # a warning says how much of the X-ray lies beyond the CT's scan range from this share on


def _ramp(value: float, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(np.clip((value - lo) / (hi - lo), 0.0, 1.0)) if math.isfinite(value) else 0.0


def projection_distance(a: Pose, b: Pose, center, radius: float = 100.0) -> float:
    """Mean distance (mm, on pose `a`'s detector) between where the two poses project points on a sphere of
    `radius` about `center`: how differently two answers place the anatomy in the image."""
    pts = sphere_points(center, radius)
    pa, pb = a.project(pts), dataclasses.replace(a, world_from_camera=b.world_from_camera).project(pts)
    return float(np.linalg.norm((pa - pb) * [a.delx, a.dely], axis=1).mean())


def probe(renderer: FastRenderer, prepared: PreparedXray, pose: Pose, center, similarity: str,
          continue_cut_faces: bool = True) -> tuple[float, list]:
    """(similarity at `pose`, drop per probed degree of freedom) at about PROBE_PIXELS along the longer side; with
    `continue_cut_faces`, against the CT with the body continued past its cut faces (see the module's note)."""
    from .register import STAGE_HALF_LEVELS, corrected

    small, target, mask = downsampled(prepared, PROBE_PIXELS, renderer.device)
    start = torch.as_tensor(pose.world_from_camera, dtype=torch.float64)
    c = torch.as_tensor(np.asarray(center, dtype=np.float64))
    zero = torch.zeros(3, dtype=torch.float64)
    moves = [(zero, zero)]
    for axis in range(3):
        for sign in (1.0, -1.0):
            w = zero.clone()
            w[axis] = sign * math.radians(PROBE_ROT_DEG)
            moves.append((w, zero))
    for axis in range(2):
        for sign in (1.0, -1.0):
            t = zero.clone()
            t[axis] = sign * PROBE_SHIFT_MM
            moves.append((zero, t))
    mats = torch.stack([corrected(start, c, w, t) for w, t in moves]).float().to(renderer.device)
    at_pose = dataclasses.replace(small, world_from_camera=pose.world_from_camera)
    level, _ = renderer.plan(at_pose, "hq", STAGE_HALF_LEVELS)
    if continue_cut_faces:
        renderer = continued(renderer, 2 * field_width(at_pose, center), [level])
    with torch.no_grad():
        drrs = renderer.render_tensor(mats, small, level)[:, None]
        n = drrs.shape[0]
        scores = sim.get(similarity)(target.expand(n, -1, -1, -1), drrs,
                                     None if mask is None else mask.expand(n, -1, -1, -1)).cpu().numpy()
    s0 = float(scores[0])
    pairs = scores[1:].reshape(-1, 2)
    drops = [float(s0 - p.mean()) for p in pairs]
    return s0, drops


def assess(renderer: FastRenderer, prepared: PreparedXray, pose: Pose, center, similarity: str,
           candidates: list | None = None, beyond_ct: float = 0.0, continue_cut_faces: bool = True) -> dict:
    """The confidence of a registration ending at `pose` (candidates: the search's refined candidates, best
    first, each with `refined_pose` and `refined_score`; `beyond_ct`: the share of the field whose rays pass
    anatomy beyond the CT's scan range, which the warning names)."""
    score, drops = probe(renderer, prepared, pose, center, similarity, continue_cut_faces)
    sharpness = float(np.median(drops))
    margin, runner_up = None, None
    if candidates and len(candidates) > 1:
        best = candidates[0]
        for other in candidates[1:]:
            if projection_distance(best.refined_pose, other.refined_pose, center) > DISTINCT_MM:
                margin, runner_up = float(best.refined_score - other.refined_score), other
                break
    factors = {"similarity": _ramp(score, SIMILARITY_RAMP), "sharpness": _ramp(sharpness, SHARPNESS_RAMP),
               "margin": 1.0 if margin is None else _ramp(margin, MARGIN_RAMP)}
    confidence = float(np.prod(list(factors.values())))
    result = {"confidence": round(confidence, 4), "similarity": round(score, 5), "sharpness": round(sharpness, 5),
              "drops": [round(d, 5) for d in drops], "margin": None if margin is None else round(margin, 5),
              "runner_up": None if runner_up is None else runner_up.view, "factors":
              {k: round(v, 4) for k, v in factors.items()}, "beyond_ct": round(float(beyond_ct), 3),
              "warning": warning(confidence, factors, beyond_ct)}
    return result


def warning(confidence: float, factors: dict, beyond_ct: float = 0.0) -> str:
    """A sentence saying why the result is probably wrong ("" when it is trusted)."""
    if confidence >= WARN_BELOW:
        return ""
    reasons = {"similarity": "the DRR matches the X-ray poorly (wrong patient, region or view?)",
               "sharpness": "the similarity barely changes around the pose (no well-defined optimum)",
               "margin": "another, different pose explains the X-ray about as well (e.g. AP versus PA)"}
    weakest = min(factors, key=factors.get)
    beyond = (f"; {beyond_ct:.0%} of the X-ray shows the patient beyond the CT's scan range, which no DRR of this CT "
              f"can match (a CT covering more of the field would help)") if beyond_ct >= BEYOND_CT_NOTE else ""
    return (f"low confidence {confidence:.2f}: {reasons[weakest]}{beyond}; review the pose before using it "
            f"(e.g. pick another candidate, or initialise from landmarks)")
