"""The program each site runs under NVFlare's Client API: MONAI's ``MonaiAlgo`` on the bundle, with
this site's datalist (``<data_root>/<site name>/datalist.json``).

Every round: receive the global weights, evaluate them on the site's validation split, train
``local_epochs`` on its training split, send back the new weights with the metrics. Nothing else
leaves the site: no images, no patches, no per-nodule results.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

#: The validation metric that tells the server which global model is best (the bundle's own score).
KEY_METRIC = "val_score"


def site_overrides(data_root: Path, site: str, work: Path) -> dict:
    """Config overrides that point the bundle at one site's data and scratch folders."""
    site_dir = data_root / site
    return {
        "dataset_dir": str(site_dir), "datalist": str(site_dir / "datalist.json"), "num_workers": 0,
        "ckpt_dir": str(work / site / "models"), "output_dir": str(work / site / "eval"), "show_progress": False,
    }  # fmt: skip


def main() -> None:
    import nvflare.client as flare
    from monai.fl.client import MonaiAlgo
    from monai.fl.utils.constants import FlStatistics
    from monai.fl.utils.exchange_object import ExchangeObject

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", required=True)
    parser.add_argument("--data_root", required=True, type=Path, help="one folder per site, named like the site")
    parser.add_argument("--work_root", required=True, type=Path, help="where each site keeps its checkpoints and logs")
    parser.add_argument("--local_epochs", type=int, default=1)
    parser.add_argument("--total_epochs", type=int, default=None,
                        help="epochs over the whole federation (rounds x local epochs): the learning-rate schedule's length")  # fmt: skip
    parser.add_argument("--send_weight_diff", action="store_true", help="send weight differences (for NVFlare's PercentilePrivacy)")
    parser.add_argument("--seed", type=int, default=0, help="train.json's seed (data order, augmentation)")
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    overrides = {**site_overrides(args.data_root, site, args.work_root), "seed": args.seed}
    if args.total_epochs:
        overrides["epochs"] = args.total_epochs  # train.json's cosine schedule spans every round, as it would in one training
    algo = MonaiAlgo(
        bundle_root=args.bundle_root, local_epochs=args.local_epochs, send_weight_diff=args.send_weight_diff,
        train_kwargs=dict(overrides), eval_kwargs={**overrides, "evaluate_split": "validation"}, disable_ckpt_loading=True,
    )  # fmt: skip
    algo.initialize(extra={"CLIENT_NAME": site})
    while flare.is_running():
        received = flare.receive()
        global_weights = ExchangeObject(weights=received.params)
        report = algo.evaluate(data=global_weights)  # the global model on this site's validation split
        metrics = {k: float(v) for k, v in report.metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        algo.train(data=global_weights)
        updated = algo.get_weights()
        steps = (updated.statistics or {}).get(FlStatistics.NUM_EXECUTED_ITERATIONS, 0)
        params_type = flare.ParamsType.DIFF if args.send_weight_diff else flare.ParamsType.FULL
        flare.send(flare.FLModel(params=updated.weights, params_type=params_type, metrics=metrics,
                                 meta={"NUM_STEPS_CURRENT_ROUND": steps}))  # fmt: skip
    algo.finalize()


if __name__ == "__main__":
    main()
