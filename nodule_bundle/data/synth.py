"""``nodule-bundle synth``: write a phantom dataset as the bundle reads real ones.

Layout of ``out``::

    images/<seriesuid>.nii.gz      NIfTI (default format)
    mhd/<seriesuid>.mhd|.raw       MHD/raw, as LUNA16 ships scans
    nrrd/<seriesuid>.nrrd          NRRD
    dicom/<seriesuid>/IM*.dcm      a DICOM CT series
    annotations.csv                LUNA16 columns + malignancy, texture, nodule_id, margin, calcified
    datalist.json                  MONAI datalist (training / validation / test, split by scan)

``datalist.json`` is written last, so a dataset without it is incomplete.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from nodule_bundle.data.datalist import build_datalist, nodule_item
from nodule_bundle.data.nodule_csv import write_nodule_csv
from nodule_bundle.data.phantom import PhantomConfig, PhantomScan, make_scan
from nodule_bundle.data.writers import write_dicom_series, write_itk_image, write_nifti
from nodule_bundle.io_utils import write_json_atomic

FORMATS = ("nifti", "mhd", "nrrd", "dicom")


def _image_path(fmt: str, seriesuid: str) -> str:
    paths = {"nifti": "images/{}.nii.gz", "mhd": "mhd/{}.mhd", "nrrd": "nrrd/{}.nrrd", "dicom": "dicom/{}"}
    return paths[fmt].format(seriesuid)


def _write_scan(task: tuple[Path, int, int, PhantomConfig, tuple[str, ...]]) -> PhantomScan:
    out, seed, index, cfg, formats = task
    import torch

    torch.set_num_threads(1)
    scan = make_scan(seed, index, cfg)
    writers = {
        "nifti": lambda p: write_nifti(p, scan.volume_hu, scan.affine_lps),
        "mhd": lambda p: write_itk_image(p, scan.volume_hu, scan.affine_lps),
        "nrrd": lambda p: write_itk_image(p, scan.volume_hu, scan.affine_lps),
        "dicom": lambda p: write_dicom_series(p, scan.volume_hu, scan.affine_lps, scan.seriesuid),
    }
    for fmt in formats:
        writers[fmt](out / _image_path(fmt, scan.seriesuid))
    return scan


def write_phantom_dataset(
    out: str | Path,
    scans: int,
    seed: int = 0,
    formats: Sequence[str] = ("nifti",),
    cfg: PhantomConfig = PhantomConfig(),
    workers: int | None = None,
) -> Path:
    """Generate ``scans`` phantom scans into ``out``; returns the path of ``datalist.json``."""
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {list(formats)}")
    if scans < 1:
        raise ValueError(f"scans must be >= 1, got {scans}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(out, seed, i, cfg, tuple(formats)) for i in range(scans)]
    workers = workers or min(scans, os.cpu_count() or 1)
    progress = dict(total=scans, desc="phantom scans", unit="scan", disable=None)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(tqdm(pool.map(_write_scan, tasks), **progress))
    else:
        results = [_write_scan(t) for t in tqdm(tasks, **progress)]
    image_format = next(f for f in FORMATS if f in formats)
    items = {
        s.seriesuid: [nodule_item(_image_path(image_format, s.seriesuid), pn.nodule) for pn in s.nodules] for s in results
    }
    all_nodules = [pn for s in results for pn in s.nodules]
    write_nodule_csv(
        out / "annotations.csv",
        [pn.nodule for pn in all_nodules],
        extra={"margin": [pn.margin for pn in all_nodules], "calcified": [int(pn.calcified) for pn in all_nodules]},
    )
    datalist_path = out / "datalist.json"
    write_json_atomic(
        datalist_path,
        build_datalist(
            items,
            seed,
            description="nodule-bundle synthetic chest-CT phantom",
            phantom={"seed": seed, "scans": scans, "formats": list(formats), **asdict(cfg)},
        ),
    )
    return datalist_path
