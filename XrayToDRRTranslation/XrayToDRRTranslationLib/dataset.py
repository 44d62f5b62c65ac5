"""Paired image folders for pix2pix: `DATA/xray/NAME.ext` (input) beside `DATA/drr/NAME.ext` (target).

Listing and checks name the offending file: unmatched names (listed), different sizes within a pair, grayscale
mixed with RGB, an empty folder, an unreadable image. RGB images (all of them, never a mix) are turned into
luminance; the networks work on one channel.

Normalisation (stored in every checkpoint's config under `normalization`): each image, input and target alike, is
scaled on its own by robust percentiles,

    x' = clip(2 (x - p_low) / (p_high - p_low) - 1, -1, 1),   p_low, p_high = its 0.5th and 99.5th percentiles,

per image because exposure, vendor processing and the 16-bit scaling of DRR PNGs differ from case to case, robust
so that burned-in markers or hot pixels do not set the range. A constant image maps to -1. The network's tanh
output lies in [-1, 1]; predictions are written as (y + 1) / 2 in [0, 1] (dense = bright, like a DRR).

Images whose size is not image_size x image_size are resized (bilinear, antialiased) to it for the network, and
predictions are resized back to the input's size (pix2pix works on squares: non-square images are stretched).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from XrayToDRRLib.errors import InputError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".nii.gz", ".nii", ".nrrd", ".mha", ".npy")
NORMALIZATION = {"method": "percentile", "low": 0.5, "high": 99.5, "range": [-1.0, 1.0]}
FIX_PAIRS = "give the folder written by `xraytodrr pairs` (xray/NAME.png beside drr/NAME.png)"


@dataclasses.dataclass(frozen=True)
class Pair:
    name: str
    xray: Path
    drr: Path


# --- files ----------------------------------------------------------------------------------------------------
def suffix_of(path: str | Path) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def stem_of(path: str | Path) -> str:
    name = Path(path).name
    return name[: len(name) - len(suffix_of(name))]


def images_in(folder: Path) -> list[Path]:
    """Image files directly in `folder` (sorted; hidden and temporary files skipped)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and suffix_of(p) in IMAGE_SUFFIXES)


def images_by_name(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in images_in(folder):
        name = stem_of(p)
        if name in out:
            raise InputError(f"two images share the name '{name}' ({out[name].name}, {p.name})", folder,
                             "keep one file per name")
        out[name] = p
    return out


def few(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def list_pairs(root: str | Path) -> list[Pair]:
    """Pairs of `root/xray/NAME.*` and `root/drr/NAME.*`, sorted by name. Unmatched names are an error (listed)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("paired-data folder not found", root, FIX_PAIRS)
    missing = [sub for sub in ("xray", "drr") if not (root / sub).is_dir()]
    if missing:
        raise InputError(f"has no {' and no '.join(m + '/' for m in missing)} subfolder", root, FIX_PAIRS)
    xrays, drrs = images_by_name(root / "xray"), images_by_name(root / "drr")
    if not xrays and not drrs:
        raise InputError("holds no images in xray/ and drr/ (empty data set)", root, FIX_PAIRS)
    only_x, only_d = sorted(set(xrays) - set(drrs)), sorted(set(drrs) - set(xrays))
    if only_x or only_d:
        parts = []
        if only_x:
            parts.append(f"{len(only_x)} X-ray(s) without a DRR in drr/: {few(only_x)}")
        if only_d:
            parts.append(f"{len(only_d)} DRR(s) without an X-ray in xray/: {few(only_d)}")
        raise InputError("unmatched names: " + "; ".join(parts), root,
                         "give every xray/NAME a drr/NAME with the same name (or remove the extras)")
    return [Pair(n, xrays[n], drrs[n]) for n in sorted(xrays)]


def image_info(path: Path) -> tuple[int, int, int]:
    """(height, width, channels) from the header only."""
    if suffix_of(path) == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError):
            raise InputError("cannot read as a NumPy image", path, "give a valid .npy (H, W) array") from None
        shape = arr.shape
        channels = shape[2] if len(shape) == 3 else 1
    else:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise InputError("cannot read as an image (corrupt or of an unknown type)", path,
                             "give a PNG/TIFF/JPEG, NIfTI/NRRD or .npy image") from None
        size = reader.GetSize()
        if len(size) == 3 and size[2] != 1:
            raise InputError(f"is a 3D image of size {size}, not a 2D image", path, "give 2D images")
        shape = (size[1], size[0])
        channels = reader.GetNumberOfComponents()
    if len(shape) < 2 or len(shape) > 3 or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise InputError(f"is not a 2D grayscale or RGB image (shape {tuple(shape)})", path, "give 2D images")
    return int(shape[0]), int(shape[1]), int(channels)


def image_spacing(path: Path) -> tuple[float, float] | None:
    """(row, col) pixel spacing from the header, or None where the file records none (.npy, or the unit spacing a
    PNG without a pHYs chunk reads as): only two recorded spacings are compared."""
    if suffix_of(path) == ".npy":
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    col, row = reader.GetSpacing()[:2]
    return None if np.allclose((row, col), 1.0) else (float(row), float(col))


def read_gray(path: str | Path) -> np.ndarray:
    """(H, W) float32; RGB(A) becomes luminance."""
    path = Path(path)
    if suffix_of(path) == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            raise InputError("cannot read as a NumPy image", path, "give a valid .npy (H, W) array") from None
    else:
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError:
            raise InputError("cannot read as an image (corrupt or of an unknown type)", path,
                             "give a PNG/TIFF/JPEG, NIfTI/NRRD or .npy image") from None
        arr = sitk.GetArrayFromImage(img)
        if img.GetDimension() == 3:
            arr = arr[0]
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"is not a 2D image (shape {arr.shape})", path, "give 2D images")
    arr = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError("image contains NaN or infinity", path, "give finite images")
    return arr


def check_pairs(pairs: list[Pair]) -> dict:
    """Headers only: both images of a pair have the same size, and grayscale and RGB are not mixed.
    Returns {'channels': 1 or 3, 'sizes': {(h, w): count}}."""
    if not pairs:
        raise InputError("no image pairs", None, FIX_PAIRS)
    first_kind: tuple[str, Path] | None = None
    sizes: dict[tuple[int, int], int] = {}
    for pair in pairs:
        hx, wx, cx = image_info(pair.xray)
        hd, wd, cd = image_info(pair.drr)
        if (hx, wx) != (hd, wd):
            raise InputError(f"size {hx}x{wx} differs from its DRR's {hd}x{wd} ({pair.drr})", pair.xray,
                             "give both images of a pair the same size (xraytodrr pairs renders the DRR at the "
                             "X-ray's size)")
        for path, c in ((pair.xray, cx), (pair.drr, cd)):
            kind = "grayscale" if c == 1 else "RGB"
            if first_kind is None:
                first_kind = (kind, path)
            elif kind != first_kind[0]:
                raise InputError(f"is {kind} while {first_kind[1]} is {first_kind[0]}: grayscale and RGB images "
                                 "are mixed", path, "convert all images to grayscale (one channel)")
        sx, sd = image_spacing(pair.xray), image_spacing(pair.drr)
        if sx and sd and not np.allclose(sx, sd, rtol=0.01):
            raise InputError(f"pixel spacing {sx[0]:.4g} x {sx[1]:.4g} mm differs from its DRR's {sd[0]:.4g} x "
                             f"{sd[1]:.4g} mm ({pair.drr}): the images do not show the same geometry", pair.xray,
                             "render the DRR at the X-ray's pose and detector (xraytodrr pairs does)")
        sizes[(hx, wx)] = sizes.get((hx, wx), 0) + 1
    return {"channels": 1 if first_kind[0] == "grayscale" else 3, "sizes": sizes}


# --- normalisation and resizing -------------------------------------------------------------------------------
def normalize(img: np.ndarray, normalization: dict | None = None) -> np.ndarray:
    """Robust per-image scaling onto [-1, 1] (see the module docstring)."""
    norm = normalization or NORMALIZATION
    if norm.get("method") != "percentile":
        raise InputError(f"unknown normalisation {norm.get('method')!r}", None, "use a checkpoint from this version")
    img = np.asarray(img, dtype=np.float64)
    lo, hi = np.percentile(img, [norm["low"], norm["high"]])
    if not hi > lo:
        return np.full(img.shape, -1.0, np.float32)
    return np.clip(2.0 * (img - lo) / (hi - lo) - 1.0, -1.0, 1.0).astype(np.float32)


def to_unit(img) -> np.ndarray:
    """[-1, 1] -> [0, 1]."""
    return np.clip((np.asarray(img, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)


def resize(img: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray | torch.Tensor:
    """Bilinear, antialiased when shrinking. numpy (H, W) or torch (B, C, H, W) in, same kind out."""
    tensor = torch.is_tensor(img)
    t = img if tensor else torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    if tuple(t.shape[-2:]) != tuple(size):
        shrink = size[0] < t.shape[-2] or size[1] < t.shape[-1]
        t = torch.nn.functional.interpolate(t, size=tuple(int(s) for s in size), mode="bilinear",
                                            align_corners=False, antialias=shrink)
    return t if tensor else t[0, 0].numpy()


# --- patients -------------------------------------------------------------------------------------------------
PATIENT_TABLES = ("pairs.csv", "augment.csv")  # written by `xraytodrr pairs` / `xraytodrr augment`
FIX_PATIENTS = ("build the pairs with `xraytodrr pairs --patient-id-from parent|grandparent|csv:FILE` (augment "
                "keeps the ids), or use --split-by pair")


def read_patients(root: str | Path) -> dict[str, str]:
    """Pair name -> patient id from the folder's pairs.csv or augment.csv `patient` column (empty cells and
    missing tables give no id)."""
    import csv

    out: dict[str, str] = {}
    for table in PATIENT_TABLES:
        path = Path(root) / table
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("status", "kept") == "kept" and (row.get("patient") or "").strip():
                    out.setdefault(row["name"], row["patient"].strip())
    return out


def patients_of(names: list[str], root: str | Path) -> dict[str, str]:
    """Every name's patient id; InputError listing the pairs that have none."""
    ids = read_patients(root)
    missing = sorted(n for n in names if n not in ids)
    if missing:
        raise InputError(f"{len(missing)} pair(s) have no patient id for --split-by patient: {few(missing)}",
                         Path(root) / "pairs.csv", FIX_PATIENTS)
    return {n: ids[n] for n in names}


def pairs_per_patient(patients: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in sorted(patients.values()):
        counts[p] = counts.get(p, 0) + 1
    return counts


def split_by_patient(patients: dict[str, str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) names with whole patients held out: round(val_fraction x patients) of them (at least
    one, at most all but one), drawn by a permutation of the sorted ids from `seed`. No patient is in both."""
    ids = sorted(set(patients.values()))
    if len(ids) < 2:
        raise InputError(f"--split-by patient needs pairs of at least two patients, got {len(ids)} "
                         f"({few(ids) or 'none'})", None,
                         "add pairs of other patients, or use --split-by pair")
    val_ids = set(split_names(ids, val_fraction, seed)[1])
    train = sorted(n for n, p in patients.items() if p not in val_ids)
    val = sorted(n for n, p in patients.items() if p in val_ids)
    return train, val


# --- split and torch Dataset ----------------------------------------------------------------------------------
def split_names(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) names: a permutation drawn from `seed`; at least one training pair."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"validation fraction must be in [0, 1), got {val_fraction}", None,
                         "pass --val-fraction 0.1 (or 0 for no validation)")
    names = sorted(names)
    n = len(names)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    order = np.random.default_rng(int(seed)).permutation(n)
    val = sorted(names[i] for i in order[:n_val])
    train = sorted(names[i] for i in order[n_val:])
    return train, val


class PairDataset(torch.utils.data.Dataset):
    """(input, target) float32 tensors of shape (1, S, S) in [-1, 1]; cached in memory after the first read."""

    def __init__(self, pairs: list[Pair], image_size: int, normalization: dict | None = None, cache: bool = True):
        self.pairs = list(pairs)
        self.image_size = int(image_size)
        self.normalization = normalization or NORMALIZATION
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, path: Path) -> torch.Tensor:
        img = resize(normalize(read_gray(path), self.normalization), (self.image_size, self.image_size))
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        pair = self.pairs[index]
        item = (self.load(pair.xray), self.load(pair.drr))
        if self.cache is not None:
            self.cache[index] = item
        return item
