"""``bench read``: reading a DICOM CT series with the bundle's loader as inference.json configures it
(pydicom header checks, then ITK/GDCM, into MONAI's ``[x, y, z]`` MetaTensor in the stored dtype)
against, on the same files, ITK's plain series reader (``GDCMSeriesFileNames`` +
``ImageSeriesReader``, an ITK image: the floor) and MONAI's stock ``LoadImage(reader="ITKReader")``
on the directory (the same voxels as ours, without the checks)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import itk
import numpy as np
from monai.data import ITKReader
from monai.transforms import LoadImage

from nodule_bundle.apps.bench.timing import inference_config, inference_steps, time_alternating
from nodule_bundle.data.writers import write_dicom_series


def itk_plain_series_read(directory: Path):
    names = itk.GDCMSeriesFileNames.New(Directory=str(directory))
    return itk.imread(names.GetFileNames(names.GetSeriesUIDs()[0]))


def bench_dicom_read(shape: tuple[int, int, int] = (512, 512, 300), repeats: int = 5, spacing_mm=(0.7, 0.7, 1.0)) -> dict:
    """Write a ``shape`` CT series to a temporary folder and time both readers on it."""
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1500, size=shape, dtype=np.int16)
    affine = np.diag([*spacing_mm, 1.0])
    affine[:3, 3] = [-180.0, -180.0, -300.0]
    load = inference_steps(inference_config())["read"]  # the bundle's reader as inference.json configures it
    with tempfile.TemporaryDirectory(prefix="nodule-bench-") as tmp:
        directory = Path(tmp) / "series"
        write_dicom_series(directory, volume, affine, "1.2.826.0.1.3680043.8.498.42")
        ours = load({"image": str(directory)})["image"]
        baseline = itk.array_view_from_image(itk_plain_series_read(directory))
        if not np.array_equal(ours[0].numpy().transpose(2, 1, 0), baseline):
            raise AssertionError("the two readers disagree on the voxels")  # a benchmark of wrong answers is void
        monai_stock = LoadImage(reader=ITKReader(), ensure_channel_first=True, image_only=True)
        times = time_alternating(
            {
                "itk_series_reader": lambda: itk_plain_series_read(directory),
                "monai_itkreader": lambda: monai_stock(str(directory)),
                "bundle_loader": lambda: load({"image": str(directory)}),
            },
            repeats,
        )
    return {
        "benchmark": "dicom_read",
        "shape": list(shape),
        "spacing_mm": list(spacing_mm),
        "times": times,
        "ratio_bundle_to_itk": times["bundle_loader"]["median_s"] / times["itk_series_reader"]["median_s"],
        "ratio_bundle_to_monai_itkreader": times["bundle_loader"]["median_s"] / times["monai_itkreader"]["median_s"],
    }


def format_read_result(result: dict) -> str:
    lines = [f"DICOM series {'x'.join(map(str, result['shape']))}: median seconds over {result['times']['bundle_loader']['runs']} runs"]
    for name, t in result["times"].items():
        lines.append(f"  {name:<18} {t['median_s']:.3f} s  (min {t['min_s']:.3f}, max {t['max_s']:.3f})")
    lines.append(f"  ratio bundle / ITK series reader   {result['ratio_bundle_to_itk']:.2f}")
    lines.append(f"  ratio bundle / MONAI ITKReader     {result['ratio_bundle_to_monai_itkreader']:.2f}")
    return "\n".join(lines)
