"""A real PACS: Debian's Orthanc with its DICOMweb plugin on loopback, a phantom study uploaded to it,
`nodule-bundle pacs` run against it over DICOMweb and over DIMSE, and the SEG and SR found back in it,
in the study, valid."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from nodule_bundle.apps.cli import main

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc(NamedTuple):
    dicomweb: str  # its DICOMweb root
    dimse: str  # its DICOM service, AET@HOST:PORT
    peer_port: int  # where it sends C-MOVEs to NODULEBUNDLE


@pytest.fixture
def orthanc(tmp_path_factory):
    """A fresh Orthanc listening on loopback only, which knows NODULEBUNDLE on ``peer_port``."""
    binary = shutil.which("Orthanc")
    if binary is None or not PLUGIN.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's orthanc and orthanc-dicomweb (.ci/run) for the PACS test")
        pytest.skip("orthanc and orthanc-dicomweb are not installed")
    folder = tmp_path_factory.mktemp("orthanc")
    http, dicom, peer = _free_port(), _free_port(), _free_port()
    config = {
        "Name": "nodule-bundle-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {"bundle": ["NODULEBUNDLE", "127.0.0.1", peer]},
    }  # fmt: skip
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    server = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/system", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
        yield Orthanc(f"http://127.0.0.1:{http}/dicom-web", f"ORTHANC@127.0.0.1:{dicom}", peer)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _series(client: DICOMwebClient, study_uid: str) -> dict[str, str]:
    """Series uid -> modality of the study in the PACS."""
    return {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in client.search_for_series(study_uid)}


def test_studies_from_the_pacs_get_their_seg_and_sr_stored_back_once(orthanc, trained, phantom_dir, datalist, test_scan, tmp_path, capsys):
    """`pacs --study`: the SEG and SR in the study, referring to its CT series and to each other, valid
    after the round trip; `pacs --watch`: every other study the PACS lists processed once, recorded, the
    one processed before left alone, nothing processed twice."""
    uid, _, csv_path = test_scan
    client, orthanc = DICOMwebClient(orthanc.dicomweb), orthanc.dicomweb
    client.store_instances([pydicom.dcmread(p) for p in sorted((phantom_dir / "dicom" / uid).iterdir())])
    study_uid = str(pydicom.dcmread(next((phantom_dir / "dicom" / uid).iterdir())).StudyInstanceUID)
    model = str(trained / "models" / "model.pt")
    assert main(["pacs", "--url", orthanc, "--study", study_uid, "--out", str(tmp_path / "one"), "--nodules", str(csv_path), "--model", model]) == 0
    assert f"series {uid} reported" in capsys.readouterr().out
    series = _series(client, study_uid)
    assert sorted(series.values()) == ["CT", "SEG", "SR"]
    (seg_series,) = [k for k, v in series.items() if v == "SEG"]
    (sr_series,) = [k for k, v in series.items() if v == "SR"]
    seg, sr = client.retrieve_series(study_uid, seg_series)[0], client.retrieve_series(study_uid, sr_series)[0]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid  # the SEG is of the CT series
    evidence = {i.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence}  # fmt: skip
    assert seg.SOPInstanceUID in evidence  # the SR refers to the SEG the PACS holds
    local = pydicom.dcmread(tmp_path / "one" / study_uid / "report" / "nodule_labels.sr.dcm")
    assert sr.SOPInstanceUID == local.SOPInstanceUID and sr.ContentSequence == local.ContentSequence  # unchanged by the round trip
    for name, dataset in (("seg", seg), ("sr", sr)):
        path = tmp_path / f"from_pacs_{name}.dcm"
        dataset.save_as(path)
        validator = shutil.which("dciodvfy")
        if validator:  # CI installs it (test_report.py fails there without it)
            result = subprocess.run([validator, str(path)], capture_output=True, text=True, timeout=120)
            assert not [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")], name

    other = datalist["training"][0]["seriesuid"]
    client.store_instances([pydicom.dcmread(p) for p in sorted((phantom_dir / "dicom" / other).iterdir())])
    other_study = str(pydicom.dcmread(next((phantom_dir / "dicom" / other).iterdir())).StudyInstanceUID)
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # a study the bundle cannot read: recorded as failed, retried
    client.store_instances([mr])
    watch = ["pacs", "--url", orthanc, "--watch", "--passes", "1", "--out", str(tmp_path / "watch"), "--model", model]
    assert main(watch) == 0
    record = json.loads((tmp_path / "watch" / "studies.json").read_text())
    failed = record.pop(str(mr.StudyInstanceUID))
    assert failed["status"] == "failed" and "has no CT series" in failed["error"] and failed["attempts"] == 1
    assert record[study_uid]["status"] == "done" and record[study_uid]["stored"] == "earlier"  # its SR is there already
    assert record[other_study]["status"] == "done" and record[other_study]["series"] == other
    assert (tmp_path / "watch" / other_study / "report" / "report.json").exists()
    assert set(record) == {study_uid, other_study} and _series(client, study_uid) == series  # nothing stored twice
    before = {u: _series(client, u) for u in record}
    assert main(watch) == 0  # a second pass: the failed study tried again, nothing else
    again = json.loads((tmp_path / "watch" / "studies.json").read_text())
    assert again.pop(str(mr.StudyInstanceUID))["attempts"] == 2 and again == record
    assert {u: _series(client, u) for u in record} == before
    assert main(["pacs", "--url", orthanc, "--out", str(tmp_path)]) == 2  # neither --study nor --watch
    assert "give --study UID" in capsys.readouterr().err


def test_a_pacs_without_dicomweb_is_reached_over_dimse(orthanc, trained, phantom_dir, test_scan, tmp_path, capsys):
    """`pacs --dimse`: the study comes by C-MOVE (the PACS sends it to our AE title), the SEG and SR go
    by C-STORE, a watch pass finds them by C-FIND and leaves the study alone; an AE title the PACS does
    not know gets an error that says what to configure."""
    uid, _, csv_path = test_scan
    client = DICOMwebClient(orthanc.dicomweb)  # to upload the study and look at the PACS from outside
    client.store_instances([pydicom.dcmread(p) for p in sorted((phantom_dir / "dicom" / uid).iterdir())])
    study_uid = str(pydicom.dcmread(next((phantom_dir / "dicom" / uid).iterdir())).StudyInstanceUID)
    dimse = ["pacs", "--dimse", orthanc.dimse, "--port", str(orthanc.peer_port), "--model", str(trained / "models" / "model.pt")]
    assert main([*dimse, "--study", study_uid, "--out", str(tmp_path / "one"), "--nodules", str(csv_path)]) == 0
    assert f"series {uid} reported" in capsys.readouterr().out
    received = sorted(p.name for p in (tmp_path / "one" / study_uid / "dicom" / uid).iterdir())
    assert received == sorted(f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in (phantom_dir / "dicom" / uid).iterdir())
    series = _series(client, study_uid)
    assert sorted(series.values()) == ["CT", "SEG", "SR"]
    (sr_series,) = [k for k, v in series.items() if v == "SR"]
    (seg_series,) = [k for k, v in series.items() if v == "SEG"]
    report = tmp_path / "one" / study_uid / "report"
    for series_uid, name in ((sr_series, "nodule_labels.sr.dcm"), (seg_series, "nodule_labels.seg.dcm")):
        (stored,) = client.retrieve_series(study_uid, series_uid)
        local = pydicom.dcmread(report / name)
        content = "PixelData" if name.endswith("seg.dcm") else "ContentSequence"
        assert stored.SOPInstanceUID == local.SOPInstanceUID and stored[content].value == local[content].value
    assert main([*dimse, "--watch", "--passes", "1", "--out", str(tmp_path / "watch")]) == 0
    record = json.loads((tmp_path / "watch" / "studies.json").read_text())
    assert record == {study_uid: {**record[study_uid], "status": "done", "stored": "earlier"}}  # found by C-FIND: not again
    assert _series(client, study_uid) == series
    stranger = ["pacs", "--dimse", orthanc.dimse, "--ae-title", "STRANGER", "--port", str(_free_port()), "--study", study_uid]
    assert main([*stranger, "--out", str(tmp_path / "stranger")]) == 2
    assert "the PACS must know STRANGER" in capsys.readouterr().err
    assert main(["pacs", "--dimse", "orthanc:4242", "--study", study_uid, "--out", str(tmp_path)]) == 2
    assert "AET@HOST:PORT" in capsys.readouterr().err
