"""Sharing the bundle between sites: export, verify (and what it refuses), the receiving site, fine-tuning."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import nodule_bundle
from bundle_run import ROOT, monai_bundle_run
from nodule_bundle.apps.cli import main
from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.apps.sharing.archive import BundleArchiveError, read_manifest, safe_extract, write_manifest
from nodule_bundle.core.checksums import sha256_file
from nodule_bundle.apps.sharing.export import export_bundle
from nodule_bundle.apps.sharing.verify import verify_bundle

CHECKS = (
    "archive entries", "required files", "sha256 manifest", "file sizes and large_files.yml", "metadata.json schema",
    "version in changelog", "channel definitions", "no absolute paths in configs", "configs' code in the bundle",
    "weights load with weights_only=True",
    "verify_net_in_out (MONAI)", "weights fit the network", "ckpt_export TorchScript round trip (MONAI)",
    "models/model.ts matches models/model.pt",
)  # fmt: skip


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    return export_bundle(tmp_path_factory.mktemp("export") / "lung_nodule_ct_classification.zip", ckpt=trained / "models" / "model.pt")


@pytest.fixture
def unpacked(exported, tmp_path) -> Path:
    return safe_extract(exported, tmp_path / "bundle")


def _failed(checks) -> dict[str, str]:
    return {c.name: c.detail for c in checks if not c.ok}


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=4))


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_versions_agree_and_the_changelog_names_the_current_one():
    metadata = json.loads((ROOT / "configs" / "metadata.json").read_text())
    pyproject = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert metadata["version"] == nodule_bundle.__version__ == pyproject
    assert metadata["version"] in metadata["changelog"]


def test_a_fresh_export_passes_every_check(exported):
    checks = verify_bundle(exported)
    assert [c.name for c in checks] == list(CHECKS)
    assert not _failed(checks)
    code = next(c for c in checks if c.name == "weights fit the network").detail
    assert code.endswith("into nodule_bundle/network/networks.py")  # the bundle's own copy of the code, not ours


def test_the_export_is_self_contained_and_portable(exported, unpacked):
    names = zipfile.ZipFile(exported).namelist()
    for name in ("configs/metadata.json", "configs/inference.json", "configs/finetune.json", "models/model.pt", "models/model.ts",
                 "docs/README.md", "docs/data_license.txt", "LICENSE", "large_files.yml", "nodule_bundle/network/networks.py"):  # fmt: skip
        assert name in names
    assert not any("__pycache__" in n or n.startswith("/") for n in names)
    shipped = {n.split("/")[1] for n in names if n.startswith("nodule_bundle/") and n.count("/") > 1}
    assert shipped == {"core", "reading", "detection", "preprocessing", "network", "measuring", "evaluation", "reports", "data", "followup"}  # the runtime: no apps/
    assert set(read_manifest(unpacked)) == set(names) - {"manifest.sha256"}
    for config in (unpacked / "configs").glob("*.json"):
        assert str(ROOT) not in config.read_text() and "/tmp/" not in config.read_text()


def test_a_tampered_weight_file_is_caught(unpacked):
    weights = unpacked / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    failed = _failed(verify_bundle(unpacked))
    assert "models/model.pt: sha256 differs" in failed["sha256 manifest"]
    assert "models/model.pt: sha256 differs" in failed["file sizes and large_files.yml"]
    assert "skipped" in failed["network checks (run the bundle's code)"]  # its code never runs


def test_a_config_naming_code_the_bundle_lacks_is_named(unpacked):
    """A config that would run code the bundle does not carry (an application, a module renamed away)."""
    _edit_json(unpacked / "configs" / "inference.json", lambda c: c.update(extra={"_target_": "nodule_bundle.apps.bench.bench_scan"}))
    write_manifest(unpacked)
    failed = _failed(verify_bundle(unpacked))
    assert failed["configs' code in the bundle"] == "inference.json: nodule_bundle.apps.bench.bench_scan is not in the bundle's code"


def test_a_missing_metadata_field_is_named(unpacked):
    _edit_json(unpacked / "configs" / "metadata.json", lambda m: m.pop("task"))
    write_manifest(unpacked)  # a consistent but incomplete bundle
    failed = _failed(verify_bundle(unpacked))
    assert "'task' is a required property" in failed["metadata.json schema"]


def test_a_version_without_a_changelog_entry_is_named(unpacked):
    _edit_json(unpacked / "configs" / "metadata.json", lambda m: m.update(version="9.9.9"))
    write_manifest(unpacked)
    assert _failed(verify_bundle(unpacked)) == {
        "version in changelog": "metadata.json: version '9.9.9' has no changelog entry",
        "network checks (run the bundle's code)": "skipped: the checks above failed, the configs are not evaluated",
    }


@pytest.mark.parametrize(
    "key, value",
    [("output_dir", "/home/radiology/eval"), ("ckpt_path", "$torch.load('/mnt/site/model.pt')"), ("image", "C:\\scans\\ct.nii.gz")],
)
def test_an_absolute_path_in_a_config_is_named(unpacked, key, value):
    _edit_json(unpacked / "configs" / "inference.json", lambda c: c.update({key: value}))
    write_manifest(unpacked)
    failed = _failed(verify_bundle(unpacked))
    assert failed["no absolute paths in configs"].startswith(f"inference.json: {key}: absolute path")


def test_weights_that_need_arbitrary_unpickling_are_refused(unpacked):
    torch.save({"model": {"encoder": torch.nn.Linear(2, 2)}}, unpacked / "models" / "model.pt")  # a pickled module, not tensors
    write_manifest(unpacked)
    failed = _failed(verify_bundle(unpacked))
    assert "not a weights-only checkpoint" in failed["weights load with weights_only=True"]


@pytest.mark.parametrize(
    "entry, problem",
    [("../x", "climbs out of the bundle"), ("/etc/x", "absolute path"), ("C:/x", "absolute path"), ("link", "a symlink")],
)
def test_unsafe_archive_entries_are_refused_before_extraction(exported, tmp_path, entry, problem):
    bad = tmp_path / "received" / "bundle.zip"
    bad.parent.mkdir()
    with zipfile.ZipFile(exported) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        info = zipfile.ZipInfo(entry)
        if entry == "link":
            info.external_attr = 0o120777 << 16
        dst.writestr(info, "/etc/passwd" if entry == "link" else "payload")
    checks = verify_bundle(bad)
    assert problem in _failed(checks)["archive entries"] and len(checks) == 2
    with pytest.raises(BundleArchiveError, match="refused before extraction"):
        safe_extract(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_verify_and_export_on_the_command_line(exported, unpacked, trained, capsys):
    assert main(["verify", str(exported)]) == 0
    assert capsys.readouterr().out.strip().endswith("bundle verified")
    (unpacked / "docs" / "README.md").write_text("edited")
    assert main(["verify", str(unpacked)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  sha256 manifest" in out and "docs/README.md: sha256 differs" in out
    assert main(["export", "--out", str(exported), "--ckpt", str(trained / "models" / "model.pt")]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(NoduleBundleError, match="no trained weights"):
        export_bundle(unpacked.parent / "new", ckpt=unpacked / "missing.pt")
    assert not (unpacked.parent / "new").exists()


def test_the_receiving_site_reproduces_the_report(exported, trained, phantom_dir, test_scan, tmp_path):
    uid, _, csv_path = test_scan
    image = phantom_dir / "images" / f"{uid}.nii.gz"
    source = monai_bundle_run(
        ["inference"], image=image, nodules=csv_path, ckpt_path=trained / "models" / "model.pt", output_dir=tmp_path / "source",
    )  # fmt: skip
    assert source.returncode == 0, source.stderr[-3000:]
    site = safe_extract(exported, tmp_path / "site")  # an empty folder at another hospital
    which = subprocess.run([sys.executable, "-c", "import nodule_bundle; print(nodule_bundle.__file__)"],
                           cwd=site, env=_clean_env(), capture_output=True, text=True)  # fmt: skip
    assert Path(which.stdout.strip()).resolve().is_relative_to(site.resolve())  # the bundle's code, not this repository's
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--meta_file", "configs/metadata.json",
         "--bundle_root", str(site), "--image", str(image), "--nodules", str(csv_path), "--output_dir", str(tmp_path / "out")],
        cwd=site, env=_clean_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ours = json.loads((tmp_path / "source" / "report.json").read_text())["scans"][0]["nodules"]
    theirs = json.loads((tmp_path / "out" / "report.json").read_text())["scans"][0]["nodules"]
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert a["nodule_id"] == b["nodule_id"]
        for key in ("malignancy_probability", "nodule_probability", "diameter_mm"):
            assert b[key] == pytest.approx(a[key], abs=1e-5)


def test_an_unverified_bundle_runs_only_with_trust(unpacked, phantom_dir, test_scan, tmp_path, capsys):
    uid, _, csv_path = test_scan
    marker = tmp_path / "ran.txt"
    _edit_json(unpacked / "configs" / "inference.json",  # a config that runs code, after the manifest was written
               lambda c: c["initialize"].append(f"$open({str(marker)!r}, 'w').write('code ran')"))  # fmt: skip
    args = ["run", str(unpacked), "--", "--image", str(phantom_dir / "images" / f"{uid}.nii.gz"), "--nodules", str(csv_path),
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "failed verification" in err and "configs/inference.json" in err and "--trust" in err
    assert not marker.exists() and not (tmp_path / "out").exists()  # nothing of the bundle was evaluated
    assert main([*args[:2], "--trust", *args[2:]]) == 0
    assert marker.read_text() == "code ran" and (tmp_path / "out" / "report.json").is_file()
    assert "running an unverified bundle" in capsys.readouterr().err


def test_fine_tuning_at_a_site_keeps_the_shipped_weights(exported, phantom_dir, tmp_path):
    site = safe_extract(exported, tmp_path / "site")
    shipped = sha256_file(site / "models" / "model.pt")
    args = [sys.executable, "-m", "monai.bundle", "run", "--meta_file", "configs/metadata.json", "--bundle_root", str(site),
            "--dataset_dir", str(phantom_dir), "--num_workers", "0"]  # fmt: skip
    tune = subprocess.run(
        [*args, "--config_file", "['configs/train.json','configs/finetune.json']", "--epochs", "1", "--freeze_encoder", "true"],
        cwd=site, env=_clean_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert tune.returncode == 0, tune.stderr[-3000:]
    before = torch.load(site / "models" / "model.pt", weights_only=True)
    after = torch.load(site / "models" / "finetuned" / "model.pt", weights_only=True)
    assert sha256_file(site / "models" / "model.pt") == shipped
    encoder = [k for k in before if k.startswith("encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)  # frozen, batch-norm statistics too
    assert any(not torch.equal(before[k], after[k]) for k in before if not k.startswith("encoder."))  # the heads learned
    evaluate = subprocess.run(
        [*args, "--config_file", "['configs/train.json','configs/finetune.json','configs/evaluate.json']"],
        cwd=site, env=_clean_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    metrics = json.loads((site / "eval" / "finetune" / "metrics.json").read_text())
    assert {"malignancy_auc", "size_band_accuracy", "diameter_mae_mm"} <= set(metrics)
