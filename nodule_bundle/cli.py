"""``nodule-bundle``: the command line around the bundle.

    nodule-bundle synth    --out DIR [--scans N] [--seed S] [--formats nifti,mhd,dicom]
    nodule-bundle classify --image SCAN --nodules CSV --out DIR [--model model.pt]
    nodule-bundle demo     --out DIR [--quick]

Bad input ends with one line ``nodule-bundle: error: <file>: <problem>`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nodule_bundle.errors import NoduleBundleError, find_user_error


def _synth(args: argparse.Namespace) -> None:
    from nodule_bundle.data.phantom import PhantomConfig
    from nodule_bundle.data.synth import write_phantom_dataset

    cfg = PhantomConfig(fov_mm=tuple(args.fov_mm), nodules_per_scan=(args.min_nodules, args.max_nodules))
    path = write_phantom_dataset(args.out, args.scans, args.seed, args.formats.split(","), cfg, args.workers)
    print(f"wrote {args.scans} phantom scans; datalist: {path}")


def _classify(args: argparse.Namespace) -> None:
    from nodule_bundle.report import format_table
    from nodule_bundle.workflow import find_bundle_root, run_bundle

    root = find_bundle_root(args.bundle_root)
    model = Path(args.model) if args.model else root / "models" / "model.pt"
    if not model.is_file():
        raise NoduleBundleError(f"{model}: model weights not found (train first, or pass --model)")
    if not args.verbose:  # the engines log every failure with a traceback; the user gets one line
        logging.disable(logging.CRITICAL)
    try:
        run_bundle(
            ["inference"], root, image=args.image, nodules=args.nodules, seriesuid=args.seriesuid,
            ckpt_path=str(model), output_dir=str(args.out),
        )  # fmt: skip
    finally:
        logging.disable(logging.NOTSET)
    report = json.loads((Path(args.out) / "report.json").read_text())
    for scan in report["scans"]:
        print(f"scan {scan['seriesuid']}  ({len(scan['nodules'])} nodules)")
        print(format_table(scan["nodules"]))
    print(f"report: {Path(args.out) / 'report.json'}, {Path(args.out) / 'report.csv'}")


def _demo(args: argparse.Namespace) -> None:
    from nodule_bundle.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, seed=args.seed, bundle_root=args.bundle_root)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodule-bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show MONAI's log on the console")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic chest-CT phantom dataset")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--scans", type=_positive_int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", default="nifti", help="comma-separated: nifti, mhd, dicom")
    p.add_argument("--fov-mm", type=float, nargs=3, default=(200.0, 170.0, 140.0), metavar=("X", "Y", "Z"))
    p.add_argument("--min-nodules", type=int, default=5)
    p.add_argument("--max-nodules", type=int, default=20)
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    p.set_defaults(func=_synth)

    p = sub.add_parser("classify", help="classify the nodules of a CSV in one scan and write a report")
    p.add_argument("--image", required=True, help="NIfTI file, MHD file or DICOM series directory")
    p.add_argument("--nodules", required=True, help="CSV with coordX,coordY,coordZ in world mm (LPS)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seriesuid", default=None, help="rows of this series when the CSV lists several")
    p.add_argument("--model", default=None, help="weights (default: <bundle root>/models/model.pt)")
    p.add_argument("--bundle-root", default=None)
    p.set_defaults(func=_classify)

    p = sub.add_parser("demo", help="phantom -> train -> evaluate -> classify a held-out scan")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quick", action="store_true", help="tiny run for tests (minutes -> seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundle-root", default=None)
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        args.func(args)
    except Exception as exc:  # one line for the user's mistakes, a traceback for ours
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        print(f"nodule-bundle: error: {user_error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
