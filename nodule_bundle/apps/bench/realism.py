"""``nodule-bundle bench realism``: the bundle on real nodule geometry (``synth --geometry lidc``).

Measurement: each nodule of a split measured as ``configs/inference.json`` measures it (its
``LoadCTImaged`` and ``NoduleMeasured``) against the reference sizes of the readers' consensus
outline (``annotations.csv``): long axis and mean diameter (MAE, bias), volume (median absolute
percentage error), per stratum of the reference long axis and per texture, and the Lung-RADS
category from the measurement against the category from the outline.

Malignancy: the test AUC of a network trained from scratch through ``configs/train.json`` on the
training split (and evaluated by ``configs/evaluate.json``: ``predictions.csv``) beside the
reference diameter alone, beside the bundle's own measured diameter alone (what a site gets from
size without the network) and beside a logistic regression on the readers' ratings fitted on the
training split (what the ratings hold: the ceiling), overall and within size strata, with paired
bootstrap intervals of the network's AUC minus the diameter's.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from monai.transforms import Compose

from nodule_bundle.apps.bench.timing import inference_config, inference_steps
from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.nodule import RATING_COLUMNS, lung_rads_category, texture_from_measurement
from nodule_bundle.data.datalist import SPLITS, has_reference_masks, load_nodule_datalist

#: strata of the reference long axis (mm) for the measurement, of the reference mean diameter for malignancy
LONG_AXIS_STRATA_MM = ((0.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, math.inf))
MALIGNANCY_STRATA_MM = ((0.0, 6.0), (6.0, 15.0), (15.0, math.inf))
RATING_FEATURES = (*RATING_COLUMNS, "texture_score", "diameter_mm")


def _stratum(value: float, strata) -> str:
    low, high = next((lo, hi) for lo, hi in strata if lo <= value < hi)
    return f">={low:g} mm" if math.isinf(high) else f"<{high:g} mm" if low == 0 else f"{low:g}-{high:g} mm"


def measurement_transforms(bundle_root: str | Path | None = None, overrides: dict | None = None) -> Compose:
    """The reading and measuring transforms of the bundle's ``configs/inference.json``, as it
    configures them (with those config ``overrides`` whose ids it has), the learned segmentation's
    weights loaded when it has them."""
    steps = inference_steps(inference_config(bundle_root, overrides))
    return Compose([steps["read"], steps["measure"]])


def read_references(data_dir: str | Path) -> dict[tuple[str, str], dict[str, str]]:
    """``(seriesuid, nodule_id) -> annotations.csv row`` of a real-geometry dataset."""
    path = Path(data_dir) / "annotations.csv"
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    if not rows or "long_axis_mm" not in rows[0]:
        raise NoduleBundleError(f"{path}: not a real-geometry dataset (no long_axis_mm column); write one with synth --geometry lidc")
    return {(r["seriesuid"], r["nodule_id"]): r for r in rows}


def _nodule_items(datalist: Path, split: str) -> list[dict]:
    """The nodules (not the false candidates) of ``split``, or of every split (``"all"``)."""
    splits = SPLITS if split == "all" else (split,)
    return [item for name in splits for item in load_nodule_datalist(datalist, name) if item.get("is_nodule", 1) != 0]


def measure_against_reference(data_dir: str | Path, split: str = "test", bundle_root: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Per nodule of ``split``: the measurement (``inference.json`` with config ``overrides``) and the
    outline's reference (see the module docstring)."""
    data_dir = Path(data_dir)
    references = read_references(data_dir)
    by_image: dict[str, list[dict]] = defaultdict(list)
    for item in _nodule_items(data_dir / "datalist.json", split):
        by_image[item["image"]].append(item)
    pipeline = measurement_transforms(bundle_root, overrides)
    rows, seconds = [], []
    for image, items in by_image.items():
        start = time.perf_counter()
        measured = pipeline({"image": image, "center_world_mm": [i["center_world_mm"] for i in items]})
        seconds.append((time.perf_counter() - start) / len(items))
        for k, item in enumerate(items):
            ref = references[(item["seriesuid"], item["nodule_id"])]
            rows.append({
                "seriesuid": item["seriesuid"], "nodule_id": item["nodule_id"],
                "texture": ref["texture"], "juxtapleural": ref["juxtapleural"] == "1", "juxtavascular": ref["juxtavascular"] == "1",
                **{f"reference_{key}": float(ref[key]) for key in ("long_axis_mm", "short_axis_mm", "volume_mm3", "solid_mean_diameter_mm", "diameter_mm")},
                **{key: float(measured[f"measured_{key}"][k]) for key in ("long_axis_mm", "mean_diameter_mm", "volume_mm3", "solid_mean_diameter_mm")},
                "measured_by": measured["measured_by"][k],
            })  # fmt: skip
    if not rows:
        raise NoduleBundleError(f"{data_dir / 'datalist.json'}: no nodules in the {split!r} split")
    return {"rows": rows, "seconds_per_nodule": float(np.median(seconds))}


def _size_errors(rows: list[dict]) -> dict:
    found = [r for r in rows if math.isfinite(r["long_axis_mm"])]
    long_errors = np.array([r["long_axis_mm"] - r["reference_long_axis_mm"] for r in found])
    mean_errors = np.array([r["mean_diameter_mm"] - r["reference_diameter_mm"] for r in found])
    volume_errors = np.array([abs(r["volume_mm3"] / r["reference_volume_mm3"] - 1.0) for r in found])
    if not found:
        return {"n": len(rows), "not_segmented": len(rows)}
    return {
        "n": len(rows), "not_segmented": len(rows) - len(found),
        "long_axis_mae_mm": float(np.abs(long_errors).mean()), "long_axis_bias_mm": float(long_errors.mean()),
        "mean_diameter_mae_mm": float(np.abs(mean_errors).mean()), "mean_diameter_bias_mm": float(mean_errors.mean()),
        "volume_median_ape": float(np.median(volume_errors)),
    }  # fmt: skip


def _category(texture: str, mean_mm: float, solid_mm: float) -> str | None:
    return lung_rads_category(texture, mean_mm, solid_mm) if math.isfinite(mean_mm) and mean_mm > 0 else None


def summarise_measurement(rows: list[dict]) -> dict:
    """Errors overall, per long-axis stratum, per texture and near the wall or a vessel; category agreement."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[f"long axis {_stratum(r['reference_long_axis_mm'], LONG_AXIS_STRATA_MM)}"].append(r)
        groups[f"texture {r['texture']}"].append(r)
        if r["juxtapleural"]:
            groups["juxtapleural"].append(r)
        if r["juxtavascular"]:
            groups["juxtavascular"].append(r)
    order = [f"long axis {_stratum(lo, LONG_AXIS_STRATA_MM)}" for lo, _ in LONG_AXIS_STRATA_MM]
    names = [n for n in order if n in groups] + sorted(n for n in groups if n not in order)
    reference = [_category(r["texture"], r["reference_diameter_mm"], r["reference_solid_mean_diameter_mm"]) for r in rows]
    given_texture = [_category(r["texture"], r["mean_diameter_mm"], r["solid_mean_diameter_mm"]) for r in rows]
    own_texture = [
        _category(texture_from_measurement(r["mean_diameter_mm"], r["solid_mean_diameter_mm"]), r["mean_diameter_mm"], r["solid_mean_diameter_mm"])
        if math.isfinite(r["mean_diameter_mm"]) else None for r in rows
    ]  # fmt: skip
    return {
        "all": _size_errors(rows),
        "groups": {name: _size_errors(groups[name]) for name in names},
        "lung_rads_agreement": float(np.mean([a == b for a, b in zip(given_texture, reference)])),
        "lung_rads_agreement_measured_texture": float(np.mean([a == b for a, b in zip(own_texture, reference)])),
        "measured_by_learned_mask": sum(r.get("measured_by") == "learned" for r in rows),
    }


def _auc(labels: list[int], scores: list[float]) -> float | None:
    if len(set(labels)) < 2:
        return None
    return float(compute_roc_auc(torch.tensor(scores, dtype=torch.float32), torch.tensor(labels)))


def _features(item: dict, references: dict) -> list[float]:
    """The item's ratings and reference diameter, and its texture score from ``annotations.csv``."""
    values = {**item, "texture_score": references.get((item["seriesuid"], item["nodule_id"]), {}).get("texture_score")}
    missing = [k for k in RATING_FEATURES if values.get(k) in (None, "")]
    if missing:
        raise NoduleBundleError(f"{item['image']}: nodule {item.get('nodule_id')} has no {', '.join(missing)}: not a real-geometry dataset")
    return [float(values[k]) for k in RATING_FEATURES]


def ratings_model(training: list[dict], references: dict):
    """Logistic regression (scikit-learn, standardised features) of malignancy on the readers'
    ratings, the texture score and the reference diameter of the labelled ``training`` items
    (``references``: :func:`read_references`)."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as err:
        raise NoduleBundleError(f"bench realism needs scikit-learn ({err}); pip install 'nodule-bundle[bench]'") from None
    labelled = [i for i in training if i.get("malignancy") in (0, 1)]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return model.fit(np.array([_features(i, references) for i in labelled]), np.array([i["malignancy"] for i in labelled]))


def read_malignancy_predictions(path: str | Path) -> dict[tuple[str, str], float]:
    """``(seriesuid, nodule_id) -> P(malignant)`` from an evaluation's ``predictions.csv``."""
    with open(path, newline="", encoding="utf-8") as file:
        return {(r["seriesuid"], r["nodule_id"]): float(r["malignancy_prob"]) for r in csv.DictReader(file) if r["malignancy_prob"]}


def malignancy_against_baselines(datalist: str | Path, predictions: str | Path, split: str = "test",
                                 measured: list[dict] | None = None) -> dict:  # fmt: skip
    """AUC on ``split`` of the network (``predictions``), the reference diameter, the measured mean
    diameter (``measured``: :func:`measure_against_reference`'s rows of that split, if given; a nodule
    not segmented ranks lowest) and the ratings' regression, overall and per stratum of the reference
    mean diameter; paired network-minus-diameter intervals."""
    from nodule_bundle.evaluation.metrics import paired_auc_difference

    network = read_malignancy_predictions(predictions)
    test = [i for i in _nodule_items(Path(datalist), split) if i.get("malignancy") in (0, 1)]
    missing = [i["nodule_id"] for i in test if (i["seriesuid"], i["nodule_id"]) not in network]
    if missing:
        raise NoduleBundleError(f"{predictions}: no prediction for {len(missing)} {split} nodules ({', '.join(missing[:3])}, ...)")
    references = read_references(Path(datalist).parent)
    model = ratings_model(_nodule_items(Path(datalist), "training"), references)
    ratings = model.predict_proba(np.array([_features(i, references) for i in test]))[:, 1]
    scores = {
        "network": [network[(i["seriesuid"], i["nodule_id"])] for i in test],
        "diameter": [float(i["diameter_mm"]) for i in test],
        "ratings_regression": [float(p) for p in ratings],
    }
    if measured is not None:
        diameters = {(r["seriesuid"], r["nodule_id"]): r["mean_diameter_mm"] for r in measured}
        scores["measured_diameter"] = [d if math.isfinite(d := diameters[(i["seriesuid"], i["nodule_id"])]) else 0.0 for i in test]
    labels = [int(i["malignancy"]) for i in test]
    strata: dict[str, list[int]] = {"all": list(range(len(test)))}
    for k, item in enumerate(test):
        strata.setdefault(_stratum(float(item["diameter_mm"]), MALIGNANCY_STRATA_MM), []).append(k)
    result = {}
    for name, members in strata.items():
        y = [labels[k] for k in members]
        entry = {"n": len(y), "malignant": sum(y), **{f"{s}_auc": _auc(y, [v[k] for k in members]) for s, v in scores.items()}}
        if entry["network_auc"] is not None and min(sum(y), len(y) - sum(y)) >= 5:
            paired = paired_auc_difference(y, [scores["network"][k] for k in members], [scores["diameter"][k] for k in members])
            entry["network_minus_diameter"] = {"difference": paired["difference"], "ci95": paired["ci95"]}
        result[name] = entry
    return result


def training_datalist(data: Path, phantom: Path | None, out: Path) -> Path:
    """``data``'s datalist, or with ``phantom`` (a phantom dataset) one whose training split also
    holds the phantom's training items (validation and test stay ``data``'s), written to ``out``
    with absolute image paths."""
    if phantom is None:
        return data / "datalist.json"
    splits = {split: load_nodule_datalist(data / "datalist.json", split) for split in ("training", "validation", "test")}
    splits["training"] += load_nodule_datalist(phantom / "datalist.json", "training")
    from nodule_bundle.core.io_utils import write_json_atomic

    write_json_atomic(out, {"description": f"{data} with {phantom}'s training split", **splits})
    return out


def bench_realism(data: str | Path, work: str | Path | None = None, epochs: int = 30, split: str = "test", seed: int = 0,
                  bundle_root: str | Path | None = None, configs: tuple[str, ...] = (), phantom: str | Path | None = None,
                  overrides: dict | None = None) -> dict:  # fmt: skip
    """Measurement on ``split`` of the real-geometry dataset ``data`` (the bundle's own models, if it
    has a learned segmentation); with ``work``, trained there from scratch on the training split
    (with the ``phantom`` dataset's training split beside ``data``'s; an earlier run's models in
    ``work/models`` are reused): the learned segmentation (``configs/train_segmentation.json``), which
    the measurement then uses, and the classifier (``configs/train.json`` merged with ``configs``,
    e.g. ``backbone_resnet``; config ``overrides``; ``epochs``), whose malignancy is evaluated on the
    validation split (where a recipe is chosen) and the test split. ``split`` ``"all"`` measures every
    split's nodules: a set of patients no recipe was chosen on (``synth --geometry lidc --first-scan``)."""
    from nodule_bundle.apps.workflow import find_bundle_root, run_bundle
    from nodule_bundle.core.io_utils import write_json_atomic

    data = Path(data)
    if split == "all" and work is not None:
        raise NoduleBundleError(f"{data}: split 'all' measures only; a network trained there is judged on its test split (leave out --work or name a split)")
    result: dict = {"benchmark": "realism", "data": str(data), "split": split}
    measuring = dict(overrides or {})
    if work is not None:
        work, root = Path(work), find_bundle_root(bundle_root)
        work.mkdir(parents=True, exist_ok=True)
        datalist = training_datalist(data, None if phantom is None else Path(phantom), work / "datalist.json")
        common = dict(dataset_dir=str(data), datalist=str(datalist), ckpt_dir=str(work / "models"), output_dir=str(work / "eval"),
                      num_workers=0, show_progress=False, seed=seed, **(overrides or {}))  # fmt: skip
        if not (work / "models" / "model.pt").is_file():
            start = time.perf_counter()
            run_bundle(["train", *configs], root, epochs=epochs, **common)
            write_json_atomic(work / "training.json", {"epochs": epochs, "seed": seed, "configs": list(configs), "overrides": overrides or {},
                                                       "phantom": None if phantom is None else str(phantom),
                                                       "train_s": time.perf_counter() - start})  # fmt: skip
        result["training"] = json.loads((work / "training.json").read_text()) if (work / "training.json").is_file() else None
        if has_reference_masks(datalist) and not (work / "models" / "segmenter.pt").is_file():  # the learned mask, on the same split
            segmentation = {k: common[k] for k in ("dataset_dir", "datalist", "ckpt_dir", "num_workers", "show_progress", "seed")}
            run_bundle(["train_segmentation"], root, output_dir=str(work / "eval" / "segmentation"), **segmentation)
        measuring = {"segmenter_path": str(work / "models" / "segmenter.pt"), **measuring}
    measured = measure_against_reference(data, split, bundle_root, measuring)
    result |= {"measurement": summarise_measurement(measured["rows"]), "seconds_per_nodule": measured["seconds_per_nodule"]}
    if work is not None:
        for split_name, key in (("validation", "malignancy_validation"), ("test", "malignancy")):
            evaluation = {**common, "output_dir": str(work / ("eval" if split_name == "test" else f"eval_{split_name}"))}
            run_bundle(["train", *configs, "evaluate"], root, evaluate_split=split_name, **evaluation)
            rows = measured["rows"] if split_name == split else measure_against_reference(data, split_name, bundle_root, measuring)["rows"]
            predictions = Path(evaluation["output_dir"]) / "predictions.csv"
            result[key] = malignancy_against_baselines(data / "datalist.json", predictions, split_name, rows)
    return result


def format_realism_result(result: dict) -> str:
    m = result["measurement"]
    lines = [f"measurement against the readers' consensus outline, {m['all']['n']} nodules ({result['split']} split of {result['data']})"]
    for name, g in [("all", m["all"]), *m["groups"].items()]:
        if "long_axis_mae_mm" not in g:
            lines.append(f"  {name:<26} n={g['n']:<4} none segmented")
            continue
        lines.append(
            f"  {name:<26} n={g['n']:<4} long axis MAE {g['long_axis_mae_mm']:.2f} bias {g['long_axis_bias_mm']:+.2f} mm | "
            f"mean diameter MAE {g['mean_diameter_mae_mm']:.2f} bias {g['mean_diameter_bias_mm']:+.2f} mm | "
            f"volume error {g['volume_median_ape']:.1%} | not segmented {g['not_segmented']}"
        )
    lines.append(f"  Lung-RADS category agreement {m['lung_rads_agreement']:.3f} (texture given), "
                 f"{m['lung_rads_agreement_measured_texture']:.3f} (texture from the mask)")  # fmt: skip
    lines.append(f"  {m['measured_by_learned_mask']} of {m['all']['n']} measured on the learned mask, "
                 f"{result['seconds_per_nodule']:.3f} s per nodule (median over scans)")  # fmt: skip
    for key, split in (("malignancy_validation", "validation"), ("malignancy", "test")):
        if key not in result:
            continue
        lines.append(f"malignancy ROC-AUC on the {split} split: network / diameter alone (outline) / measured diameter alone / "
                     "readers' ratings (logistic regression)")  # fmt: skip
        for name, e in result[key].items():
            scores = ("network", "diameter", "measured_diameter", "ratings_regression")
            aucs = " / ".join("n/a" if e.get(f"{s}_auc") is None else f"{e[f'{s}_auc']:.3f}" for s in scores)
            paired = e.get("network_minus_diameter")
            versus = f"  network - diameter {paired['difference']:+.3f} (95 % CI {paired['ci95'][0]:+.3f} to {paired['ci95'][1]:+.3f})" if paired else ""
            lines.append(f"  {name:<10} n={e['n']:<4} ({e['malignant']} malignant)  {aucs}{versus}")
    return "\n".join(lines)
