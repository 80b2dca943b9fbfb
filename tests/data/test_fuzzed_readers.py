"""Property-based tests (hypothesis) of what users hand the bundle: any nodule CSV and any datalist
JSON is read or refused with an error that names the file, never a traceback from inside; the
command line's argument types answer every text with a value or argparse's usage error."""

from __future__ import annotations

import argparse
import json
import math
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodule_bundle.apps.arguments import config_override, positive_int
from nodule_bundle.data.datalist import DatalistError, load_nodule_datalist
from nodule_bundle.data.nodule_csv import COORD_COLUMNS, NoduleListError, read_nodule_rows

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COLUMNS = [*COORD_COLUMNS, "seriesuid", "diameter_mm", "malignancy", "texture", "nodule_id", "subtlety"]
CELLS = st.one_of(
    st.sampled_from(["", "0", "1", "2", "-3.5", "12.25", "nan", "inf", "-inf", "1e400", "solid", "ground-glass", " 7 ", "x"]),
    st.text(alphabet=string.printable + "é\x00\ufeff", max_size=8),
)


@st.composite
def nodule_csvs(draw) -> str:
    """A CSV with some of the columns (in any order, some twice), rows of any cells, ragged or not."""
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=len(COLUMNS) + 2))
    rows = draw(st.lists(st.lists(CELLS, min_size=0, max_size=len(header) + 2), max_size=5))
    quote = lambda cell: '"' + cell.replace('"', '""') + '"' if draw(st.booleans()) else cell  # noqa: E731
    return "\n".join(",".join(quote(c) for c in row) for row in [header, *rows])


def _refused_or_read(path: Path, read):
    try:
        return read(path)
    except (NoduleListError, DatalistError) as err:
        assert str(err).startswith(str(path)), err  # the message names the file
        return None


@FUZZ
@given(st.one_of(nodule_csvs(), st.text(max_size=200)))
def test_any_nodule_csv_is_read_or_refused_naming_the_file(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nodules.csv"
        path.write_text(text, encoding="utf-8")
        rows = _refused_or_read(path, read_nodule_rows)
    for nodule, _ in rows or []:  # what is read is usable: finite centres, a positive or unknown size
        assert all(math.isfinite(v) for v in nodule.center_world_mm)
        assert math.isnan(nodule.diameter_mm) or nodule.diameter_mm > 0
        assert nodule.malignancy in (None, 0, 1)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.sampled_from(["", "image.nii.gz", "training"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["image", "center_world_mm", "training", "mask", "x"]), inner, max_size=3)
    ),
    max_leaves=12,
)


NEAR_DATALISTS = st.fixed_dictionaries({"training": st.lists(st.fixed_dictionaries(
    {"image": st.sampled_from(["image.nii.gz", "missing.nii.gz", "", None, 3]),
     "center_world_mm": st.lists(st.one_of(st.floats(), st.integers(), st.booleans(), st.text(max_size=2)), min_size=2, max_size=4)},
    optional={"diameter_mm": st.floats(), "malignancy": st.sampled_from([0, 1, None])},
), max_size=3)})  # fmt: skip


@FUZZ
@given(st.one_of(JSON_VALUES, NEAR_DATALISTS))
def test_any_datalist_json_is_read_or_refused_naming_the_file(content):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "image.nii.gz").write_bytes(b"")
        path = Path(tmp) / "datalist.json"
        path.write_text(json.dumps(content), encoding="utf-8")
        items = _refused_or_read(path, lambda p: load_nodule_datalist(p, "training"))
        for item in items or []:
            assert Path(item["image"]).exists() and len(item["center_world_mm"]) == 3
            assert all(math.isfinite(v) for v in item["center_world_mm"])


@FUZZ
@given(st.text(max_size=12))
def test_argument_types_give_a_value_or_a_usage_error(text):
    for parse, valid in ((positive_int, lambda v: isinstance(v, int) and v >= 1), (config_override, lambda v: isinstance(v, tuple) and v[0])):
        try:
            assert valid(parse(text))
        except (argparse.ArgumentTypeError, ValueError):  # argparse turns both into "invalid value" and exit status 2
            pass


def test_a_well_formed_datalist_is_read(tmp_path):  # the fuzzed inputs above only sometimes are
    (tmp_path / "image.nii.gz").write_bytes(b"")
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [{"image": "image.nii.gz", "center_world_mm": [0, 1.5, -2]}]}))
    (item,) = load_nodule_datalist(path, "training")
    assert item["image"] == str(tmp_path / "image.nii.gz") and item["center_world_mm"] == [0, 1.5, -2]


def test_a_datalist_whose_items_are_not_objects_is_refused(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [1, "image.nii.gz"]}))
    with pytest.raises(DatalistError, match=r"training\[0\] is not an object"):
        load_nodule_datalist(path, "training")
