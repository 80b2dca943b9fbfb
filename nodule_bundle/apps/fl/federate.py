"""``nodule-bundle federate``: a local simulation of hospitals training the bundle together.

Each site gets its own phantom with its own scanner (slice thickness, noise) and nodule mix. Three
ways to train are compared on every site's test split: (a) each site alone, (b) FedAvg through
NVFlare's simulator (:mod:`nodule_bundle.apps.fl.job`), (c) one model on the pooled data, which no real
federation can have. The federated model becomes ``<out>/models/model.pt``; ``<out>/metadata.json``
(the bundle's metadata) records its metrics; ``<out>/federation.json`` holds the table.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from nodule_bundle.apps.workflow import find_bundle_root, run_bundle
from nodule_bundle.core.io_utils import write_json_atomic
from nodule_bundle.data.phantom import PhantomConfig
from nodule_bundle.data.synth import write_phantom_dataset


@dataclass(frozen=True)
class Site:
    """One hospital's scanner and case mix."""

    name: str
    slice_thickness_mm: float
    noise_hu: tuple[float, float]
    diameter_range_mm: tuple[float, float]


#: Deliberately different sites: thin quiet slices and small nodules (screening), thick noisy
#: slices and large nodules (a referral centre), and one in between.
SITES = (
    Site("site-1", 1.0, (10.0, 20.0), (3.0, 18.0)),
    Site("site-2", 2.5, (30.0, 45.0), (6.0, 30.0)),
    Site("site-3", 1.5, (20.0, 30.0), (3.0, 30.0)),
    Site("site-4", 2.0, (15.0, 25.0), (4.0, 22.0)),
)
WAYS = ("site alone", "federated", "central (pooled)")


def write_site_data(out: Path, sites: int, scans: int, test_scans: int, seed: int, fov_mm: tuple[float, float, float]) -> list[Path]:
    """A phantom dataset per site under ``out/<site name>/``: ``scans`` scans to train on (one of them
    for validation) and ``test_scans`` more in its test split; returns their folders."""
    if not 2 <= sites <= len(SITES):
        raise ValueError(f"sites must be 2..{len(SITES)}, got {sites}")
    if scans < 2:
        raise ValueError(f"a site needs at least 2 scans to train on (one for validation), got {scans}")
    total = scans + test_scans
    folders = []
    for k, site in enumerate(SITES[:sites]):
        cfg = PhantomConfig(fov_mm=fov_mm, slice_thicknesses_mm=(site.slice_thickness_mm,), noise_hu=site.noise_hu,
                            diameter_range_mm=site.diameter_range_mm, nodules_per_scan=(8, 14))  # fmt: skip
        write_phantom_dataset(out / site.name, total, seed + 1000 * k, formats=("nifti",), cfg=cfg, negatives_per_scan=8,
                              split_fractions=(1 / total, test_scans / total))  # fmt: skip
        folders.append(out / site.name)
    return folders


def pooled_datalist(site_dirs: list[Path], path: Path) -> Path:
    """One datalist of every site's splits, image paths made absolute."""
    pooled: dict[str, list] = {}
    for folder in site_dirs:
        for split, items in json.loads((folder / "datalist.json").read_text()).items():
            if isinstance(items, list):
                pooled.setdefault(split, []).extend({**i, "image": str(folder / i["image"])} for i in items)
    write_json_atomic(path, pooled)
    return path


def _test_auc(root: Path, site_dir: Path, models: Path, out: Path) -> float | None:
    run_bundle(["train", "evaluate"], root, dataset_dir=str(site_dir), datalist=str(site_dir / "datalist.json"), ckpt_dir=str(models),
               output_dir=str(out), num_workers=0, show_progress=False)  # fmt: skip
    return json.loads((out / "metrics.json").read_text()).get("malignancy_auc")


def federate(out: str | os.PathLike, sites: int = 3, rounds: int = 5, local_epochs: int = 2, scans_per_site: int = 7, test_scans_per_site: int = 6,
             seed: int = 0, fov_mm: tuple[float, float, float] = (160.0, 140.0, 100.0), bundle_root: str | os.PathLike | None = None) -> dict:  # fmt: skip
    """Run the comparison into ``out``; returns the table (also ``out/federation.json``).

    Each site trains on ``scans_per_site`` scans (one of them its validation split) and is tested on
    ``test_scans_per_site`` more, which no training sees."""
    from nodule_bundle.apps.fl.job import fedavg_recipe, initial_model, server_app, simulate

    root, out = find_bundle_root(bundle_root), Path(out)
    site_dirs = write_site_data(out / "data", sites, scans_per_site, test_scans_per_site, seed, fov_mm)
    epochs = rounds * local_epochs  # every way trains the same number of epochs on its data
    common = dict(num_workers=0, show_progress=False, seed=seed, epochs=epochs)
    for folder in site_dirs:
        run_bundle(["train"], root, dataset_dir=str(folder), datalist=str(folder / "datalist.json"), ckpt_dir=str(out / "alone" / folder.name),
                   output_dir=str(out / "alone" / folder.name / "eval"), **common)  # fmt: skip
    pooled = pooled_datalist(site_dirs, out / "central" / "datalist.json")
    run_bundle(["train"], root, dataset_dir=str(out / "central"), datalist=str(pooled), ckpt_dir=str(out / "central" / "models"),
               output_dir=str(out / "central" / "eval"), **common)  # fmt: skip
    recipe = fedavg_recipe(root, out / "data", out / "fl_sites", sites, rounds, local_epochs, audit=out / "audit.jsonl", seed=seed,
                           initial_ckpt=initial_model(out / "initial_model.pt", seed))  # fmt: skip
    result = simulate(recipe, sites, out / "simulation")
    best = torch.load(server_app(result) / "best_FL_global_model.pt", map_location="cpu", weights_only=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    torch.save(best["model"], out / "models" / "model.pt")
    table = {}
    for folder in site_dirs:
        table[folder.name] = {
            "site alone": _test_auc(root, folder, out / "alone" / folder.name, out / "test" / folder.name / "alone"),
            "federated": _test_auc(root, folder, out / "models", out / "test" / folder.name / "federated"),
            "central (pooled)": _test_auc(root, folder, out / "central" / "models", out / "test" / folder.name / "central"),
        }
    means = {way: _mean([row[way] for row in table.values()]) for way in WAYS}
    summary = {"sites": sites, "rounds": rounds, "local_epochs": local_epochs, "scans_per_site": scans_per_site,
               "test_scans_per_site": test_scans_per_site, "test_malignancy_auc": table, "mean": means}  # fmt: skip
    write_json_atomic(out / "federation.json", summary)
    metadata = json.loads((root / "configs" / "metadata.json").read_text())
    metadata["eval_metrics"] = {"federated_mean_test_malignancy_auc": means["federated"],
                                **{f"federated_test_malignancy_auc_{s}": row["federated"] for s, row in table.items()}}  # fmt: skip
    write_json_atomic(out / "metadata.json", metadata)
    shutil.rmtree(out / "fl_sites", ignore_errors=True)  # the sites' scratch checkpoints
    return summary


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def format_federation(summary: dict) -> str:
    lines = [f"test malignancy AUC per site ({summary['sites']} sites, {summary['rounds']} rounds x {summary['local_epochs']} local epochs)",
             f"  {'site':<10}" + "".join(f"{way:>20}" for way in WAYS)]  # fmt: skip
    for site, row in [*summary["test_malignancy_auc"].items(), ("mean", summary["mean"])]:
        lines.append(f"  {site:<10}" + "".join(f"{'n/a' if row[w] is None else f'{row[w]:.3f}':>20}" for w in WAYS))
    return "\n".join(lines)
