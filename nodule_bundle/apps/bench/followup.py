"""``bench followup``: phantom follow-ups through registration, matching and change, against the truth
each series was drawn with."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

from nodule_bundle.apps.bench.timing import summary


def _truth(prior, current) -> dict:
    """The reference sizes of one nodule as :func:`~nodule_bundle.followup.compare.change_row` reads them."""
    found = {}
    for side, n in (("prior", prior), ("current", current)):
        found[side] = None if n is None else {"mean_diameter_mm": n.nodule.diameter_mm, "volume_mm3": n.volume_mm3, "solid_mean_diameter_mm": n.solid_mm,
                                              "texture": n.nodule.texture}  # fmt: skip
    return found


def _series(geometry: str, patients: int, seed: int, first_index: int, series_cfg):
    """Each patient's scans in time: phantom patients from ``first_index``, or the LIDC-IDRI scans' outlines from that index."""
    from nodule_bundle.data.followup_phantom import make_followup_scan, schedule

    if geometry == "lidc":
        from nodule_bundle.data.followup_real_geometry import make_real_followup_scan
        from nodule_bundle.data.real_geometry import outlined_scans

        sources = outlined_scans(limit=first_index + patients)[first_index:]
        for index, source in enumerate(sources, start=first_index):
            yield [make_real_followup_scan(seed, index, t, source, fcfg=series_cfg) for t in range(series_cfg.timepoints)], schedule(seed, index, series_cfg)
    else:
        for index in range(first_index, first_index + patients):
            yield [make_followup_scan(seed, index, t, fcfg=series_cfg) for t in range(series_cfg.timepoints)], schedule(seed, index, series_cfg)


def bench_followup(patients: int = 8, seed: int = 0, timepoints: int = 3, first_index: int = 70, bundle_root: str | Path | None = None,
                   geometry: str = "phantom") -> dict:  # fmt: skip
    """Follow-up series (``geometry``: phantom patients, :mod:`nodule_bundle.data.followup_phantom`, indices
    from ``first_index``: not the demo's; or ``lidc``, LIDC-IDRI's consensus outlines in synthetic chest CT,
    :mod:`nodule_bundle.data.followup_real_geometry`, from the LIDC scan of that index on), ``patients``
    patients of ``timepoints`` scans each, compared pair by pair (each
    scan with the one before it, and the last with the first): every nodule of each scan given by its
    centre, as a reader's list would give it, measured as inference.json measures (its
    ``NoduleMeasured``), the prior registered to the current scan, the nodules matched and their change
    computed. Against the truth: pairs matched right, wrong and missed (beside matching by the scanner's
    coordinates alone, no registration, in the same run), the status (new, growing, stable, shrinking,
    resolved) by Lung-RADS' growth rule (the truth's from its reference mean diameters' difference),
    the VDT's error (median absolute log2 ratio, for nodules of 6 mm and more whose volume changed by
    25 % or more), the Lung-RADS category with the prior and the
    time per pair (registration, matching, change). And the MONAI Label click's path, which has no prior
    list: each current nodule looked for on the prior where the registration carries it
    (:func:`~nodule_bundle.followup.prior_nodule.prior_nodule_centre`) and measured there: found on the
    right nodule, on another, missed; for a new nodule, nothing measured there (without the network,
    which the app also asks where the detector found no candidate)."""
    from nodule_bundle.apps.bench.timing import inference_config, inference_steps
    from nodule_bundle.core.nodule import texture_from_measurement
    from nodule_bundle.data.followup_phantom import FollowupConfig
    from nodule_bundle.followup.compare import change_row, compare_findings
    from nodule_bundle.followup.matching import match_nodules
    from nodule_bundle.followup.registration import register
    from nodule_bundle.measuring.measure import MEASUREMENT_KEYS

    series_cfg = FollowupConfig(timepoints=timepoints)
    steps = inference_steps(inference_config(bundle_root))
    measure, detect = steps["measure"], steps["detect"]
    counts = {"pairs": 0, "right": 0, "wrong": 0, "missed": 0, "right_unregistered": 0, "wrong_unregistered": 0}
    clicked = Counter()
    statuses, categories, vdt_errors, seconds, moved = [], [], [], [], []
    for scans, dates in _series(geometry, patients, seed, first_index, series_cfg):
        days = [d for _, d in dates]
        images = [s.image() for s in scans]
        findings = []
        for scan, image in zip(scans, images):
            measured = measure({"image": image, "center_world_mm": [n.nodule.center_world_mm for n in scan.nodules]})
            found = [{"nodule_id": n.track_id, "center_world_mm": list(n.nodule.center_world_mm), **{key: measured[key][k] for key in MEASUREMENT_KEYS}}
                     for k, n in enumerate(scan.nodules)]  # fmt: skip
            for f in found:
                f.update({key: None for key in MEASUREMENT_KEYS if not math.isfinite(f[key])})
                f["texture"] = texture_from_measurement(f["measured_mean_diameter_mm"], f["measured_solid_mean_diameter_mm"]) if f["measured_volume_mm3"] else None
                f["diameter_mm"] = 0.1  # no network here to stand in where no mask could be grown: such a nodule counts as (almost) gone
            findings.append(found)
        pairs = [(t - 1, t) for t in range(1, timepoints)] + ([(0, timepoints - 1)] if timepoints > 2 else [])
        for a, b in pairs:
            start = time.perf_counter()
            registration = register(images[a], images[b])
            rows = compare_findings(registration, findings[a], findings[b], days[b] - days[a])
            seconds.append(time.perf_counter() - start)
            truth = {n.track_id: n for n in scans[b].nodules}
            before = {n.track_id: n for n in scans[a].nodules}
            clicked.update(_clicks_on_prior(registration, images[a], scans[b].nodules, before, measure, detect.candidates))
            both = set(truth) & set(before)
            counts["pairs"] += len(both)
            for row in rows:
                if row["prior_nodule_id"] and row["current_nodule_id"]:
                    counts["right" if row["prior_nodule_id"] == row["current_nodule_id"] else "wrong"] += 1
                track = row["current_nodule_id"] or row["prior_nodule_id"]
                reference = _truth(before.get(track), truth.get(track))
                true_row = change_row(reference["prior"], reference["current"], days[b] - days[a], measured=False)
                statuses.append((row["status"], true_row["status"]))
                if row["current_nodule_id"] is not None:
                    categories.append((row["lung_rads_category"], true_row["lung_rads_category"]))
                paired = row["prior_nodule_id"] == row["current_nodule_id"]
                if paired and track in both and reference["current"]["mean_diameter_mm"] >= 6.0:
                    ratio = reference["current"]["volume_mm3"] / reference["prior"]["volume_mm3"]
                    if abs(ratio - 1.0) >= 0.25 and row.get("vdt_days") is not None:
                        true_vdt = true_row["vdt_days"]
                        vdt_errors.append(abs(math.log2(row["vdt_days"] / true_vdt)) if row["vdt_days"] * true_vdt > 0 else math.inf)
            counts["missed"] += len(both) - sum(1 for r in rows if r["prior_nodule_id"] and r["prior_nodule_id"] == r["current_nodule_id"])
            unregistered = match_nodules(np.array([f["center_world_mm"] for f in findings[a]]), np.array([f["center_world_mm"] for f in findings[b]]))
            for m in unregistered:
                if m.prior is not None and m.current is not None:
                    right = findings[a][m.prior]["nodule_id"] == findings[b][m.current]["nodule_id"]
                    counts["right_unregistered" if right else "wrong_unregistered"] += 1
            moved += [float(np.linalg.norm(np.subtract(truth[t].nodule.center_world_mm, before[t].nodule.center_world_mm))) for t in sorted(both)]
    finite = [e for e in vdt_errors if math.isfinite(e)]
    return {
        "benchmark": "followup",
        "geometry": geometry,
        "patients": patients,
        "timepoints": timepoints,
        "pairs_of_scans": len(seconds),
        "nodule_pairs": counts["pairs"],
        "matched_right": counts["right"] / max(counts["pairs"], 1),
        "matched_wrong": counts["wrong"],
        "missed": counts["missed"],
        "matched_right_without_registration": counts["right_unregistered"] / max(counts["pairs"], 1),
        "matched_wrong_without_registration": counts["wrong_unregistered"],
        "median_displacement_mm": float(statistics.median(moved)) if moved else math.nan,
        "status_agreement": float(np.mean([m == t for m, t in statuses])) if statuses else math.nan,
        "status_confusion": _confusion(statuses),
        "lung_rads_agreement": float(np.mean([m == t for m, t in categories])) if categories else math.nan,
        "lung_rads_confusion": _confusion(categories),
        "vdt_nodules": len(vdt_errors),
        "vdt_median_abs_log2_error": float(statistics.median(vdt_errors)) if vdt_errors else math.nan,
        "vdt_wrong_sign": len(vdt_errors) - len(finite),
        "seconds_per_pair": summary(seconds),
        "click_prior_found_right": clicked["right"] / max(clicked["right"] + clicked["wrong"] + clicked["missed"], 1),
        "click_prior_found_wrong": clicked["wrong"],
        "click_prior_missed": clicked["missed"],
        "click_new_nodules": clicked["new"] + clicked["false"],
        "click_new_found_nothing": clicked["new"] / max(clicked["new"] + clicked["false"], 1),
    }


def _clicks_on_prior(registration, prior_image, current_nodules, before: dict, measure, candidates) -> Counter:
    """Each current nodule looked for on the prior as a MONAI Label click looks for it: ``right`` (measured
    on the prior at its own nodule: the place within the nodule's radius, at least 3 mm, of its prior
    centre, and nearer that than any other), ``wrong`` (measured elsewhere), ``missed`` (nothing
    measured); a nodule new since: ``new`` (nothing measured there) or ``false``."""
    from nodule_bundle.followup.prior_nodule import prior_nodule_centre

    carried = registration.current_to_prior(np.array([n.nodule.center_world_mm for n in current_nodules], dtype=np.float64).reshape(-1, 3))
    places = [prior_nodule_centre(prior_image, point, candidates) for point in carried]
    inside = [k for k, place in enumerate(places) if place is not None]
    volumes = measure({"image": prior_image, "center_world_mm": [places[k][0].tolist() for k in inside]})["measured_volume_mm3"] if inside else []
    found = {k: places[k][0] for k, volume in zip(inside, volumes) if math.isfinite(volume) and volume > 0}
    outcome = Counter()
    for k, nodule in enumerate(current_nodules):
        earlier = before.get(nodule.track_id)
        if earlier is None:
            outcome["false" if k in found else "new"] += 1
        elif k not in found:
            outcome["missed"] += 1
        else:
            distances = {t: float(np.linalg.norm(found[k] - np.asarray(n.nodule.center_world_mm))) for t, n in before.items()}
            own = distances[nodule.track_id] <= max(3.0, earlier.nodule.diameter_mm / 2) and min(distances, key=distances.get) == nodule.track_id
            outcome["right" if own else "wrong"] += 1
    return outcome


def _confusion(pairs: list[tuple]) -> dict[str, int]:
    """How often each truth was given as something else: ``{"<truth> as <measured>": count}`` (``None``: none)."""
    counts = Counter((str(truth), str(measured)) for measured, truth in pairs if measured != truth)
    return {f"{truth} as {measured}": n for (truth, measured), n in sorted(counts.items())}


def format_followup_result(result: dict) -> str:
    r = result
    lines = [
        f"follow-ups: {r['patients']} {'LIDC-IDRI (real geometry)' if r['geometry'] == 'lidc' else 'phantom'} patients, {r['pairs_of_scans']} pairs of scans, {r['nodule_pairs']} nodules seen in both scans of a pair"
        f" (moved {r['median_displacement_mm']:.1f} mm in the scanner's coordinates, median)",
        f"  matched right        {r['matched_right']:.3f}  (wrong {r['matched_wrong']}, missed {r['missed']});"
        f" without registration {r['matched_right_without_registration']:.3f} (wrong {r['matched_wrong_without_registration']})",
        f"  status               {r['status_agreement']:.3f} agree with the truth (new, growing, stable, shrinking, resolved)",
        f"  Lung-RADS with prior {r['lung_rads_agreement']:.3f} agree with the truth's category",
        f"  VDT                  median |log2(measured / true)| {r['vdt_median_abs_log2_error']:.3f} over {r['vdt_nodules']} nodules >= 6 mm with a volume change >= 25 %"
        f" ({r['vdt_wrong_sign']} with the wrong sign)",
        f"  time per pair        {r['seconds_per_pair']['median_s']:.2f} s (registration, matching, change; median)",
        f"  a click, no prior list: the nodule found on the prior {r['click_prior_found_right']:.3f} (elsewhere {r['click_prior_found_wrong']},"
        f" missed {r['click_prior_missed']}); new nodules with nothing found there {r['click_new_found_nothing']:.3f} of {r['click_new_nodules']}",
    ]
    if r["status_confusion"]:
        lines.append("  status errors: " + ", ".join(f"{k} {v}" for k, v in r["status_confusion"].items()))
    if r["lung_rads_confusion"]:
        lines.append("  category errors (truth as measured): " + ", ".join(f"{k} {v}" for k, v in r["lung_rads_confusion"].items()))
    return "\n".join(lines)
