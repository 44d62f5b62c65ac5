"""Multi-patient data: patient ids from `xraytodrr pairs --patient-id-from`, the split that holds out whole
patients (no leakage, seeded), and its bad input (ids missing, one patient)."""

import csv

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from registration_fixtures import listing
from translation_fixtures import make_patient_pairs, make_registration_folder

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.pose import perturb, standard_view
from XrayToDRRLib.volumes import center_ras
from XrayToDRRTranslationLib.dataset import read_patients, split_by_patient
from XrayToDRRTranslationLib.train import train

TINY = dict(image_size=32, ngf=8, ndf=8, device="cpu", threads=1)


def test_patient_split_holds_out_whole_patients_and_is_seeded():
    patients = {f"{p}_{i}": p for p in "ABCDEFGHIJ" for i in range(1 + ord(p) % 3)}
    for seed in range(5):
        train_names, val_names = split_by_patient(patients, 0.3, seed)
        assert sorted(train_names + val_names) == sorted(patients)
        train_ids, val_ids = {patients[n] for n in train_names}, {patients[n] for n in val_names}
        assert not train_ids & val_ids and len(val_ids) == 3  # round(0.3 x 10) patients, none in both
        assert split_by_patient(patients, 0.3, seed) == (train_names, val_names)
    assert split_by_patient(patients, 0.3, 0) != split_by_patient(patients, 0.3, 1)
    # at least one patient validates, at least one trains
    two = {"a1": "A", "a2": "A", "b1": "B"}
    assert [len({two[n] for n in s}) for s in split_by_patient(two, 0.01, 0)] == [1, 1]
    assert [len({two[n] for n in s}) for s in split_by_patient(two, 0.99, 0)] == [1, 1]
    with pytest.raises(InputError, match="at least two patients, got 1"):
        split_by_patient({"a1": "A", "a2": "A"}, 0.5, 0)


def test_training_split_by_patient_records_the_split_and_never_leaks(tmp_path):
    data = make_patient_pairs(tmp_path / "d", {"P1": 3, "P2": 2, "P3": 2, "P4": 1})
    result = train(data, tmp_path / "run", epochs=1, val_fraction=0.25, split_by="patient", **TINY)
    config = torch.load(result.checkpoint, weights_only=True)["config"]
    assert config["split_by"] == "patient" and config["patients"] == read_patients(data)
    train_ids = {config["patients"][n] for n in config["train_names"]}
    val_ids = {config["patients"][n] for n in config["val_names"]}
    assert len(val_ids) == 1 and not train_ids & val_ids and len(train_ids | val_ids) == 4
    assert sorted(config["train_names"] + config["val_names"]) == sorted(config["patients"])


@pytest.mark.parametrize("case, message", [
    ("one patient", "needs pairs of at least two patients, got 1 (P1)"),
    ("ids missing", "2 pair(s) have no patient id for --split-by patient: P2_00, P2_01"),
    ("no table", "8 pair(s) have no patient id"),
])
def test_split_by_patient_bad_input_exits_2_and_writes_nothing(tmp_path, case, message):
    data = make_patient_pairs(tmp_path / "d", {"P1": 4} if case == "one patient" else {"P1": 6, "P2": 2})
    if case == "ids missing":
        rows = (data / "pairs.csv").read_text().splitlines()
        (data / "pairs.csv").write_text("\n".join(r.replace(",P2,", ",,") for r in rows) + "\n")
    elif case == "no table":
        (data / "pairs.csv").unlink()
    before = listing(tmp_path)
    result = run_cli("translate", "train", "-i", data, "-o", tmp_path / "run", "--split-by", "patient",
                     "--image-size", "32", "--epochs", "1", "--device", "cpu", "--progress", "none")
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert message in result.output.replace("\n", " ")
    assert listing(tmp_path) == before


@pytest.fixture(scope="module")
def patient_registrations(tmp_path_factory, small_ct, small_ct_path):
    """REG/PATIENT/CASE registration folders: two patients, two and one X-rays."""
    root = tmp_path_factory.mktemp("reg")
    c = center_ras(small_ct)
    for i, (patient, case) in enumerate([("alice", "ap"), ("alice", "lat"), ("bob", "ap")]):
        pose = perturb(standard_view("ap", c, 1020, 24, 24, 14.0), [0, 0, 3 * i], [i, 0, 0], c)
        make_registration_folder(root / patient / case, small_ct_path, pose, 0.9, seed=i)
    return root


def test_pairs_take_patient_ids_from_the_folder_layout_or_a_csv(tmp_path, patient_registrations):
    root = patient_registrations
    common = ("--device", "cpu", "--progress", "none", root / "alice", root / "bob")
    result = run_cli("pairs", "-o", tmp_path / "parent", "--patient-id-from", "parent", *common)
    assert result.exit_code == 0, result.output
    assert "2 patient(s): alice 2 pairs, bob 1 pair" in result.output
    rows = {r["name"]: r["patient"] for r in csv.DictReader(open(tmp_path / "parent" / "pairs.csv"))}
    assert rows == {"alice_ap": "alice", "lat": "alice", "bob_ap": "bob"}  # clashing names get the parent's
    assert read_patients(tmp_path / "parent") == rows

    table = tmp_path / "ids.csv"
    table.write_text(f"folder,patient\n{root / 'alice' / 'ap'},P7\nlat,P7\n{root / 'bob' / 'ap'},P9\n")
    result = run_cli("pairs", "-o", tmp_path / "csv", "--patient-id-from", f"csv:{table}", *common)
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r["patient"] for r in csv.DictReader(open(tmp_path / "csv" / "pairs.csv"))}
    assert rows == {"alice_ap": "P7", "lat": "P7", "bob_ap": "P9"}
    # without ids: the column is there and empty (one unnamed patient, as before)
    assert run_cli("pairs", "-o", tmp_path / "none", *common).exit_code == 0
    assert read_patients(tmp_path / "none") == {}

    table.write_text("folder,patient\nlat,P7\n")
    before = listing(tmp_path)
    result = run_cli("pairs", "-o", tmp_path / "bad", "--patient-id-from", f"csv:{table}", *common)
    assert result.exit_code == 2 and "names no patient for 2 registration folder(s): ap, ap" in result.output
    assert listing(tmp_path) == before


def test_augment_keeps_the_patient_ids(tmp_path):
    from XrayToDRRTranslationLib.augment import augment

    data = make_patient_pairs(tmp_path / "d", {"A": 1, "B": 1})
    out = augment(data, tmp_path / "aug", copies=2)
    assert read_patients(out) == {"A_00": "A", "A_00_aug01": "A", "A_00_aug02": "A",
                                  "B_00": "B", "B_00_aug01": "B", "B_00_aug02": "B"}


def test_pairs_whose_images_record_different_spacings_are_refused(tmp_path):
    import SimpleITK as sitk

    from XrayToDRRTranslationLib.dataset import Pair, check_pairs

    for name, spacing in (("x.nrrd", 0.5), ("d.nrrd", 0.8)):
        img = sitk.GetImageFromArray(np.zeros((16, 16), np.float32))
        img.SetSpacing((spacing, spacing))
        sitk.WriteImage(img, str(tmp_path / name))
    with pytest.raises(InputError, match="pixel spacing 0.5 x 0.5 mm differs from its DRR's 0.8 x 0.8 mm"):
        check_pairs([Pair("a", tmp_path / "x.nrrd", tmp_path / "d.nrrd")])
