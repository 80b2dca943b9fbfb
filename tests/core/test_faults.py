"""Faults survived: a write that fails leaves no truncated file, a killed training resumes from its
last checkpoint, and every weights load in the package is weights-only."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nodule_bundle
from bundle_run import ROOT
from nodule_bundle.core.io_utils import write_json_atomic, write_text_atomic
from nodule_bundle.network.networks import MultiTaskNoduleNet


def test_a_write_that_fails_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"scans": ["earlier"]})

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(target, {"scans": ["new"] * 1000})
    assert target.read_text() == '{\n  "scans": [\n    "earlier"\n  ]\n}\n'  # whole, and the old one
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_a_read_only_output_folder_fails_cleanly(tmp_path, monkeypatch):
    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    monkeypatch.setattr(os, "replace", read_only)  # the rename that publishes the file is refused
    with pytest.raises(OSError, match="Read-only"):
        write_text_atomic(tmp_path / "report.csv", "a,b\n")
    assert list(tmp_path.iterdir()) == []


def test_every_torch_load_in_the_package_is_weights_only():
    package = Path(nodule_bundle.__file__).parent
    calls = [(p, line) for p in package.rglob("*.py") for line in p.read_text().splitlines() if "torch.load(" in line]
    assert calls, "expected the package to load weights somewhere"
    assert all("weights_only=True" in line for _, line in calls), [f"{p.name}: {line.strip()}" for p, line in calls if "weights_only=True" not in line]
    configs = [(p, line) for p in (ROOT / "configs").glob("*.json") for line in p.read_text().splitlines() if "torch.load(" in line]
    assert all("weights_only=True" in line for _, line in configs)


def _resume_checkpoints(folder: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in folder.glob("*.pt") if (m := re.search(r"epoch=(\d+)", p.name)))


def _train(phantom_dir: Path, models: Path, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json", "--meta_file", "configs/metadata.json",
            "--dataset_dir", str(phantom_dir), "--ckpt_dir", str(models), "--output_dir", str(models.parent / "eval"),
            "--epochs", str(epochs), "--num_workers", "0", *extra]  # fmt: skip


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_from_its_last_checkpoint(phantom_dir, tmp_path):
    models, epochs = tmp_path / "models", 6
    proc = subprocess.Popen(_train(phantom_dir, models, epochs), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not _resume_checkpoints(models / "resume"):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    time.sleep(0.5)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = _resume_checkpoints(models / "resume")  # the last two epochs', each written whole (atomically) however the process ended
    assert 1 <= len(saved) <= 2
    for epoch in saved:
        assert set(torch.load(models / "resume" / f"checkpoint_epoch={epoch}.pt", weights_only=True)) == {"model", "optimizer", "lr_scheduler", "trainer"}
    done = saved[-1]
    assert done < epochs
    result = subprocess.run(_train(phantom_dir, models, epochs, "--resume", "True"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    resumed = re.search(r"resuming from iteration \d+, epoch (\d+)", result.stdout)
    assert resumed and int(resumed.group(1)) == done, result.stdout[-3000:]  # at most the epoch under way was lost
    trained_again = re.findall(r"Epoch\[(\d+)\] Complete", result.stdout.split(resumed.group(0))[1])
    assert trained_again and min(int(e) for e in trained_again) == done + 1  # finished epochs are not trained again
    assert _resume_checkpoints(models / "resume")[-1] == epochs  # the newest state is the finished run's
    MultiTaskNoduleNet().load_state_dict(torch.load(models / "model.pt", weights_only=True))
    fresh = subprocess.run(_train(phantom_dir, tmp_path / "empty", epochs, "--resume", "True"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fresh.returncode != 0 and "nothing to resume" in fresh.stderr
