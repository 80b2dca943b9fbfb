"""Ignite handlers the configs attach to MONAI engines: the nodule report and a metrics JSON."""

from __future__ import annotations

import math
from pathlib import Path

from ignite.engine import Engine, Events

from nodule_bundle.io_utils import write_json_atomic
from nodule_bundle.report import nodule_finding, write_report


class NoduleReportWriter:
    """Collect every nodule's finding during an evaluator run; write the report when it completes.

    Args:
        output_dir: where ``report.json`` and ``report.csv`` go.
        model_version: the bundle version recorded in the report.
    """

    def __init__(self, output_dir: str | Path, model_version: str | None = None):
        self.output_dir, self.model_version = Path(output_dir), model_version
        self._scans: dict[str, dict] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self._scans.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        for item, output in zip(engine.state.batch, engine.state.output):
            image_name = Path(str(item["image"].meta["filename_or_obj"])).name
            uid = str(item.get("seriesuid") or image_name)
            scan = self._scans.setdefault(uid, {"seriesuid": uid, "image": image_name, "nodules": []})
            scan["nodules"].append(nodule_finding(item, output))

    def _write(self, engine: Engine) -> None:
        write_report(self.output_dir, list(self._scans.values()), self.model_version)


class MetricsJSONWriter:
    """Write ``engine.state.metrics`` and the number of evaluated nodules (items that are not false
    candidates) to a JSON file on completion."""

    def __init__(self, path: str | Path, count_key: str = "n_items"):
        self.path, self.count_key = Path(path), count_key
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count_items)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._count = 0

    def _count_items(self, engine: Engine) -> None:  # nodules, not the false candidates (nodule_true 0)
        self._count += sum(int(item.get("nodule_true", 1)) != 0 for item in engine.state.output)

    def _write(self, engine: Engine) -> None:
        metrics = {  # a metric without labels to compute it on (NaN) is written as null
            k: float(v) if math.isfinite(v) else None for k, v in engine.state.metrics.items() if isinstance(v, (int, float))
        }
        write_json_atomic(self.path, {**metrics, self.count_key: self._count})
