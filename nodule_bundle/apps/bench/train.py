"""``bench train``: training throughput and data-wait share, cached against plain datasets."""

from __future__ import annotations

import tempfile
import time


def bench_train(scans: int = 4, epochs: int = 2, seed: int = 0) -> dict:
    """Training throughput (samples/s) and the share of step time spent waiting for data, with the
    bundle's ``CacheDataset`` (deterministic transforms cached, random ones after) against a plain
    ``Dataset`` running every transform per sample, same loader class, network and optimizer from
    ``configs/train.json``, on ``scans`` phantom scans like the demo's (200 x 170 x 140 mm, 8-12
    nodules); ``epochs`` timed epochs after the cache is built."""
    from monai.bundle import ConfigParser
    from monai.data import Dataset

    from nodule_bundle.apps.workflow import find_bundle_root
    from nodule_bundle.data.phantom import PhantomConfig
    from nodule_bundle.data.synth import write_phantom_dataset

    with tempfile.TemporaryDirectory(prefix="nodule-bench-") as tmp:
        cfg = PhantomConfig(nodules_per_scan=(8, 12))
        datalist = write_phantom_dataset(tmp, scans, seed, cfg=cfg, workers=1, negatives_per_scan=5)
        parser = ConfigParser()
        parser.read_config(str(find_bundle_root() / "configs" / "train.json"))
        parser.update({"dataset_dir": tmp, "datalist": str(datalist), "num_workers": 0, "show_progress": False})
        network, loss, optimizer = (parser.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
        items, transform = parser.get_parsed_content("train#datalist"), parser.get_parsed_content("train#preprocessing")
        cached = parser.get_parsed_content("train#dataloader")  # train.json's loader over its CacheDataset
        loaders = {"cached": cached, "uncached": type(cached)(Dataset(items, transform), batch_size=parser["batch_size"], shuffle=True, num_workers=0)}
        result: dict = {"benchmark": "train", "samples": len(items), "epochs": epochs, "loader": type(cached).__name__, "pipelines": {}}
        for name, loader in loaders.items():
            wait = step = 0.0
            network.train()
            for _ in range(epochs):
                t = time.perf_counter()
                for batch in loader:
                    got = time.perf_counter()
                    optimizer.zero_grad()
                    loss(network(batch["image"].to(parser.get_parsed_content("device"))), batch["label"]).backward()
                    optimizer.step()
                    done = time.perf_counter()
                    wait, step, t = wait + got - t, step + done - got, done
            total = wait + step
            result["pipelines"][name] = {"samples_per_s": epochs * len(items) / total, "data_wait_share": wait / total, "seconds": total}
    result["cached_speedup"] = result["pipelines"]["cached"]["samples_per_s"] / result["pipelines"]["uncached"]["samples_per_s"]
    return result


def format_train_result(result: dict) -> str:
    lines = [f"training throughput, {result['samples']} samples, {result['epochs']} epochs after caching, {result['loader']}"]
    for name, p in result["pipelines"].items():
        lines.append(f"  {name:<9} {p['samples_per_s']:8.1f} samples/s  data wait {100 * p['data_wait_share']:5.1f} % of step time")
    lines.append(f"  cached / uncached: {result['cached_speedup']:.1f}x")
    return "\n".join(lines)
