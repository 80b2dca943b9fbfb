"""``nodule-bundle report``: the inference bundle over many scans, one report folder each.

A scan that fails is recorded in ``summary.csv`` and the run goes on. Each scan's report is written
to a hidden folder and renamed to ``<out>/<scan>/`` only when complete, so a folder that exists is a
finished report: a second run over the same scans skips those and retries the failures.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from nodule_bundle.core.errors import NoduleBundleError, find_user_error
from nodule_bundle.core.io_utils import write_text_atomic
from nodule_bundle.reading.image_index import IMAGE_SUFFIXES, index_images, scan_stem

SUMMARY_COLUMNS = ("scan", "image", "status", "nodules", "rejected_candidates", "max_malignancy_probability", "highest_lung_rads", "seconds", "error")
_LUNG_RADS_ORDER = ("2", "3", "4A", "4B")


class ScanListError(NoduleBundleError):
    """``--images`` names no scans, or a list file names paths that do not exist."""


def list_scans(images: str | os.PathLike) -> list[Path]:
    """The scans ``images`` names: a folder (image files and DICOM series folders under it), or a
    text file with one path per line (relative paths from the file's folder; ``#`` comments)."""
    images = Path(images)
    if images.is_dir():
        found = sorted(set(index_images(images).values()))
        scans = [p for p in found if p.is_file() or not any(q != p and q.is_relative_to(p) for q in found)]
    elif images.is_file():
        lines = [line.strip() for line in images.read_text().splitlines()]
        scans = [Path(line) if Path(line).is_absolute() else images.parent / line for line in lines if line and not line.startswith("#")]
        missing = [str(p) for p in scans if not p.exists()]
        if missing:
            raise ScanListError(f"{images}: lists scans that do not exist: {', '.join(missing[:5])}")
    else:
        raise ScanListError(f"{images}: no such folder or list file")
    if not scans:
        raise ScanListError(f"{images}: no scans found (image files {', '.join(IMAGE_SUFFIXES)} or DICOM series folders)")
    names: dict[str, Path] = {}
    for scan in scans:
        if names.setdefault(scan_name(scan), scan) != scan:
            raise ScanListError(f"{images}: {names[scan_name(scan)]} and {scan} would share the report folder {scan_name(scan)!r}; rename one")
    return scans


def scan_name(path: Path) -> str:
    """A scan's report folder name: the file name without its suffix, or the DICOM folder's name."""
    return scan_stem(path) if path.is_file() else path.name


def _summary_row(name: str, image: Path, report_dir: Path, seconds: float) -> dict:
    (scan,) = json.loads((report_dir / "report.json").read_text())["scans"]
    nodules = scan["nodules"]
    categories = [n["lung_rads_category"] for n in nodules if n.get("lung_rads_category")]
    return {
        "scan": name, "image": str(image), "status": "done", "nodules": len(nodules),
        "rejected_candidates": len(scan.get("rejected_candidates", [])),
        "max_malignancy_probability": max((n["malignancy_probability"] for n in nodules), default=""),
        "highest_lung_rads": max(categories, key=_LUNG_RADS_ORDER.index, default=""), "seconds": round(seconds, 1), "error": "",
    }  # fmt: skip


def _write_summary(path: Path, rows: Sequence[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def report_scans(
    images: str | os.PathLike,
    out: str | os.PathLike,
    nodules: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    bundle_root: str | os.PathLike | None = None,
    include_phi: bool = False,
    **overrides,
) -> list[dict]:
    """Run ``configs/inference.json`` on every scan of ``images`` (see :func:`list_scans`) into
    ``out/<scan>/``; with ``nodules`` (a CSV with a ``seriesuid`` column) each scan's rows are
    classified, without it each scan's nodules are detected. Writes ``out/summary.csv`` after every
    scan and returns its rows."""
    from nodule_bundle.apps.workflow import find_bundle_root, model_weights, run_inference

    root, out = find_bundle_root(bundle_root), Path(out)
    model = model_weights(model, root)
    scans = list_scans(images)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for image in tqdm(scans, desc="reports", unit="scan", disable=None):
        name, start = scan_name(image), time.monotonic()
        final = out / name
        if final.is_dir():  # finished by an earlier run
            rows.append({**_summary_row(name, image, final, 0.0), "status": "done earlier"})
        else:
            partial = out / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            try:  # quiet: the engines log each failure with a traceback; the summary has one line
                run_inference(
                    root, model, image=str(image), nodules=str(nodules) if nodules else None, seriesuid=None,
                    output_dir=str(partial), include_phi=include_phi, **overrides,
                )  # fmt: skip
                os.replace(partial, final)
                rows.append(_summary_row(name, image, final, time.monotonic() - start))
            except Exception as err:  # one bad scan must not stop the others
                cause = find_user_error(err)
                message = str(cause) if cause else f"{type(err).__name__}: {' '.join(str(err).split())}"
                rows.append({"scan": name, "image": str(image), "status": "failed", "seconds": round(time.monotonic() - start, 1), "error": message})
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        _write_summary(out / "summary.csv", rows)
    return rows
