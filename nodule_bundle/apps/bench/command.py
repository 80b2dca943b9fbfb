"""``nodule-bundle bench NAME``: the subcommand of each benchmark, and running the one asked for."""

from __future__ import annotations

import argparse
from pathlib import Path

from nodule_bundle.apps.arguments import config_override, positive_int


def run_benchmark(args: argparse.Namespace) -> None:
    """Run the benchmark ``args`` names, print its table and write its JSON to ``--out``."""
    from nodule_bundle.apps.bench import backbones, label, measure, memory, read, scan, train, whole_scan
    from nodule_bundle.core.io_utils import write_json_atomic

    if args.benchmark == "read":
        result = read.bench_dicom_read(tuple(args.shape), args.repeats)
        print(read.format_read_result(result))
    elif args.benchmark == "scan":
        result = scan.bench_scan_to_report(tuple(args.shape), args.repeats, nodules=args.nodules)
        print(scan.format_scan_to_report_result(result))
    elif args.benchmark == "measure":
        result = measure.bench_measure(args.scans)
        print(measure.format_measure_result(result))
    elif args.benchmark == "train":
        result = train.bench_train(args.scans)
        print(train.format_train_result(result))
    elif args.benchmark == "memory":
        result = memory.bench_memory(tuple(args.shape), nodules=args.nodules)
        print(memory.format_memory_result(result))
    elif args.benchmark == "backbones":
        result = backbones.bench_backbones(args.repeats)
        print(backbones.format_backbones_result(result))
    elif args.benchmark == "backbone-accuracy":
        result = backbones.bench_backbone_accuracy(args.work, args.scans, args.epochs, args.backbones, test_scans=args.test_scans, evaluate_only=args.evaluate_only)
        print(backbones.format_backbone_accuracy_result(result))
    elif args.benchmark == "realism":
        from nodule_bundle.apps.bench.realism import bench_realism, format_realism_result

        result = bench_realism(args.data, args.work, args.epochs, args.split, args.seed, configs=tuple(args.configs), phantom=args.phantom,
                               overrides=dict(args.set))  # fmt: skip
        print(format_realism_result(result))
    elif args.benchmark == "followup":
        from nodule_bundle.apps.bench.followup import bench_followup, format_followup_result

        result = bench_followup(args.patients, args.seed, args.timepoints, geometry=args.geometry, **({"first_index": args.first_index} if args.first_index is not None else {}))
        print(format_followup_result(result))
    elif args.benchmark == "label":
        result = label.bench_label(args.label_venv, tuple(args.shape), args.repeats, load=tuple(args.load) if args.load else None)
        print(label.format_label_result(result))
    else:
        result = whole_scan.bench_whole_scan(tuple(args.shape), args.repeats, nodules=args.nodules)
        print(whole_scan.format_whole_scan_result(result))
    if args.out is not None:
        write_json_atomic(args.out, result)


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """``bench`` and one subcommand a benchmark, under the command line's ``sub``."""
    p = sub.add_parser("bench", help="measure against a baseline in the same run (medians)")
    kinds = p.add_subparsers(dest="benchmark", required=True)
    benchmarks = {  # name: (help, repeats, has --shape, has --nodules)
        "read": ("DICOM series: the bundle's loader vs ITK's plain series reader", 5, True, False),
        "whole-scan": ("detection + measurement + classification of one scan, stage by stage", 3, True, True),
        "scan": ("scan to report for given nodules, stage by stage, against the decompression floor, nibabel's read and whole-volume resampling", 3, True, True),
        "label": ("a real MONAI Label server: point-prompt answer time on one study", 5, True, False),
        "backbones": ("classifier throughput and size of each backbone beside MONAI's stock resnet18", 3, False, False),
        "memory": ("peak resident memory of inference on one scan (a fresh process)", 1, True, True),
    }
    for name, (text, repeats, with_shape, with_nodules) in benchmarks.items():
        k = kinds.add_parser(name, help=text)
        if with_shape:
            k.add_argument("--shape", type=positive_int, nargs=3, default=(512, 512, 300), metavar=("X", "Y", "SLICES"))
        k.add_argument("--repeats", type=positive_int, default=repeats)
        if with_nodules:
            k.add_argument("--nodules", type=positive_int, default=20)
        k.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
        k.set_defaults(func=run_benchmark)
    measure = kinds.add_parser("measure", help="measured nodule diameters against the phantom's reference diameters")
    measure.add_argument("--scans", type=positive_int, default=8)
    measure.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    measure.set_defaults(func=run_benchmark)
    train = kinds.add_parser("train", help="training samples/s and data wait, CacheDataset against a plain Dataset")
    train.add_argument("--scans", type=positive_int, default=4)
    train.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    train.set_defaults(func=run_benchmark)
    accuracy = kinds.add_parser("backbone-accuracy", help="test AUC of every backbone trained the same way on one phantom")
    accuracy.add_argument("--work", required=True, type=Path, help="folder for the phantom, the models and their evaluations")
    accuracy.add_argument("--scans", type=positive_int, default=24)
    accuracy.add_argument("--epochs", type=positive_int, default=15)
    accuracy.add_argument("--test-scans", type=positive_int, default=None, help="more scans for the test split alone (default: 15 %% of --scans)")
    accuracy.add_argument("--backbones", nargs="+", default=None, help="default and/or backbone_* config names (default: all)")
    accuracy.add_argument("--evaluate-only", action="store_true", help="evaluate the models an earlier run trained in --work; train none")
    accuracy.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    accuracy.set_defaults(func=run_benchmark)
    realism = kinds.add_parser("realism", help="measurement (and with --work, malignancy) on real nodule geometry (synth --geometry lidc)")
    realism.add_argument("--data", required=True, type=Path, help="a dataset written by synth --geometry lidc")
    realism.add_argument("--split", choices=("training", "validation", "test", "all"), default="test",
                         help="the nodules to measure (all: every split's, for patients no recipe was chosen on)")
    realism.add_argument("--work", type=Path, default=None, help="train there from scratch (train.json) and compare malignancy AUCs")
    realism.add_argument("--epochs", type=positive_int, default=30)
    realism.add_argument("--seed", type=int, default=0)
    realism.add_argument("--configs", nargs="+", default=[], help="configs merged over train.json (e.g. backbone_resnet)")
    realism.add_argument("--phantom", type=Path, default=None, help="a phantom dataset whose training split joins the real-geometry one")
    realism.add_argument("--set", type=config_override, action="append", default=[], metavar="ID=JSON",
                         help="a config override, e.g. loss#rating_weight=1.0 (repeatable)")
    realism.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    realism.set_defaults(func=run_benchmark)
    followup = kinds.add_parser("followup", help="phantom follow-ups: registration, matching, growth, VDT and Lung-RADS with the prior against the truth")
    followup.add_argument("--patients", type=positive_int, default=8)
    followup.add_argument("--timepoints", type=positive_int, default=3, help="scans per patient (2 or more)")
    followup.add_argument("--seed", type=int, default=0)
    followup.add_argument("--geometry", choices=("phantom", "lidc"), default="phantom",
                          help="phantom follow-ups, or LIDC-IDRI's consensus outlines grown in synthetic chest CT (needs the [lidc] extra)")
    followup.add_argument("--first-index", type=int, default=None, help="the first patient (phantom default 70, outside the demo's; lidc: the first LIDC scan, default 70)")
    followup.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    followup.set_defaults(func=run_benchmark)
    kinds.choices["label"].add_argument("--label-venv", type=Path, default=Path(".venv-label"), help="MONAI Label's environment (.ci/label-venv)")
    kinds.choices["label"].add_argument("--load", type=positive_int, nargs=2, metavar=("SEQUENTIAL", "CONCURRENT"), default=None,
                                        help="also a load: SEQUENTIAL clicks one after another, then CONCURRENT at once (p50, p95, errors)")
