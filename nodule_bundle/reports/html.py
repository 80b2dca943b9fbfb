"""``report.html``: one self-contained page per scan (images embedded as data URIs, styles inline, no
script, a Content-Security-Policy that forbids fetching anything), so it opens offline and can be
mailed or archived as one file."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping

from nodule_bundle.reports.pictures import PLANES

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
section.nodule { margin: 1.5em 0; padding-top: 0.5em; border-top: 1px solid #ddd; }
section.nodule figure { display: inline-block; margin: 0 0.75em 0 0; text-align: center; }
figcaption { font-size: 0.8em; color: #555; } .note { color: #666; font-size: 0.85em; }
.warning { border: 2px solid #b00; background: #fee; padding: 0.5em; font-weight: bold; }
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_COLUMNS = (
    ("nodule", "nodule_id", "{}"), ("centre x, y, z (mm, LPS)", "center_world_mm", "{}"),
    ("measured mean (mm)", "measured_mean_diameter_mm", "{:.1f}"), ("long x short (mm)", None, None),
    ("network (mm)", "diameter_mm", "{:.1f}"), ("volume (mm³)", "measured_volume_mm3", "{:.0f}"),
    ("solid part (mm)", "measured_solid_mean_diameter_mm", "{:.1f}"), ("texture", "texture", "{}"),
    ("size band", "size_band_name", "{}"), ("Lung-RADS", "lung_rads_category", "{}"),
    ("P(malignant)", "malignancy_probability", "{:.2f}"), ("± (TTA)", "malignancy_uncertainty", "{:.2f}"),
    ("P(nodule)", "nodule_probability", "{:.2f}"), ("spiculation · lobulation · calcification (readers' scales)", "semantic_ratings", None),
)  # fmt: skip


def _cell(nodule: Mapping, key: str | None, fmt: str | None) -> str:
    if key is None:  # long x short axis
        long_, short = nodule.get("measured_long_axis_mm"), nodule.get("measured_short_axis_mm")
        return "–" if long_ is None or short is None else f"{long_:.1f} × {short:.1f}"
    value = nodule.get(key)
    if value is None or value == "":
        return "–"
    if key == "semantic_ratings":
        return " · ".join(f"{value[name]:.1f}" for name in ("spiculation", "lobulation", "calcification"))
    if key == "center_world_mm":
        return ", ".join(f"{v:.1f}" for v in value)
    text = fmt.format(value)
    return f"{text} ({nodule['texture_source']})" if key == "texture" and nodule.get("texture_source") == "measured" else text


def _slug(nodule_id: str) -> str:
    """``nodule_id`` as an HTML id: the page's anchors are ``nodule-<slug>`` and ``row-<slug>``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in nodule_id)


def render_report_html(scan: Mapping, views_png: Mapping[str, Mapping[str, bytes]], model: Mapping) -> str:
    """The page for one scan of ``report.json`` (``scan``), with ``views_png[nodule_id][plane]`` PNGs."""
    e = html.escape
    identity = "".join(
        f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in scan.items() if k not in ("nodules", "rejected_candidates", "detection")
    )
    head = "".join(f"<th>{e(title)}</th>" for title, _, _ in _COLUMNS)
    rows = "".join(
        f'<tr id="row-{_slug(n["nodule_id"])}">'
        + "".join(
            f'<td><a href="#nodule-{_slug(n["nodule_id"])}">{e(_cell(n, k, f))}</a></td>' if k == "nodule_id" else f"<td>{e(_cell(n, k, f))}</td>"
            for _, k, f in _COLUMNS
        )
        + "</tr>"
        for n in scan["nodules"]
    )
    sections = []
    for n in scan["nodules"]:
        figures = "".join(
            f'<figure><img alt="nodule {e(n["nodule_id"])} {plane}" width="192" height="192" '
            f'src="data:image/png;base64,{base64.b64encode(views_png[n["nodule_id"]][plane]).decode()}">'
            f"<figcaption>{plane}</figcaption></figure>"
            for plane in PLANES
            if plane in views_png.get(n["nodule_id"], {})
        )
        facts = " · ".join(f"{e(title)} {e(_cell(n, k, f))}" for title, k, f in _COLUMNS[2:])
        sections.append(f'<section class="nodule" id="nodule-{_slug(n["nodule_id"])}"><h2>{e(n["nodule_id"])}</h2>{figures}<p>{facts}</p></section>')
    rejected = scan.get("rejected_candidates", [])
    rejected_note = (
        f'<p class="note">{len(rejected)} detected candidate(s) were judged not to be nodules (P(nodule) below the threshold); '
        "they are listed in report.json under rejected_candidates.</p>"
        if rejected else ""
    )  # fmt: skip
    title = f"Lung nodules: {scan['seriesuid']}"
    search = scan.get("detection")
    search_note = (
        f'<p class="note">Whole-scan search: a lung mask of {search["lung_volume_ml"]:,} ml, {search["candidates"]} candidate(s).</p>'
        + (f'<p class="warning">{e(search["warning"])}</p>' if "warning" in search else "")
        if search else ""
    )  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>{e(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{e(title)}</h1>
<p class="note">{e(str(model.get("name")))} {e(str(model.get("version")))}. Research use: a second reader's aid, not a diagnosis.
Measured sizes come from the nodule's mask (outlined in the pictures); "network" is the regressed diameter, a second
opinion. Lung-RADS here is what the size and texture alone imply on a baseline scan. "± (TTA)" is the spread of
P(malignant) over flipped copies of the patch: large values mean the network is unsure.</p>
<table class="scan">{identity}</table>
{search_note}
<h2>{len(scan["nodules"])} nodule(s)</h2>
<table class="nodules"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
{rejected_note}
{"".join(sections)}
</body></html>
"""
