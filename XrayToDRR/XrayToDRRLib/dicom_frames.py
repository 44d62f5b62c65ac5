"""The frames of one multi-frame DICOM as separate views: each frame's C-arm geometry, and which frames to take.

A rotational run (or a biplane or cine run whose C-arm moved) stores one image per frame and the positioner's
angle per frame in one of two ways:
- the legacy XA/RF Positioner Module, PS3.3 C.8.7.5.1.3 "Positioner Angle Increments": PositionerPrimaryAngle
  Increment (0018,1520) / PositionerSecondaryAngleIncrement (0018,1521) hold either ONE value, the (average) change
  per frame (frame k, from 0, at angle + k * increment), or one value PER FRAME, each an offset from the initial
  PositionerPrimaryAngle / SecondaryAngle (frame k at angle + increment[k]: offsets from the first angle, not
  cumulative steps; a file may also store absolute angles there with the angles 0);
- the enhanced XA/XRF per-frame functional groups: PerFrameFunctionalGroupsSequence items holding the X-Ray
  Positioner Macro (PS3.3 C.8.19.6.10: PositionerPositionSequence > PositionerPrimaryAngle / SecondaryAngle; in
  the shared groups it means the C-arm did not move) and, per frame or shared, the X-Ray Geometry Macro (C.8.19.6.14:
  XRayGeometrySequence > DistanceSourceToIsocenter, DistanceSourceToDetector).
Distances and pixel spacing are the file's shared values unless a frame has its own.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError

DEFAULT_VIEWS = 4  # every view costs a DRR per iteration: a run's default is a handful of its frames
FRAMES_FIX = "use --frames auto (up to 4 evenly spaced), all, or frame numbers from 1 such as 1,5,9"
INCREMENTS = ("PositionerPrimaryAngleIncrement", "PositionerSecondaryAngleIncrement")
ANGLES = ("PositionerPrimaryAngle", "PositionerSecondaryAngle")


def frame_geometry(ds, n_frames: int, path=None) -> list[dict] | None:
    """Per frame {PositionerPrimaryAngle, PositionerSecondaryAngle, frame_angles (where they came from)
    [, DistanceSourceToDetector, DistanceSourceToPatient]}, or None when the file holds no per-frame angles."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) == n_frames and _item(per_frame[0], "PositionerPositionSequence") is not None:
        return [_enhanced_frame(item, ds, path, k) for k, item in enumerate(per_frame)]
    if not any(_numbers(ds.get(keyword)) for keyword in INCREMENTS):
        return None
    frames = [{"frame_angles": "PositionerPrimary/SecondaryAngleIncrement (0018,1520/1521)"} for _ in range(n_frames)]
    for angle, increment in zip(ANGLES, INCREMENTS):
        start = _numbers(ds.get(angle))
        start = start[0] if start else 0.0  # empty: the increments are absolute angles (C.8.7.5.1.3's note)
        steps = _numbers(ds.get(increment)) or [0.0]
        if len(steps) == 1:
            offsets = [k * steps[0] for k in range(n_frames)]
        elif len(steps) == n_frames:
            offsets = steps
        else:
            raise InputError(f"{increment} has {len(steps)} values for {n_frames} frames (DICOM PS3.3 C.8.7.5.1.3: "
                             "one, or one per frame)", path, "fix the file's angle increments, or give --rig")
        for frame, offset in zip(frames, offsets):
            frame[angle] = start + offset
    return frames


def _enhanced_frame(item, ds, path, k: int) -> dict:
    position = _item(item, "PositionerPositionSequence")
    out = {"frame_angles": "per-frame X-Ray Positioner functional group (0018,9405)"}
    for angle in ANGLES:
        values = _numbers(position.get(angle))
        if not values and angle == ANGLES[0]:
            raise InputError(f"frame {k + 1}'s PositionerPositionSequence has no PositionerPrimaryAngle", path,
                             "give --rig rig.json with each frame's camera")
        out[angle] = values[0] if values else 0.0
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    for source, keyword in (("DistanceSourceToIsocenter", "DistanceSourceToPatient"),
                            ("DistanceSourceToDetector", "DistanceSourceToDetector")):
        for group in (item, shared):
            geometry = _item(group, "XRayGeometrySequence")
            values = _numbers(geometry.get(source)) if geometry is not None else []
            if values and values[0] > 0:
                out[keyword] = values[0]
                break
    return out


def _item(group, keyword):
    """The single item of a functional group's macro sequence, or None."""
    seq = group.get(keyword) if group is not None else None
    return seq[0] if seq else None


def _numbers(value) -> list[float]:
    if value is None or value == "":
        return []
    try:
        values = [float(v) for v in (value if np.ndim(value) else [value])]
    except (TypeError, ValueError):
        return []
    return values if all(math.isfinite(v) for v in values) else []


def number_of_frames(path) -> int:
    """NumberOfFrames of a DICOM file (1 for other image types), read without its pixels."""
    from .xray import HEADER_SUFFIXES, PLAIN_SUFFIXES, _suffix, read_dicom_dataset

    if _suffix(path) in PLAIN_SUFFIXES + HEADER_SUFFIXES:
        return 1
    try:
        return max(1, int(read_dicom_dataset(path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def choose_frames(spec: str | None, n_frames: int, path=None) -> list[int]:
    """0-based frame indices from --frames: auto (None: up to DEFAULT_VIEWS evenly spaced, first and last
    included), all, or 1-based numbers "1,5,9"."""
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return sorted({int(round(v)) for v in np.linspace(0, n_frames - 1, min(DEFAULT_VIEWS, n_frames))})
    if text == "all":
        return list(range(n_frames))
    try:
        numbers = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"--frames '{spec}' is not auto, all or frame numbers", path, FRAMES_FIX) from None
    if not numbers:
        raise InputError("--frames is empty", path, FRAMES_FIX)
    bad = [v for v in numbers if not 1 <= v <= n_frames]
    if bad:
        raise InputError(f"has {n_frames} frame{'s' if n_frames != 1 else ''}: no frame {bad[0]}", path,
                         f"give frame numbers from 1 to {n_frames}")
    if len(set(numbers)) != len(numbers):
        raise InputError(f"--frames '{spec}' names a frame twice", path, "give each frame once")
    return [v - 1 for v in numbers]
