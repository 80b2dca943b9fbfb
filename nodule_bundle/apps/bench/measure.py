"""``bench measure``: measured mean diameters against the phantom's reference diameters."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from nodule_bundle.apps.bench.timing import summary


def bench_measure(scans: int = 8, seed: int = 0, first_index: int = 70, bundle_root: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Measured mean diameter (:class:`~nodule_bundle.measuring.transforms.NoduleMeasured` as the bundle's
    inference.json configures it, with config ``overrides``: its learned segmentation too, when it has
    one) against each phantom nodule's reference diameter, over ``scans`` phantom scans not used
    by the demo's dataset (indices from ``first_index``): MAE and bias per texture and margin, and the
    time per nodule."""
    from nodule_bundle.apps.bench.realism import measurement_transforms
    from nodule_bundle.core.nodule import texture_from_measurement
    from nodule_bundle.data.phantom import make_scan

    measure, errors, seconds, textures, learned = measurement_transforms(bundle_root, overrides).transforms[-1], {}, [], {}, 0
    measure.workers = 1
    for index in range(first_index, first_index + scans):
        scan = make_scan(seed, index)
        image = scan.image()
        start = time.perf_counter()
        measured = measure({"image": image, "center_world_mm": [pn.nodule.center_world_mm for pn in scan.nodules]})
        seconds.append((time.perf_counter() - start) / len(scan.nodules))
        learned += measured["measured_by"].count("learned")
        for k, pn in enumerate(scan.nodules):
            # not segmented (NaN) counts as 0 mm: missed by the whole diameter
            mean_diameter, solid = (float(np.nan_to_num(measured[key][k])) for key in ("measured_mean_diameter_mm", "measured_solid_mean_diameter_mm"))
            errors.setdefault(f"{pn.nodule.texture} {pn.margin}", []).append(mean_diameter - pn.nodule.diameter_mm)
            textures.setdefault(pn.nodule.texture, []).append(texture_from_measurement(mean_diameter, solid) == pn.nodule.texture)
    solid = [e for key, values in errors.items() if key.startswith("solid ") for e in values]

    def stats(values: list[float]) -> dict:
        return {"n": len(values), "mae_mm": float(np.mean(np.abs(values))), "bias_mm": float(np.mean(values))}

    return {
        "benchmark": "measure",
        "scans": scans,
        "groups": {key: stats(values) for key, values in sorted(errors.items())},
        "solid": stats(solid),
        "all": stats([e for values in errors.values() for e in values]),
        "texture_agreement": {texture: {"n": len(v), "agreement": float(np.mean(v))} for texture, v in sorted(textures.items())},
        "measured_by_learned_mask": learned,
        "seconds_per_nodule": summary(seconds),
    }


def format_measure_result(result: dict) -> str:
    lines = [f"measured mean diameter vs reference, {result['all']['n']} nodules of {result['scans']} phantom scans"]
    for name, g in [*result["groups"].items(), ("all solid", result["solid"]), ("all", result["all"])]:
        lines.append(f"  {name:<26} n={g['n']:<4} MAE {g['mae_mm']:.2f} mm  bias {g['bias_mm']:+.2f} mm")
    for texture, t in result["texture_agreement"].items():
        lines.append(f"  texture from the mask, {texture:<14} n={t['n']:<4} agrees {t['agreement']:.0%}")
    lines.append(f"  {result['measured_by_learned_mask']} measured on the learned mask, {result['seconds_per_nodule']['median_s']:.3f} s per nodule (median)")
    return "\n".join(lines)
