"""``bench backbones`` and ``bench backbone-accuracy``: each backbone's speed, and its accuracy trained the same way against the best one's."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from nodule_bundle.apps.bench.timing import as_inference_runs_it, time_alternating
from nodule_bundle.core.errors import NoduleBundleError


def bench_backbones(repeats: int = 3, batch_sizes: tuple[int, ...] = (1, 32)) -> dict:
    """Classifier throughput (patches/s, no gradients) of the default network and of every
    ``configs/backbone_*.json`` override behind the same heads, with their parameter counts (as
    trained), beside MONAI's stock 3D ``resnet18`` (a 2-class classifier) measured in the same run.
    Each runs as inference.json runs it: eval mode, batch norms folded where they follow a MONAI
    ``Convolution``'s convolution (the default encoder's), ``channels_last_3d``."""
    from monai.bundle import ConfigParser
    from monai.networks.nets import resnet18

    from nodule_bundle.apps.workflow import find_bundle_root

    configs = find_bundle_root() / "configs"
    patch_size = int(ConfigParser.load_config_file(str(configs / "train.json"))["patch_size"])
    networks: dict[str, torch.nn.Module] = {}
    for name, names in backbone_configs().items():
        parser = ConfigParser()
        parser.read_config([str(configs / f"{config}.json") for config in names])
        networks[name] = parser.get_parsed_content("network_def")
    networks["monai_resnet18_stock"] = resnet18(spatial_dims=3, n_input_channels=1, num_classes=2)
    result: dict = {"benchmark": "backbones", "patch_size": patch_size, "networks": {}}
    for name, network in networks.items():
        entry = {"parameters": sum(p.numel() for p in network.parameters())}
        network = as_inference_runs_it(network)
        for batch in batch_sizes:
            x = torch.rand(batch, 1, patch_size, patch_size, patch_size)
            with torch.no_grad():
                times = time_alternating({name: lambda: network(x)}, repeats)[name]
            entry[f"patches_per_s_batch{batch}"] = batch / times["median_s"]
        result["networks"][name] = entry
    stock = result["networks"]["monai_resnet18_stock"]
    for entry in result["networks"].values():
        entry["speed_vs_stock_resnet18_batch32"] = entry.get("patches_per_s_batch32", 0) / stock.get("patches_per_s_batch32", 1)
    return result


def format_backbones_result(result: dict) -> str:
    lines = [f"classifier throughput, {result['patch_size']}^3 patches, patches/s (median)"]
    for name, e in result["networks"].items():
        rates = "  ".join(f"batch {k.removeprefix('patches_per_s_batch')}: {v:8.1f}" for k, v in e.items() if k.startswith("patches_per_s"))
        lines.append(f"  {name:<22} {e['parameters']:>11,} params  {rates}  ({e['speed_vs_stock_resnet18_batch32']:.1f}x stock resnet18)")
    return "\n".join(lines)


def backbone_configs() -> dict[str, list[str]]:
    """Every backbone the bundle offers, by name, with the configs that train it: ``default``
    (train.json's network) and each ``configs/backbone_*.json`` override on top of train.json."""
    from nodule_bundle.apps.workflow import find_bundle_root

    overrides = sorted(path.stem for path in (find_bundle_root() / "configs").glob("backbone_*.json"))
    return {"default": ["train"], **{name: ["train", name] for name in overrides}}


def bench_backbone_accuracy(out: str | Path, scans: int = 24, epochs: int = 15, backbones: list[str] | None = None, seed: int = 0,
                            cfg=None, test_scans: int | None = None, evaluate_only: bool = False) -> dict:  # fmt: skip
    """Test malignancy AUC (and size-band accuracy, diameter MAE) of each backbone trained the same
    way, ``epochs`` epochs on one phantom dataset of ``scans`` scans (``cfg``: its
    :class:`~nodule_bundle.data.phantom.PhantomConfig`) written to ``out/data``, with the training
    time of each (``out/<name>/training.json``). ``test_scans``: that many more scans for the test
    split alone (``None``: the usual 15 % of ``scans``), for a tighter AUC at no training cost.
    ``backbones``: names from :func:`backbone_configs` (default: all). ``evaluate_only``: evaluate
    the models an earlier run trained in ``out`` (its phantom and training records), training none.

    Each backbone's AUC is compared with the best one's on the same test nodules (their
    ``predictions.csv``) by :func:`~nodule_bundle.evaluation.metrics.paired_auc_difference`: ``auc_vs_best``."""
    import json

    from nodule_bundle.apps.workflow import find_bundle_root, run_bundle
    from nodule_bundle.core.io_utils import write_json_atomic
    from nodule_bundle.data.phantom import PhantomConfig
    from nodule_bundle.data.synth import write_phantom_dataset

    available = backbone_configs()
    chosen = backbones or list(available)
    unknown = set(chosen) - set(available)
    if unknown:
        raise NoduleBundleError(f"unknown backbone(s) {sorted(unknown)}; available: {sorted(available)}")
    out, root = Path(out), find_bundle_root()
    datalist = out / "data" / "datalist.json"
    if evaluate_only:
        _require_files([datalist, *(out / name / record for name in chosen for record in ("models/model.pt", "training.json"))], "--evaluate-only")
    else:
        total = scans + (test_scans or 0)
        fractions = (0.15, 0.15) if test_scans is None else (max(1, round(0.15 * scans)) / total, test_scans / total)
        write_phantom_dataset(out / "data", total, seed, cfg=cfg or PhantomConfig(), negatives_per_scan=8, split_fractions=fractions)
    splits = json.loads(datalist.read_text())
    result: dict = {"benchmark": "backbone_accuracy", "scans": len({item["image"] for items in splits.values() if isinstance(items, list) for item in items}),
                    "test_nodules": sum(item.get("is_nodule", 1) == 1 for item in splits["test"]), "backbones": {}}  # fmt: skip
    predictions = {}
    for name in chosen:
        configs = available[name]
        common = dict(dataset_dir=str(out / "data"), datalist=str(datalist), ckpt_dir=str(out / name / "models"), output_dir=str(out / name / "eval"),
                      num_workers=0, show_progress=False, seed=seed)  # fmt: skip
        if not evaluate_only:
            start = time.perf_counter()
            run_bundle(configs, root, epochs=epochs, **common)
            write_json_atomic(out / name / "training.json", {"epochs": epochs, "seed": seed, "train_s": time.perf_counter() - start})
        training = json.loads((out / name / "training.json").read_text())
        run_bundle([*configs, "evaluate"], root, **common)
        metrics = json.loads((out / name / "eval" / "metrics.json").read_text())
        predictions[name] = _malignancy_predictions(out / name / "eval" / "predictions.csv")
        result["backbones"][name] = {"epochs": training["epochs"], "train_s": training["train_s"],
                                     **{k: metrics.get(k) for k in ("malignancy_auc", "size_band_accuracy", "diameter_mae_mm")}}  # fmt: skip
    aucs = {name: e["malignancy_auc"] for name, e in result["backbones"].items() if e["malignancy_auc"] is not None}
    result["best"] = max(aucs, key=aucs.get) if aucs else None
    for name in aucs:
        if name != result["best"]:
            result["backbones"][name]["auc_vs_best"] = _paired_against(predictions[name], predictions[result["best"]])
    return result


def _require_files(paths: list[Path], why: str) -> None:
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise NoduleBundleError(f"{why} needs what an earlier run wrote, missing: {', '.join(missing)}")


def _malignancy_predictions(path: Path) -> dict[tuple[str, str], tuple[int, float]]:
    """``(seriesuid, nodule_id) -> (malignancy_true, malignancy_prob)`` for the nodules of a
    ``predictions.csv`` whose malignancy is known (false candidates and unknown labels left out)."""
    import csv

    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return {(r["seriesuid"], r["nodule_id"]): (int(float(r["malignancy_true"])), float(r["malignancy_prob"]))
            for r in rows if r["malignancy_true"] and r["nodule_true"] != "0"}  # fmt: skip


def _paired_against(predictions: dict, best: dict) -> dict:
    """:func:`~nodule_bundle.evaluation.metrics.paired_auc_difference` of one backbone's P(malignant) against
    the best one's, on the nodules both predicted (the same test split: all of them)."""
    from nodule_bundle.evaluation.metrics import paired_auc_difference

    shared = sorted(predictions.keys() & best.keys())
    labels = [best[key][0] for key in shared]
    return {**paired_auc_difference(labels, [predictions[key][1] for key in shared], [best[key][1] for key in shared]), "nodules": len(shared)}


def format_backbone_accuracy_result(result: dict) -> str:
    lines = [f"test split ({result['test_nodules']} nodules) of a {result['scans']}-scan phantom, every backbone trained on the same scans"]
    for name, e in result["backbones"].items():
        auc = "n/a  " if e["malignancy_auc"] is None else f"{e['malignancy_auc']:.3f}"
        paired = e.get("auc_vs_best")
        versus = f"  vs best {paired['difference']:+.3f} (95 % CI {paired['ci95'][0]:+.3f} to {paired['ci95'][1]:+.3f})" if paired else ""
        lines.append(f"  {name:<18} AUC {auc}{versus}  band acc {e['size_band_accuracy']:.3f}  diameter MAE {e['diameter_mae_mm']:.2f} mm"
                     f"  trained {e['epochs']} epochs in {e['train_s']:.0f} s")  # fmt: skip
    lines.append(f"  best: {result['best']}")
    return "\n".join(lines)
