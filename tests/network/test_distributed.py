"""Multi-process training with a real ``torchrun`` (2 processes, gloo on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bundle_run import ROOT
from nodule_bundle.network.networks import MultiTaskNoduleNet


def test_two_torchrun_processes_train_on_disjoint_data_and_save_one_checkpoint(phantom_dir, datalist, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
         "--config_file", "['configs/train.json','configs/multi_gpu_train.json']", "--meta_file", "configs/metadata.json",
         "--dataset_dir", str(phantom_dir), "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
         "--epochs", "1", "--num_workers", "0", "--record_trained_items", "true"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [json.loads((tmp_path / "eval" / f"trained_items_rank{r}.json").read_text())["items"] for r in (0, 1)]
    training = {item["nodule_id"] for item in datalist["training"]}
    padding = -len(training) % 2  # DistributedSampler repeats items to give both ranks as many
    assert seen[0] and seen[1] and len(set(seen[0]) & set(seen[1])) <= padding  # each rank its own share
    assert set(seen[0]) | set(seen[1]) == training and len(seen[0]) == len(seen[1]) == (len(training) + padding) // 2
    MultiTaskNoduleNet().load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True), strict=True)
    scalars_by_process: dict[str, int] = {}  # event files are named ...<host>.<pid>.<n>
    for events in (tmp_path / "eval").glob("events.out.tfevents.*"):
        log = EventAccumulator(str(events))
        log.Reload()
        pid = events.name.split(".")[-2]
        scalars_by_process[pid] = scalars_by_process.get(pid, 0) + len(log.Tags()["scalars"])
    assert sorted(scalars_by_process.values())[0] == 0 and sum(n > 0 for n in scalars_by_process.values()) == 1  # rank 0 logs
