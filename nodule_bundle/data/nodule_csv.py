"""Nodule lists as LUNA16-style CSV: ``seriesuid,coordX,coordY,coordZ,diameter_mm`` (+ optional columns).

Coordinates are world millimetres in the scanner's LPS frame. Reading validates columns and numbers
and names the file, row and column of anything wrong.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path

from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.io_utils import write_text_atomic
from nodule_bundle.core.nodule import RATING_COLUMNS, TEXTURES, Nodule

COORD_COLUMNS = ("coordX", "coordY", "coordZ")
LUNA16_COLUMNS = ("seriesuid", *COORD_COLUMNS, "diameter_mm")
EXTRA_COLUMNS = ("malignancy", "texture", "nodule_id")


class NoduleListError(NoduleBundleError):
    """A nodule list that cannot be used; the message names the file and the problem."""


def _number(path: Path, row: int, column: str, text: str | None) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise NoduleListError(f"{path}: row {row}: column {column!r} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise NoduleListError(f"{path}: row {row}: column {column!r} is not finite: {text!r}")
    return value


def read_nodule_rows(path: str | Path, seriesuid: str | None = None) -> list[tuple[Nodule, dict[str, str]]]:
    """Each row's :class:`Nodule` with the row itself (for site-specific columns such as ``split``).

    Needs ``coordX,coordY,coordZ``; ``diameter_mm``, ``malignancy`` (0/1), ``texture``,
    ``seriesuid`` and ``nodule_id`` are optional. Only rows of ``seriesuid`` when it is given.
    """
    path = Path(path)
    if not path.is_file():
        raise NoduleListError(f"{path}: nodule list not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise NoduleListError(f"{path}: not a UTF-8 text CSV (byte {err.start} is {err.object[err.start]:#04x})") from None
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in COORD_COLUMNS if c not in columns]
        if missing:
            raise NoduleListError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'})")
        rows = []
        for row_no, row in enumerate(reader, start=2):
            uid = (row.get("seriesuid") or "").strip()
            if seriesuid is not None and uid and uid != seriesuid:
                continue
            center = tuple(_number(path, row_no, c, row[c]) for c in COORD_COLUMNS)
            diameter = _number(path, row_no, "diameter_mm", row["diameter_mm"]) if row.get("diameter_mm") else math.nan
            if diameter <= 0:
                raise NoduleListError(f"{path}: row {row_no}: diameter_mm must be positive, got {diameter}")
            malignancy = None
            if (row.get("malignancy") or "").strip():
                malignancy = int(_number(path, row_no, "malignancy", row["malignancy"]))
                if malignancy not in (0, 1):
                    raise NoduleListError(f"{path}: row {row_no}: malignancy must be 0 or 1, got {malignancy}")
            texture = (row.get("texture") or "").strip() or None
            if texture is not None and texture not in TEXTURES:
                raise NoduleListError(f"{path}: row {row_no}: texture must be one of {TEXTURES}, got {texture!r}")
            nodule_id = (row.get("nodule_id") or "").strip() or f"{len(rows) + 1}"
            nodule = Nodule(nodule_id, uid, center, diameter, malignancy, texture)  # type: ignore[arg-type]
            rows.append((nodule, {k: (v or "").strip() for k, v in row.items() if k is not None}))
    if not rows:
        which = f" for series {seriesuid}" if seriesuid else ""
        raise NoduleListError(f"{path}: no nodules{which}")
    return rows


def rating_fields(path: str | Path, row_no: int, row: dict[str, str]) -> dict[str, float]:
    """The :data:`RATING_COLUMNS` a CSV has, as numbers from one row (an empty cell: NaN, a missing
    rating; every row of the CSV gets the same keys, so that items collate)."""
    return {c: _number(Path(path), row_no, c, row[c]) if row[c] else math.nan for c in RATING_COLUMNS if c in row}


def read_nodule_csv(path: str | Path, seriesuid: str | None = None) -> list[Nodule]:
    """Nodules of a CSV (all rows, or those of ``seriesuid``); see :func:`read_nodule_rows`."""
    return [nodule for nodule, _ in read_nodule_rows(path, seriesuid)]


def write_nodule_csv(path: str | Path, nodules: Iterable[Nodule], extra: dict[str, list] | None = None) -> None:
    """LUNA16 columns first, then malignancy, texture, nodule_id and any ``extra`` columns; atomic."""
    nodules = list(nodules)
    extra = extra or {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*LUNA16_COLUMNS, *EXTRA_COLUMNS, *extra])
    for i, n in enumerate(nodules):
        malignancy = "" if n.malignancy is None else n.malignancy
        diameter = n.diameter_mm if math.isfinite(n.diameter_mm) else ""
        writer.writerow(
            [n.seriesuid, *n.center_world_mm, diameter, malignancy, n.texture or "", n.nodule_id]
            + [values[i] for values in extra.values()]
        )
    write_text_atomic(path, buf.getvalue())
